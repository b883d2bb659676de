#!/usr/bin/env bash
# One default `trackshift send` through the lab emulator with any link (netlab `up` options), keeping every
# JSON event of the sender stamped with the seconds since the send started (the `dcsp` events carry the
# controller's pacing rate and phase every 250 ms): the rate's time series around a start or an outage.
# Beside them, rx.tsv samples the bytes side b's interfaces have received every 50 ms (what the link delivers,
# IP headers included), on the same clock (CLOCK_MONOTONIC; send.jsonl's first line holds the send's start).
# Prints one line: MB/s of file bytes over the send command's wall time, the summary's own goodput, ok, intact.
# TS_BIN replaces the trackshift binary (to compare builds).
#   bench/link-series.sh OUT_DIR SIZE_MiB NETLAB_UP_OPTIONS...
#   e.g. bench/link-series.sh /tmp/r1 512 --rate 1Gbit          (clean, capped at 1 Gbit/s)
#        bench/link-series.sh /tmp/r2 256 --profile flaky
# Needs root, /dev/net/tun and the release binaries. OUT_DIR gets send.jsonl (stamped events), recv.log,
# netlab.log and result.txt.
set -euo pipefail
. "$(dirname "$0")/netlab-ready.sh"
cd "$(dirname "$0")/.."
out=$1; size_mib=$2; shift 2
bin=${TS_BIN:-$PWD/target/release/trackshift}
netlab=$PWD/target/release/trackshift-netlab
for b in "$bin" "$netlab"; do
  [ -x "$b" ] || { echo "error: build it first: cargo build --release -p trackshift-cli -p trackshift-netlab" >&2; exit 1; }
done
mkdir -p "$out"
d=$(mktemp -d /var/tmp/trackshift-series-XXXXXX)
name=ser$$
# When the emulator started, on the same clock (its outages count from about then: `--outage 3s/20s` is down
# 20-23 s, 40-43 s, ... after it).
python3 -c 'import time; print(f"{time.monotonic():.3f}")' > "$out/lab_t0"
"$netlab" up --name "$name" --max-duration 600s "$@" > "$out/netlab.log" 2>&1 &
lab=$!
rx=
sampler=
trap '[ -n "$sampler" ] && kill "$sampler" 2>/dev/null; [ -n "$rx" ] && kill "$rx" 2>/dev/null; kill "$lab" 2>/dev/null; wait 2>/dev/null; rm -rf "$d"' EXIT
netlab_ready "$out/netlab.log"
mkdir -p "$d/out" "$d/rs" "$d/ss"
head -c "${size_mib}M" /dev/urandom > "$d/f.bin"
ip netns exec "$ns_b" "$bin" receive --listen "$addr_b:17100" --output-dir "$d/out" --state-dir "$d/rs" \
  --secret series --json > "$out/recv.log" 2>&1 &
rx=$!
ip netns exec "$ns_b" python3 -u -c '
import time
while True:
    rx = 0
    for line in open("/proc/net/dev").readlines()[2:]:
        name, data = line.split(":", 1)
        if name.strip() != "lo":
            rx += int(data.split()[0])
    print(f"{time.monotonic():.3f}\t{rx}")
    time.sleep(0.05)
' > "$out/rx.tsv" &
sampler=$!
sleep 1
rc=0
# The stamper starts first and stamps each line as it arrives; the send's wall time is the last stamp.
timeout 600 ip netns exec "$ns_a" "$bin" send "$d/f.bin" --to "$addr_b:17100" --secret series \
  --state-dir "$d/ss" --json 2>&1 | python3 -u -c '
import json, sys, time
t0 = time.monotonic()
print(json.dumps({"t": 0.0, "event": "stamps", "t0_monotonic": round(t0, 3)}))
for line in sys.stdin:
    t = time.monotonic() - t0
    try:
        ev = json.loads(line)
    except ValueError:
        ev = {"text": line.rstrip()}
    print(json.dumps({"t": round(t, 3), **ev}))
print(json.dumps({"t": round(time.monotonic() - t0, 3), "event": "exited"}))
' > "$out/send.jsonl" || rc=$?
same=no
cmp -s "$d/f.bin" "$d/out/f.bin" && same=yes
python3 - "$out" "$size_mib" "$rc" "$same" "$*" <<'PY' | tee "$out/result.txt"
import json, sys
out, size, rc, same, link = sys.argv[1:]
evs = [json.loads(l) for l in open(f"{out}/send.jsonl")]
wall = evs[-1]["t"]
summ = [e for e in evs if e.get("event") == "summary" or "goodput_mbps" in e]
good = summ[-1].get("goodput_mbps", 0) if summ else 0
mbs = int(size) * 2**20 / wall / 1e6
print(f"{link} | {size} MiB | {wall:.2f} s | {mbs:.1f} MB/s | summary {good} Mbit/s | rc {rc} | intact {same}")
PY
