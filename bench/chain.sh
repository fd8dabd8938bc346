#!/usr/bin/env bash
# Chain watcher benchmarks:
# - catch-up over 100,000 blocks holding 1,000 purchases, with an in-memory node
#   (the watcher's own cost: decoding, ECIES, mapping, store commits) and on anvil
#   (the real RPC path; building a 100,000-block anvil chain takes minutes, as
#   anvil_mine slows down as the chain grows);
# - latency from a purchase mined on anvil to its VM spec being committed, and
#   (whole system, e2e/latency_bench.rs) to the first Proxmox request.
# Usage: bench/chain.sh [--debug]   (release build by default)
# Sizes: BENCH_BLOCKS, BENCH_PURCHASES, BENCH_RANGE, BENCH_SAMPLES, BENCH_POLL_MS;
# ANVIL_BLOCKS/ANVIL_PURCHASES size the anvil catch-up (default: as BENCH_*).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=../scripts/env.sh
source scripts/env.sh
profile=(--release)
[ "${1:-}" = "--debug" ] && profile=()
export BLOCKHOST_REQUIRE_TOOLS=1
filter() { grep -E 'setup:|RESULT|panicked|test result: FAILED' || true; }
cargo test "${profile[@]}" -p blockhost-controller --lib bench_catch_up_in_memory_node -- \
  --ignored --nocapture 2>&1 | filter
cargo test "${profile[@]}" -p blockhost-controller --test chain_bench bench_latency -- \
  --ignored --nocapture 2>&1 | filter
BENCH_BLOCKS="${ANVIL_BLOCKS:-${BENCH_BLOCKS:-100000}}" BENCH_PURCHASES="${ANVIL_PURCHASES:-${BENCH_PURCHASES:-1000}}" \
  cargo test "${profile[@]}" -p blockhost-controller --test chain_bench bench_catch_up -- \
  --ignored --nocapture 2>&1 | filter
# Whole system: purchase on anvil -> blockhostd's first Proxmox request (through
# a timestamping proxy in front of fakepve), with new heads and polling only.
cargo test "${profile[@]}" -p blockhost-controller --test e2e_bench -- \
  --ignored --nocapture 2>&1 | filter
