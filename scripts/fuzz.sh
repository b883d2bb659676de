#!/usr/bin/env bash
# The fuzz step of the test command: builds the cargo-fuzz targets in fuzz/ (nightly toolchain, AddressSanitizer)
# and runs each for FUZZ_SECONDS (default 30). Each run first replays the target's checked-in seeds
# (fuzz/seeds/<target>.tar.gz: the minimised corpus of the long runs, bench/fuzz.sh, and every input that ever
# failed), so they are regression tests, then explores from them. Any crash, leak, hang (an input taking over 30 s) or failed
# build fails the step; a crashing input is kept in fuzz/artifacts/<target>/ (see fuzz/README.md to replay it).
# FUZZ_JOBS targets run at once (default 1); FUZZ_CORPUS=DIR keeps what each run finds in DIR/<target>/
# (default: a temporary dir, removed); FUZZ_TARGETS="a b" runs only those. Installs cargo-fuzz when it is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-30}
jobs=${FUZZ_JOBS:-1}

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
corpus_root=${FUZZ_CORPUS:-$work/corpus}

# One target: its corpus dir, then the seeds (read only); one result line.
run_target() {
  local t=$1 corpus=$corpus_root/$1 seeds=() nseeds=0
  mkdir -p "$corpus"
  if [ -f "fuzz/seeds/$t.tar.gz" ]; then
    mkdir -p "$work/seeds/$t"
    tar -xzf "fuzz/seeds/$t.tar.gz" -C "$work/seeds/$t"
    seeds=("$work/seeds/$t")
    nseeds=$(find "$work/seeds/$t" -type f | wc -l)
  fi
  if cargo +nightly fuzz run "$t" "$corpus" "${seeds[@]}" -- -max_total_time="$seconds" -timeout=30 \
      -print_final_stats=1 >"$work/$t.log" 2>&1; then
    local runs cov
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' "$work/$t.log" | tail -n 1)
    echo "fuzz $t: ok, ${runs:-?} inputs in ${seconds} s, ${cov:-cov: ?}, ${nseeds} seeds replayed"
  else
    tail -n 60 "$work/$t.log" >&2
    echo "fuzz $t: FAILED"
  fi
}

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
for t in $targets; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run_target "$t" | tee "$work/$t.result" &
done
wait
# grep -l finds no file when every target passed (exit 1): that is not a failure of this script.
failed=$({ grep -l FAILED "$work"/*.result 2>/dev/null || true; } | xargs -rn1 basename | sed 's/\.result$//' |
  tr '\n' ' ')
failed=${failed% }
echo "fuzz: $(wc -w <<<"$targets") targets, $(wc -w <<<"$failed") failed (${failed:-none}), $((SECONDS - started)) s in all"
[ -z "$failed" ]
