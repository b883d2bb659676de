#!/usr/bin/env bash
# The orchestrator's API under load with wrk: requests/s and p50/p99 latency for creating sessions
# (POST /api/v1/session) and for chunk updates (PUT /api/v1/session/{id}/chunk/{n}, status verified), on
# SQLite and on PostgreSQL (a fresh cluster from initdb in a temp dir, default durability: fsync on).
#
#   bench/api-load.sh [SECONDS] [OUT_DIR]
#
# Per backend: `trackshift orchestrator` on 127.0.0.1 (--rate-limit 1000000, so the per-client limiter stays
# out of the figures), one real `trackshift relay` (a session needs a healthy relay) and one registered
# receiver; then, each for SECONDS (default 15) with 2 threads:
#   create     POST /api/v1/session, 16 connections, as fast as they go
#   chunks     PUT  chunk n (a fresh n each request) of one session of 1,000,000 chunks, 16 connections
#   chunks@1k  the same paced: 16 connections (or PACED_CONNECTIONS) each waiting 13 ms after each answer
#              (about 1,000/s; wrk's delay(), so the offered rate drops a little as latency grows); the
#              target: p99 < 20 ms. BACKENDS=postgres (or sqlite) runs one backend only.
#   chunks@1k-late  the same again once the session holds the verified chunks of every run before (whether
#              the latency grows with the chunks already verified)
# wrk's Lua scripts (bench/wrk/*.lua) set the bearer token and bodies. Timing runs hold `flock
# /tmp/bench.lock`; uptime is recorded beside each. Writes README.md (the table) and the raw wrk output.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
backends=${BACKENDS:-sqlite postgres}   # BACKENDS=postgres: one of them only
paced=${PACED_CONNECTIONS:-16}          # connections of the paced runs (each ~1 request per 13 ms + latency)
out=${2:-bench/results/$(date -u +%Y-%m-%d-%H%M)-vm-api-load}
ts=${TS_BIN:-$PWD/target/release/trackshift}
[ -x "$ts" ] || { echo "error: build it first: cargo build --release -p trackshift-cli" >&2; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq; apt-get install -y -qq wrk; }
pgbin=$(dirname "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
[ -x "$pgbin/postgres" ] || { apt-get update -qq; apt-get install -y -qq postgresql; pgbin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)"); }
mkdir -p "$out/raw"
out=$(cd "$out" && pwd)
work=$(mktemp -d /var/tmp/trackshift-api-load-XXXXXX)
chmod 755 "$work"   # PostgreSQL runs as the postgres user
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_pg() {
  local dir=$work/pg
  mkdir -p "$dir"; chown postgres: "$dir"
  runuser -u postgres -- "$pgbin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 > "$dir/initdb.log"
  pgport=$(port)
  runuser -u postgres -- "$pgbin/postgres" -D "$dir/data" -p "$pgport" -k "$dir" \
    -c listen_addresses=127.0.0.1 -c max_connections=50 > "$dir/postgres.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    # Listening comes a moment before accepting queries: one more breath after the port answers.
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $pgport))" 2>/dev/null && { sleep 0.5; return 0; }
    sleep 0.2
  done
  cat "$dir/postgres.log" >&2; exit 1
}

