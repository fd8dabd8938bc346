#!/usr/bin/env bash
# The signup page's NFT lookup, `GET /api/v1/nfts/{tokenId}`, at 10 and at
# 10,000 minted subscriptions: microseconds per request through the page's
# router in-process (rate limit, the store's token index, JSON), and for
# comparison the scan of every subscription the handler did before the index.
# Usage: bench/signup.sh [--debug]   (release build by default)
# Sizes: BENCH_REQUESTS (per size, default 2000), BENCH_SCANS (default 50).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=(--release)
[ "${1:-}" = "--debug" ] && profile=()
cargo test "${profile[@]}" -q -p blockhost-controller --test signup_bench -- \
  --ignored --nocapture 2>&1 | grep -E 'RESULT|panicked|test result: FAILED' || true
