#!/usr/bin/env bash
# Chain watcher benchmarks on anvil: catch-up rate (100,000 blocks holding 1,000
# purchases) and latency from a purchase mined to its VM spec being written.
# Usage: bench/chain.sh [--debug]   (release build by default)
# Sizes: BENCH_BLOCKS, BENCH_PURCHASES, BENCH_RANGE, BENCH_SAMPLES, BENCH_POLL_MS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=../scripts/env.sh
source scripts/env.sh
profile=(--release)
[ "${1:-}" = "--debug" ] && profile=()
export BLOCKHOST_REQUIRE_TOOLS=1
cargo test "${profile[@]}" -p blockhost-controller --test chain_bench -- \
  --ignored --test-threads=1 --nocapture 2>&1 | grep -E 'setup:|RESULT|panicked|test result'
