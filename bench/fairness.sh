#!/usr/bin/env bash
# Two TrackShift (DCSP) transfers share one emulated link, started together; prints each one's goodput and its
# share of their sum. Not a test: a measurement (needs root, /dev/net/tun, release binaries).
#   bench/fairness.sh [PROFILE] [SIZE_MIB]        e.g. bench/fairness.sh wan 128
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-wan}
size_mib=${2:-128}
ts=target/release/trackshift
lab=target/release/trackshift-netlab
name=fair$$
work=$(mktemp -d /tmp/trackshift-fair.XXXXXX)
cleanup() { kill "$lab_pid" "$rx_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$lab" up --name "$name" --profile "$profile" --max-duration 300s > "$work/lab.log" 2>&1 &
lab_pid=$!
for _ in $(seq 100); do ip netns list | grep -q "^$name-b" && grep -q ready "$work/lab.log" && break; sleep 0.1; done
head -c "${size_mib}M" /dev/urandom > "$work/a.bin"
head -c "${size_mib}M" /dev/urandom > "$work/b.bin"
mkdir -p "$work/out"
ip netns exec "$name-b" "$ts" receive --listen 198.18.1.1:7700 --output-dir "$work/out" --secret fair \
  --state-dir "$work/rs" --json --quiet > "$work/rx.log" 2>&1 &
rx_pid=$!
sleep 1
for f in a b; do
  ip netns exec "$name-a" "$ts" send "$work/$f.bin" --to 198.18.1.1:7700 --secret fair --state-dir "$work/ss-$f" \
    --json --quiet > "$work/$f.log" 2>&1 &
done
wait %3 %4 2>/dev/null || wait
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
g = {}
for f in "ab":
    s = [json.loads(l) for l in open(f"{work}/{f}.log") if '"summary"' in l][-1]
    g[f] = (s["goodput_mbps"], s["seconds"], s["ok"])
tot = sum(v[0] for v in g.values())
for f, (mbps, secs, ok) in g.items():
    print(f"transfer {f}: ok={ok} {mbps:.1f} Mbit/s over {secs:.1f} s, share {100 * mbps / tot:.1f}%")
PY
