#!/usr/bin/env bash
# Large files (issue 18 point 5): a random file of each SIZE GiB over loopback, default protocol. The first
# sender is SIGKILLed once the receiver has verified KILL_AT percent of the file (default 90), then `send` runs
# again and must send only what was missing. Peak RSS (VmHWM) of every sender run and of the receiver, bytes the
# resumed run put on the wire beside what was missing, wall seconds, byte-identical. Needs about twice the
# largest file free in WORK (default /var/tmp). Usage: bench/bigfile.sh [SIZE_GiB...] (default: 1 32)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/target/release/trackshift
[ -x "$bin" ] || { echo "error: build it first: cargo build --release -p trackshift-cli" >&2; exit 1; }
sizes=("${@:-1 32}"); [ $# -eq 0 ] && sizes=(1 32)
kill_at=${KILL_AT:-90}
work=${WORK:-/var/tmp}
d=$(mktemp -d "$work/trackshift-bigfile-XXXXXX")
rx=
trap '[ -n "$rx" ] && kill "$rx" 2>/dev/null; rm -rf "$d"' EXIT
hwm() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
echo "| file | sender peak RSS (killed run / resumed run) MiB | receiver peak RSS MiB | held at the kill | resumed run: on the wire / missing | seconds (first run + resumed) | byte-identical |"
echo "|---|---:|---:|---:|---:|---:|---|"
for gib in "${sizes[@]}"; do
  rm -rf "$d"/*
  mkdir -p "$d/out" "$d/rs" "$d/ss"
  head -c "${gib}G" /dev/urandom >"$d/f.bin"
  size=$((gib << 30))
  port=$((20000 + RANDOM % 20000))
  "$bin" receive --listen "127.0.0.1:$port" --output-dir "$d/out" --state-dir "$d/rs" --secret big --json \
    >"$d/recv.log" 2>&1 &
  rx=$!
  sleep 1
  t0=$(date +%s.%N)
  "$bin" send "$d/f.bin" --to "127.0.0.1:$port" --secret big --state-dir "$d/ss" --json >"$d/send1.log" 2>&1 &
  tx=$!
  id=; peak1=0; done_bytes=0; killed=no
  while kill -0 "$tx" 2>/dev/null; do
    peak1=$(hwm "$tx" 2>/dev/null || echo "$peak1")
    [ -z "$id" ] && id=$(sed -n 's/.*"event":"start".*"session_id":"\([0-9a-f]*\)".*/\1/p' "$d/send1.log" | head -n 1)
    if [ -n "$id" ]; then
      done_bytes=$("$bin" status "$id" --state-dir "$d/rs" --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_done"])' 2>/dev/null || echo 0)
      [ "$((done_bytes * 100))" -ge "$((size * kill_at))" ] && { kill -9 "$tx" 2>/dev/null || true; killed=yes; break; }
    fi
    sleep 0.2
  done
  wait "$tx" 2>/dev/null || true
  sleep 1
  # What the receiver holds at the resume: verified chunks and the durable prefixes of the others.
  held=$("$bin" status "$id" --state-dir "$d/rs" --json |
    python3 -c 'import json,sys; s = json.load(sys.stdin); print(s["bytes_done"] + s.get("bytes_partial", 0))')
  t1=$(date +%s.%N)
  peak2=0
  : >"$d/send2.log"
  if [ "$killed" = yes ]; then
    "$bin" send "$d/f.bin" --to "127.0.0.1:$port" --secret big --state-dir "$d/ss" --json >"$d/send2.log" 2>&1 &
    tx=$!
    while kill -0 "$tx" 2>/dev/null; do peak2=$(hwm "$tx" 2>/dev/null || echo "$peak2"); sleep 0.2; done
    wait "$tx" || { tail -n 5 "$d/send2.log" >&2; exit 1; }
  fi
  t2=$(date +%s.%N)
  rpeak=$(hwm "$rx")
  kill "$rx"; wait "$rx" 2>/dev/null || true; rx=
  same=no; cmp -s "$d/f.bin" "$d/out/f.bin" && same=yes
  python3 - "$gib" "$peak1" "$peak2" "$rpeak" "$held" "$size" "$t0" "$t1" "$t2" "$d/send2.log" "$same" <<'PY'
import json, sys
gib, p1, p2, rp, held, size, t0, t1, t2, log, same = sys.argv[1:]
summaries = [json.loads(l) for l in open(log) if '"summary"' in l]
missing = int(size) - int(held)
if summaries and missing > 0:
    wire = summaries[-1]["bytes_on_wire"]
    resumed = f"{wire / 2**20:.0f} MiB / {missing / 2**20:.0f} MiB ({wire / missing:.3f}x)"
    kill = f"{int(held) / int(size):.1%} held"
else:
    p2, resumed, kill = "-", "-", "finished before the kill"
print(f"| {gib} GiB | {p1} / {p2} | {rp} | {kill} | {resumed} | "
      f"{float(t1) - float(t0):.0f} + {float(t2) - float(t1):.0f} | {same} |")
PY
done
