#!/usr/bin/env bash
# Everything that proves contracts/ is right, in order:
#   1. forge tests (unit, events, pricing fuzz) on solc-js
#   2. committed artifacts/ are what src/ compiles to
#   3. selectors, topics and errors match REFERENCE.md §1 (and the check can fail)
#   4. a cast-only deploy + purchase + mint on a throw-away anvil
# Extra arguments go to `forge test` (e.g. --match-test test_cancel -vvv).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
# shellcheck source=../scripts/env.sh
source ../scripts/env.sh
forge test --offline --use ./solc-wrapper "$@"
./check-fresh.sh
./check-abi.sh
./check-abi.sh --self-test
./smoke-anvil.sh
