#!/usr/bin/env bash
# Builds TrackShift and moves a generated 256 MiB file over loopback (DCSP over UDP, keys and control on TLS 1.3),
# then shows the result.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p trackshift-cli
bin=target/release/trackshift
work=$(mktemp -d /tmp/trackshift-demo.XXXXXX)
trap 'kill $recv_pid 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/out"
head -c 256M /dev/urandom > "$work/demo.bin"
secret=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

"$bin" receive --listen 127.0.0.1:0 --output-dir "$work/out" --state-dir "$work/recv-state" \
  --secret "$secret" --once --json > "$work/recv.log" &
recv_pid=$!
for _ in $(seq 100); do grep -q listening "$work/recv.log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.*"addr":"\([^"]*\)".*/\1/p' "$work/recv.log" | head -1)
echo "receiver listening on $addr"

"$bin" send "$work/demo.bin" --to "$addr" --secret "$secret" --state-dir "$work/send-state"
wait $recv_pid
echo
echo "source:      $(sha256sum < "$work/demo.bin")"
echo "destination: $(sha256sum < "$work/out/demo.bin")"
cmp "$work/demo.bin" "$work/out/demo.bin" && echo "OK: byte-identical"
