#!/usr/bin/env bash
# CPU seconds per GB of each end, and MB/s (wall time of send plus sync), of two trackshift builds over loopback,
# alternating: run.sh BIN_A BIN_B [SIZE_MIB] [RUNS] [PROTOCOL]
set -euo pipefail
a=$1; b=$2; size_mib=${3:-2048}; runs=${4:-3}; proto=${5:-udp}
work=$(mktemp -d /var/tmp/cpu-ab.XXXXXX)
trap 'rm -rf "$work"' EXIT
head -c "${size_mib}M" /dev/urandom > "$work/src.bin"
sync
gb=$(python3 -c "print($size_mib * 1048576 / 1e9)")
echo "| build | run | MB/s | sender CPU s/GB | receiver CPU s/GB | both |"
echo "|---|---:|---:|---:|---:|---:|"
for r in $(seq "$runs"); do
  for which in A B; do
    bin=$a; [ "$which" = B ] && bin=$b
    rm -rf "$work/out" "$work/rs" "$work/ss"; mkdir -p "$work/out"
    port=$((20000 + RANDOM % 20000))
    /usr/bin/time -f "%U %S" -o "$work/rx.time" "$bin" receive --listen 127.0.0.1:$port --output-dir "$work/out" \
      --secret ab --state-dir "$work/rs" --once --quiet > /dev/null 2>&1 &
    rx=$!
    sleep 0.5
    t0=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o "$work/tx.time" "$bin" send "$work/src.bin" --to 127.0.0.1:$port --secret ab \
      --state-dir "$work/ss" --protocol "$proto" --quiet > /dev/null 2>&1
    wait $rx
    sync
    t1=$(date +%s.%N)
    python3 - "$which" "$r" "$t0" "$t1" "$gb" "$work/tx.time" "$work/rx.time" <<'PY'
import sys
which, r, t0, t1, gb = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
cpu = lambda p: sum(map(float, open(p).read().split()[-2:]))
tx, rx = cpu(sys.argv[6]) / gb, cpu(sys.argv[7]) / gb
print(f"| {which} | {r} | {gb * 1000 / (t1 - t0):.0f} | {tx:.2f} | {rx:.2f} | {tx + rx:.2f} |")
PY
    cmp -s "$work/src.bin" "$work/out/src.bin" || echo "MISMATCH in run $r of $which"
  done
done
