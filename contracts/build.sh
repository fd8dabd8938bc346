#!/usr/bin/env bash
# Compiles the contracts with solc-js (through ./solc-wrapper) and refreshes
# artifacts/*.json, the ABI + bytecode the Rust crate blockhost-chain embeds.
# Commit artifacts/ after running this; check-fresh.sh fails while they are stale.
#
# Optional: build.sh <out-dir> <cache-dir> <artifacts-dir> (used by check-fresh.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
# shellcheck source=../scripts/env.sh
source ../scripts/env.sh
out="${1:-out}"
cache="${2:-cache}"
artifacts="${3:-artifacts}"
forge build --offline --use ./solc-wrapper --out "$out" --cache-path "$cache" >&2
node ./export-artifacts.js "$out" "$artifacts"
