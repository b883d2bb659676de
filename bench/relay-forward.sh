#!/usr/bin/env bash
# How many datagrams a relay forwards on loopback on one core, and its CPU seconds per GB.
#
#   bench/relay-forward.sh [SECONDS] [OUT_DIR]
#
# Builds crates/relay's forward_bench example (release), which starts the relay (the library's Relay::start,
# the same driver `trackshift relay` runs) pinned to core 0 with `taskset -c 0`, binds a sender and a receiver
# socket with an admission token, pushes DCSP-shaped datagrams through it as fast as GSO sends go from core 1,
# and counts what arrives, at a ramp of offered rates (0 = unpaced: as fast as the sends go). The highest
# offered rate forwarded with under 1% loss is the ceiling; past it the relay's socket buffer overflows. Sizes: 1240 bytes (DCSP on a 1500-byte path: 1200 + 40) and 16424 (DCSP's largest
# loopback shard, 16 KiB + 40). Writes results.jsonl and README.md (a table) into OUT_DIR.
#
# Beside it, a known relay on the same loopback and core: magic-wormhole's transit relay (Debian's
# magic-wormhole-transit-relay, `twistd3 transitrelay`, installed here if missing) pinned to core 0, with
# bench/transit_client.py's two sides on core 1 piping TRANSIT_GIB (default 2) GiB of zeros from memory through
# it over TCP (it pipes a byte stream, so there are no datagrams to count: Gbit/s and its CPU s per GB, from
# /proc/<pid>/stat). The timing runs hold `flock /tmp/bench.lock`; uptime is recorded beside each.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
out=${2:-bench/results/$(date -u +%Y-%m-%d-%H%M)-relay-forward}
mkdir -p "$out"
nice cargo build --release -p trackshift-relay --example forward_bench
bin=target/release/examples/forward_bench
: > "$out/results.jsonl"
exec 9>/tmp/bench.lock
flock 9
uptime_before=$(uptime)
for rate in 100000 200000 300000 400000 500000 0; do
    taskset -c 1 "$bin" load "$seconds" 1240 "$rate" | tee -a "$out/results.jsonl"
done
for rate in 10000 20000 30000 40000 0; do
    taskset -c 1 "$bin" load "$seconds" 16424 "$rate" | tee -a "$out/results.jsonl"
done
uptime_relay=$(uptime)
command -v twistd3 >/dev/null || { apt-get update -qq; apt-get install -y -qq magic-wormhole-transit-relay; }
gib=${TRANSIT_GIB:-2}
tport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 0 twistd3 -n --pidfile= transitrelay --port="tcp:$tport:interface=127.0.0.1" > "$out/transit.log" 2>&1 &
tpid=$!
trap 'kill $tpid 2>/dev/null || true' EXIT
for _ in $(seq 50); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $tport))" 2>/dev/null && break; sleep 0.2; done
: > "$out/transit.jsonl"
for run in 1 2 3; do
    tok=$(python3 -c 'import os; print(os.urandom(32).hex())')
    cpu0=$(awk '{print $14 + $15}' "/proc/$tpid/stat")
    taskset -c 1 python3 bench/transit_client.py recv 127.0.0.1 "$tport" "$tok" 00000000000000b0 - $((gib << 30)) > "$out/transit-recv.json" &
    rpid=$!
    sleep 0.3
    taskset -c 1 python3 bench/transit_client.py send 127.0.0.1 "$tport" "$tok" 00000000000000a0 "zero:$((gib << 30))" > /dev/null
    wait "$rpid"
    cpu1=$(awk '{print $14 + $15}' "/proc/$tpid/stat")
    python3 - "$out/transit-recv.json" "$cpu0" "$cpu1" "$(getconf CLK_TCK)" "$run" "$(uptime)" >> "$out/transit.jsonl" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu = (float(sys.argv[3]) - float(sys.argv[2])) / float(sys.argv[4])
gb = r["bytes"] / 1e9
print(json.dumps({"run": int(sys.argv[5]), "bytes": r["bytes"], "seconds": r["after_ok_s"],
                  "gbit_per_sec": round(r["bytes"] * 8 / r["after_ok_s"] / 1e9, 2), "relay_cpu_s": round(cpu, 2),
                  "relay_cpu_share": round(cpu / r["after_ok_s"], 2), "relay_cpu_seconds_per_gb": round(cpu / gb, 2),
                  "load": sys.argv[6].split("load average:")[-1].strip()}))
PY
    tail -1 "$out/transit.jsonl"
done
kill "$tpid" 2>/dev/null || true
flock -u 9
{
    echo "# Relay forwarding on loopback, one core"
    echo
    echo "\`bench/relay-forward.sh $seconds\` on $(uname -srm), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)."
    echo "Relay (UDP thread + 1 tokio worker) pinned to core 0; the load generator (one GSO sender thread and one"
    echo "recvmmsg/GRO receiver thread) pinned to core 1. The machine is shared with other jobs: other helpers'"
    echo "\`nice\` cargo builds were running. Load before: ${uptime_before##*load average: }; after the ramp:"
    echo "${uptime_relay##*load average: }."
    echo
    echo "| datagram bytes | offered/s | sent | forwarded | loss | datagrams/s | Gbit/s | relay CPU share | relay CPU s per GB |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    python3 - "$out/results.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    offered = f"{r['offered_per_sec']:.0f}" if r['offered_per_sec'] else "unpaced"
    print(f"| {r['size']} | {offered} | {r['sent']} | {r['forwarded']} | {r['loss']:.3f} | {r['datagrams_per_sec']:.0f} | {r['gbit_per_sec']:.2f} "
          f"| {r['relay_cpu_share']:.2f} | {r['relay_cpu_seconds_per_gb']:.2f} |")
PY
    echo
    echo "Beside it, magic-wormhole's transit relay (\`twistd3 transitrelay\`, TCP) on the same loopback, pinned to core 0,"
    echo "its two clients (bench/transit_client.py) on core 1, $gib GiB of zeros from memory per run:"
    echo
    bench/jsonl-table.py "$out/transit.jsonl" run=run bytes=bytes seconds=seconds Gbit/s=gbit_per_sec \
        'relay CPU share=relay_cpu_share' 'relay CPU s per GB=relay_cpu_seconds_per_gb' load:=load
} > "$out/README.md"
cat "$out/README.md"
