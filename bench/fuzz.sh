#!/usr/bin/env bash
# The long fuzz run (issue 18 point 6): every cargo-fuzz target for SECONDS (default 600), JOBS at once (default
# 2), each from its checked-in seeds plus what earlier long runs found (fuzz/corpus/, not in git). Then each
# target's corpus is minimised (`cargo fuzz cmin`) and becomes its seeds, fuzz/seeds/<target>.tar.gz (with the
# inputs that ever failed, fuzz/regressions/<target>/), which the test command's short fuzz step replays first.
# Writes bench/results/<date>-<host>-fuzz-<SECONDS>s/README.md. FUZZ_TARGETS="a b" runs only those.
# Usage: bench/fuzz.sh [SECONDS] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}; jobs=${2:-2}
out=bench/results/$(date -u +%Y-%m-%d-%H%M)-$(hostname -s)-fuzz-${seconds}s
mkdir -p "$out"
status=0
FUZZ_SECONDS=$seconds FUZZ_JOBS=$jobs FUZZ_CORPUS=$PWD/fuzz/corpus bash scripts/fuzz.sh 2>&1 |
  tee "$out/fuzz.log" || status=$?
targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
mkdir -p fuzz/seeds
for t in $targets; do
  cargo +nightly fuzz cmin "$t" "fuzz/corpus/$t" >"$out/cmin-$t.log" 2>&1 || { status=1; continue; }
  seeds=$(mktemp -d)
  cp "fuzz/corpus/$t"/* "$seeds/"
  [ -d "fuzz/regressions/$t" ] && cp "fuzz/regressions/$t"/* "$seeds/"
  tar -czf "fuzz/seeds/$t.tar.gz" -C "$seeds" --sort=name --mtime=@0 --owner=0 --group=0 .
  rm -rf "$seeds"
done
{
  echo "# Every fuzz target for ${seconds} s ($jobs at once)"
  echo
  echo "\`bench/fuzz.sh $seconds $jobs\` at commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%F)."
  echo "\`cov\`/\`ft\`: libFuzzer's edge and feature counts at the end; \`corp\`: inputs kept; seeds: minimised"
  echo "corpus now in fuzz/seeds/<target>.tar.gz (replayed first by every run of scripts/fuzz.sh)."
  echo
  echo "| target | result | inputs run | cov | ft | corpus | seeds kept | seeds .tar.gz |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|"
  for t in $targets; do
    line=$(grep "^fuzz $t: " "$out/fuzz.log" || echo "fuzz $t: missing")
    runs=$(sed -n 's/.*ok, \([0-9]*\) inputs.*/\1/p' <<<"$line")
    read -r cov ft corp < <(sed -n 's/.*cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\).*/\1 \2 \3/p' <<<"$line") || true
    result=$(sed -n 's/^fuzz [a-z_]*: \([A-Za-z]*\).*/\1/p' <<<"$line")
    kept=$(tar -tzf "fuzz/seeds/$t.tar.gz" 2>/dev/null | grep -vc '/$' || true)
    echo "| $t | $result | ${runs:-} | ${cov:-} | ${ft:-} | ${corp:-} | $kept | $(du -h "fuzz/seeds/$t.tar.gz" 2>/dev/null | cut -f1) |"
  done
  echo
  grep '^fuzz: ' "$out/fuzz.log" || true
} >"$out/README.md"
cat "$out/README.md"
exit "$status"
