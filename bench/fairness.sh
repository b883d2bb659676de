#!/usr/bin/env bash
# N TrackShift (DCSP) transfers share one emulated link into one receiver, started together; prints each one's
# goodput and its share of their sum, their sum against the link's rate, and the receiver's peak memory. Not a
# test: a measurement (needs root, /dev/net/tun, release binaries).
#   bench/fairness.sh [PROFILE] [SIZE_MIB] [SENDERS]        e.g. bench/fairness.sh wan 128 8
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-wan}
size_mib=${2:-128}
senders=${3:-2}
ts=target/release/trackshift
lab=target/release/trackshift-netlab
name=fair$$
work=$(mktemp -d /tmp/trackshift-fair.XXXXXX)
pids=()
cleanup() { kill "$lab_pid" "$rx_pid" "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$lab" up --name "$name" --profile "$profile" --max-duration 600s > "$work/lab.log" 2>&1 &
lab_pid=$!
for _ in $(seq 100); do ip netns list | grep -q "^$name-b" && grep -q ready "$work/lab.log" && break; sleep 0.1; done
for i in $(seq "$senders"); do head -c "${size_mib}M" /dev/urandom > "$work/f$i.bin"; done
mkdir -p "$work/out"
ip netns exec "$name-b" "$ts" receive --listen 198.18.1.1:7700 --output-dir "$work/out" --secret fair \
  --state-dir "$work/rs" --json --quiet > "$work/rx.log" 2>&1 &
rx_pid=$!
sleep 1
for i in $(seq "$senders"); do
  ip netns exec "$name-a" "$ts" send "$work/f$i.bin" --to 198.18.1.1:7700 --secret fair --state-dir "$work/ss-$i" \
    --json --quiet > "$work/f$i.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}" || true
rx_hwm_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$rx_pid/status" 2>/dev/null || echo 0)
rate_mbit=$(grep -o 'rate [0-9.]* [MG]bit/s' "$work/lab.log" | head -1 | awk '{print ($3 == "Gbit/s") ? $2 * 1000 : $2}')
python3 - "$work" "$senders" "$rx_hwm_kib" "${rate_mbit:-0}" "$size_mib" <<'PY'
import json, sys
work, n, hwm_kib, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
size_mib = float(sys.argv[5])
g = {}
for i in range(1, n + 1):
    lines = [json.loads(l) for l in open(f"{work}/f{i}.log") if '"summary"' in l]
    s = lines[-1] if lines else {"goodput_mbps": 0.0, "seconds": 0.0, "ok": False}
    g[i] = (s["goodput_mbps"], s["seconds"], s["ok"])
tot = sum(v[0] for v in g.values())
print("| transfer | ok | goodput Mbit/s | seconds | share | share / (1/N) |")
print("|---|---|---:|---:|---:|---:|")
for i, (mbps, secs, ok) in g.items():
    share = mbps / tot if tot else 0.0
    print(f"| {i} | {ok} | {mbps:.1f} | {secs:.1f} | {100 * share:.1f}% | {share * n:.2f} |")
print()
# All start together: every file's bytes over the time until the last one finished is what the link carried.
wall = max(v[1] for v in g.values())
agg = n * size_mib * 8 * 1.048576 / wall if wall else 0.0
print(f"together {agg:.1f} Mbit/s of file bytes over {wall:.1f} s" + (f" = {agg / rate:.2f} of the link's {rate:.0f} Mbit/s" if rate else ""))
print(f"receiver peak RSS {hwm_kib / 1024:.1f} MiB")
PY
