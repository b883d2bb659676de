#!/usr/bin/env bash
# Runs every test: installs what the tests need, builds, then the whole workspace's test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# The scenario tests drive the real binaries; build them first so every test finds them.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
