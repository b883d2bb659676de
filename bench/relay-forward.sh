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
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
out=${2:-bench/results/$(date -u +%Y-%m-%d-%H%M)-relay-forward}
mkdir -p "$out"
nice cargo build --release -p trackshift-relay --example forward_bench
bin=target/release/examples/forward_bench
: > "$out/results.jsonl"
for rate in 100000 200000 300000 400000 500000 0; do
    taskset -c 1 "$bin" load "$seconds" 1240 "$rate" | tee -a "$out/results.jsonl"
done
for rate in 10000 20000 30000 40000 0; do
    taskset -c 1 "$bin" load "$seconds" 16424 "$rate" | tee -a "$out/results.jsonl"
done
{
    echo "# Relay forwarding on loopback, one core"
    echo
    echo "\`bench/relay-forward.sh $seconds\` on $(uname -srm), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)."
    echo "Relay (UDP thread + 1 tokio worker) pinned to core 0; the load generator (one GSO sender thread and one"
    echo "recvmmsg/GRO receiver thread) pinned to core 1. The machine is shared with other jobs."
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
} > "$out/README.md"
cat "$out/README.md"
