#!/usr/bin/env bash
# VM reconciler benchmarks against the zero-latency in-process FakeCluster:
# 1,000 specs from empty to all Running (wall time, API requests per VM), then
# 10,000 Running VMs in steady state (requests and CPU per resync, process RSS).
# Usage: bench/reconcile.sh [--debug]   (release build by default)
# Sizes: BENCH_CREATE_VMS, BENCH_STEADY_VMS, BENCH_CONCURRENCY, BENCH_RESYNC_SECS.
# Each benchmark runs in its own process so the RSS figure is its own.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=../scripts/env.sh
[ -f scripts/env.sh ] && source scripts/env.sh
profile=(--release)
[ "${1:-}" = "--debug" ] && profile=()
for bench in bench_create bench_steady bench_fake_only_rss; do
  cargo test "${profile[@]}" -p blockhost-controller --test reconcile_bench -- \
    --ignored --exact "$bench" --test-threads=1 --nocapture 2>&1 |
    grep -E 'setup:|RESULT|panicked|test result'
done
