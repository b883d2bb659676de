#!/usr/bin/env bash
# A connection that keeps dropping (issue 18): `trackshift send` SIGKILLed every 3 s and run again until the
# file is delivered, over loopback. Prints how many runs it took and how many bytes loopback carried (both
# directions, headers included) per byte of the file. Usage: bench/flap.sh [tcp|udp] [SIZE_MiB] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
proto=${1:-tcp}; size_mib=${2:-256}; rate=${3:-100Mbit}
bin=target/release/trackshift
[ -x "$bin" ] || { echo "error: build it first: cargo build --release -p trackshift-cli" >&2; exit 1; }
d=$(mktemp -d /tmp/trackshift-flap-XXXXXX)
trap 'kill "$rx" 2>/dev/null || true; rm -rf "$d"' EXIT
mkdir -p "$d/out" "$d/rs" "$d/ss"
head -c "${size_mib}M" /dev/urandom > "$d/f.bin"
port=$((20000 + RANDOM % 20000))
"$bin" receive --listen "127.0.0.1:$port" --output-dir "$d/out" --state-dir "$d/rs" --secret flap --json \
  > "$d/recv.log" 2>&1 &
rx=$!
sleep 1
lo0=$(cat /sys/class/net/lo/statistics/tx_bytes)
t0=$SECONDS
runs=0
while [ ! -f "$d/out/f.bin" ] && [ "$runs" -lt 100 ]; do
  runs=$((runs + 1))
  timeout -s KILL 3 "$bin" send "$d/f.bin" --to "127.0.0.1:$port" --secret flap --state-dir "$d/ss" \
    --protocol "$proto" --max-rate "$rate" --streams 1 --json > "$d/send-$runs.log" 2>&1 || true
done
lo1=$(cat /sys/class/net/lo/statistics/tx_bytes)
same=no
cmp -s "$d/f.bin" "$d/out/f.bin" && same=yes
python3 - "$proto" "$size_mib" "$rate" "$runs" "$((lo1 - lo0))" "$((SECONDS - t0))" "$same" <<'PY'
import sys
proto, size, rate, runs, lo, secs, same = sys.argv[1:]
print(f"| {proto} | {size} MiB | {rate} | {runs} | {int(lo) / (int(size) * 2**20):.3f} | {secs} | {same} |")
PY
