# Sourced by the bench scripts that start `netlab up` in the background: waits until the emulator's log
# ($1) has its "ready" line (10 s at most, else prints the log and exits 1), then sets ns_a, ns_b and addr_b
# from it.
netlab_ready() {
  local log=$1 ready
  for _ in $(seq 100); do grep -q '"ready"' "$log" && break; sleep 0.1; done
  ready=$(grep '"ready"' "$log") || { cat "$log" >&2; exit 1; }
  field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$ready" "$1"; }
  ns_a=$(field ns_a); ns_b=$(field ns_b); addr_b=$(field addr_b)
}
