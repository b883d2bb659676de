#!/usr/bin/env bash
# The fuzz step of the test command: builds the cargo-fuzz targets in fuzz/ (nightly toolchain, AddressSanitizer)
# and runs each for FUZZ_SECONDS (default 30) from an empty corpus in a temporary directory. Any crash, leak,
# hang (an input taking over 30 s) or failed build fails the step; a crashing input is kept in
# fuzz/artifacts/<target>/ (see fuzz/README.md to replay it). Installs cargo-fuzz when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}

if ! command -v rustup >/dev/null 2>&1 || ! rustup toolchain list | grep -q '^nightly'; then
  echo "error: the fuzz step needs Rust's nightly toolchain; install it with:" >&2
  echo "  rustup toolchain install nightly --profile minimal" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

started=$SECONDS
cargo +nightly fuzz build
echo "fuzz: targets built in $((SECONDS - started)) s"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
targets=$(cargo +nightly fuzz list)
for t in $targets; do
  mkdir -p "$work/$t"
  if cargo +nightly fuzz run "$t" "$work/$t" -- -max_total_time="$seconds" -timeout=30 -print_final_stats=1 \
      >"$work/$t.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
    echo "fuzz $t: ok, ${runs:-?} inputs in ${seconds} s"
  else
    tail -n 60 "$work/$t.log" >&2
    echo "fuzz $t: FAILED"
    failed+=("$t")
  fi
done
echo "fuzz: $(wc -w <<<"$targets") targets, ${#failed[@]} failed (${failed[*]:-none}), $((SECONDS - started)) s in all"
[ ${#failed[@]} -eq 0 ]
