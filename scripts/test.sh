#!/usr/bin/env bash
# Runs every test: installs what the tests need, builds, then the whole workspace's tests under cargo-nextest
# (one process per test; a test that hangs is killed and named, and the whole run has a time limit: see
# .config/nextest.toml), then the doctests, then a short run of every fuzz target (scripts/fuzz.sh); ends with
# one line adding up all results (each fuzz target counts as one test).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
command -v cargo-nextest >/dev/null 2>&1 || {
  echo "error: cargo-nextest is missing (it ships with this project's machines): cargo install cargo-nextest --locked" >&2
  exit 1
}
# The scenario tests drive the real binaries; build them first so every test finds them.
cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
started=$SECONDS
cargo nextest run --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# nextest does not run doctests.
cargo test --workspace --doc 2>&1 | tee -a "$log" || status=$?
echo "test run took $((SECONDS - started)) s"
bash scripts/fuzz.sh 2>&1 | tee -a "$log" || status=$?
# nextest's closing line: "Summary [ 1.2s] 9 tests run: 7 passed (1 slow), 1 failed, 1 timed out, 2 skipped";
# cargo test's (doctests): "test result: ok. 0 passed; 0 failed; ..."; fuzz.sh's: "fuzz <target>: ok" or FAILED.
awk '/^ *Summary \[/ || /^test result:/ {
       for (i = 1; i < NF; i++) {
         w = $(i + 1)
         if (w ~ /^passed/) p += $i
         if (w ~ /^failed/ || (w == "timed" && $(i + 2) ~ /^out/)) f += $i
       }
     }
     /^fuzz [a-z_]+: ok/ { p++ } /^fuzz [a-z_]+: FAILED/ { f++ }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
