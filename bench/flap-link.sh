#!/usr/bin/env bash
# A link that keeps dropping (issue 18 point 3): one `trackshift send` through the lab emulator while the link
# goes down for DOWN every EVERY (both directions, everything in flight lost), until the file is delivered.
# Prints the seconds it took and the bytes both namespaces put on the link (IP headers, ACKs, NACKs and parity
# included) per byte of the file. Usage: bench/flap-link.sh [tcp|udp] [SIZE_MiB] [RATE] [DOWN/EVERY]
# (RATE is the emulated link's rate; defaults: tcp 256 100Mbit 1s/3s, with 10 ms of one-way delay).
set -euo pipefail
. "$(dirname "$0")/netlab-ready.sh"
cd "$(dirname "$0")/.."
proto=${1:-tcp}; size_mib=${2:-256}; rate=${3:-100Mbit}; outage=${4:-1s/3s}
bin=$PWD/target/release/trackshift
netlab=$PWD/target/release/trackshift-netlab
for b in "$bin" "$netlab"; do
  [ -x "$b" ] || { echo "error: build it first: cargo build --release -p trackshift-cli -p trackshift-netlab" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "error: the emulator needs root (network namespaces and /dev/net/tun)" >&2; exit 1; }
d=$(mktemp -d /var/tmp/trackshift-flap-link-XXXXXX)
name=flap$$
"$netlab" up --name "$name" --rate "$rate" --delay 10ms --outage "$outage" --max-duration 600s \
  > "$d/netlab.log" 2>&1 &
lab=$!
rx=
trap '[ -n "$rx" ] && kill "$rx" 2>/dev/null; kill "$lab" 2>/dev/null; wait 2>/dev/null; rm -rf "$d"' EXIT
netlab_ready "$d/netlab.log"
# Bytes sent by every interface but lo in namespace $1.
tx() { ip netns exec "$1" awk 'NR > 2 { sub(":", " "); if ($1 != "lo") s += $10 } END { print s + 0 }' /proc/net/dev; }
mkdir -p "$d/out" "$d/rs" "$d/ss"
head -c "${size_mib}M" /dev/urandom > "$d/f.bin"
ip netns exec "$ns_b" "$bin" receive --listen "$addr_b:17000" --output-dir "$d/out" --state-dir "$d/rs" \
  --secret flap --json > "$d/recv.log" 2>&1 &
rx=$!
sleep 1
before=$(( $(tx "$ns_a") + $(tx "$ns_b") ))
t0=$SECONDS
rc=0
timeout 600 ip netns exec "$ns_a" "$bin" send "$d/f.bin" --to "$addr_b:17000" --secret flap --state-dir "$d/ss" \
  --protocol "$proto" --streams 1 --json > "$d/send.log" 2>&1 || rc=$?
secs=$((SECONDS - t0))
after=$(( $(tx "$ns_a") + $(tx "$ns_b") ))
same=no
cmp -s "$d/f.bin" "$d/out/f.bin" && same=yes
[ "$rc" = 0 ] || tail -n 5 "$d/send.log" >&2
python3 - "$proto" "$size_mib" "$rate" "$outage" "$rc" "$((after - before))" "$secs" "$same" <<'PY'
import sys
proto, size, rate, outage, rc, wire, secs, same = sys.argv[1:]
print(f"| {proto} | {size} MiB | {rate}, 10 ms, down {outage} | {rc} | {int(wire) / (int(size) * 2**20):.3f} | {secs} | {same} |")
PY
