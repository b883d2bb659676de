#!/usr/bin/env bash
# Runs every test: installs what the tests need, builds, then the whole workspace's test suite and a short run of
# every fuzz target (scripts/fuzz.sh), and ends with one line adding up all test binaries' and fuzz targets' results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# The scenario tests drive the real binaries; build them first so every test finds them.
cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
bash scripts/fuzz.sh 2>&1 | tee -a "$log" || status=$?
# Each fuzz target counts as one test.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^fuzz [a-z_]+: ok/ { p++ } /^fuzz [a-z_]+: FAILED/ { f++ }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