# One backend's runs. $1: sqlite|postgres.
bench_backend() {
  local backend=$1 state=$work/$1 aport db=()
  mkdir -p "$state"
  if [ "$backend" = postgres ]; then start_pg; db=(--database "postgres://postgres@127.0.0.1:$pgport/postgres"); fi
  aport=$(port)
  "$ts" orchestrator --listen "127.0.0.1:$aport" --state-dir "$state" "${db[@]}" --rate-limit 1000000 \
    --heartbeat-interval 1s --quiet > "$state/orch.log" 2>&1 &
  pids+=($!)
  local url=http://127.0.0.1:$aport
  for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.2; done
  tok() { "$ts" orchestrator token --role "$1" --subject "$2" --state-dir "$state"; }
  "$ts" relay --listen 127.0.0.1:0 --orchestrator "$url" --token "$(tok relay load-r1)" --relay-id load-r1 \
    --quiet > "$state/relay.log" 2>&1 &
  pids+=($!)
  local rx_tok tx_tok
  rx_tok=$(tok receiver load-rx); tx_tok=$(tok sender load-tx)
  curl -sf -X POST "$url/api/v1/receivers/register" -H "Authorization: Bearer $rx_tok" \
    -H 'Content-Type: application/json' -d '{"name":"load-rx"}' > /dev/null
  local body='{"receiver":"load-rx","file_name":"big.bin","file_size":5242880000000,"chunk_size":5242880,"streams":4}'
  local sid=
  for _ in $(seq 100); do
    sid=$(curl -sf -X POST "$url/api/v1/session" -H "Authorization: Bearer $tx_tok" \
      -H 'Content-Type: application/json' -d "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])' 2>/dev/null) && break
    sleep 0.2   # until the relay's first heartbeat made it healthy
  done
  [ -n "$sid" ] || { echo "error: no session: $(cat "$state/orch.log")" >&2; exit 1; }
  local next=0
  run() { # name lua connections [args...]
    local name=$1 lua=$2 conns=$3; shift 3
    local up; up=$(uptime)
    flock /tmp/bench.lock env TOKEN="$tx_tok" BODY="$body" SESSION="$sid" \
      wrk -t2 -c"$conns" -d"${seconds}s" --latency -s "bench/wrk/$lua" "$url" -- "$@" \
      > "$out/raw/$backend-$name.txt" 2>&1
    python3 - "$out/raw/$backend-$name.txt" "$backend" "$name" "$conns" "$up" "$(uptime)" >> "$out/results.jsonl" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
def ms(label):
    m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\b", text, re.M)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return round(v / 1000 if unit == "us" else v * 1000 if unit == "s" else v, 3)
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
total = re.search(r"(\d+) requests in", text)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors = re.search(r"Socket errors: (.*)", text)
print(json.dumps({"backend": sys.argv[2], "run": sys.argv[3], "connections": int(sys.argv[4]),
                  "requests": int(total.group(1)) if total else None,
                  "rps": float(rps.group(1)) if rps else None,
                  "p50_ms": ms("50"), "p90_ms": ms("90"), "p99_ms": ms("99"),
                  "non_2xx": int(non2xx.group(1)) if non2xx else 0,
                  "socket_errors": errors.group(1) if errors else "",
                  "uptime_before": sys.argv[5].split("load average:")[-1].strip(),
                  "uptime_after": sys.argv[6].split("load average:")[-1].strip()}))
PY
    tail -1 "$out/results.jsonl"
  }
  run create create.lua 16
  run chunks chunk.lua 16 0
  run chunks@1k chunk.lua "$paced" 500000 13
  run chunks@1k-late chunk.lua "$paced" 750000 13
  curl -sf "$url/api/v1/session/$sid" -H "Authorization: Bearer $tx_tok" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print(sys.argv[1] + ": session " + r["session_id"] + " holds " + str(r["chunks_verified"]) + " verified chunks at the end")' "$backend" \
    >> "$out/notes.txt"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

: > "$out/results.jsonl"; : > "$out/notes.txt"
for b in $backends; do bench_backend "$b"; done
{
  echo "# Orchestrator API under load (wrk)"
  echo
  echo "\`bench/api-load.sh $seconds\` on $(uname -srm), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)."
  echo "wrk 2 threads, orchestrator, relay, wrk and (for postgres) PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') all on this 2-core machine,"
  echo "which other helpers' \`nice\` cargo builds shared during the runs (load average before -> after each run in the table)."
  echo "\`chunks\` PUTs verified to a fresh chunk per request (chunk index from the run's start offset upwards), of one"
  echo "session of 1,000,000 chunks; \`@1k\` runs are paced at about 1,000 requests/s ($paced connections, 13 ms between"
  echo "answer and next request). Target: p99 < 20 ms at 1,000 chunk updates/s."
  echo
  bench/jsonl-table.py "$out/results.jsonl" backend:=backend run:=run connections=connections requests=requests \
    req/s=rps 'p50 ms=p50_ms' 'p90 ms=p90_ms' 'p99 ms=p99_ms' non-2xx=non_2xx 'load before:=uptime_before' \
    'load after:=uptime_after'
  echo
  sed 's/^/- /' "$out/notes.txt"
} > "$out/README.md"
cat "$out/README.md"
