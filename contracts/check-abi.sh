#!/usr/bin/env bash
# Checks the compiled contracts against the original BlockHost interface
# (reference-abi.txt, copied from REFERENCE.md §1); see check-abi.js.
#   check-abi.sh               the real check
#   check-abi.sh --self-test   proves the check can fail: a list with one wrong
#                              selector and one wrong `indexed` flag must be refused
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
# shellcheck source=../scripts/env.sh
source ../scripts/env.sh
reference="${BLOCKHOST_REFERENCE:-$here/../../shared/REFERENCE.md}"

if [ "${1:-}" != "--self-test" ]; then
  exec node ./check-abi.js reference-abi.txt "$reference"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
expect_refusal() { # <description> <sed expression>
  sed "$2" reference-abi.txt >"$tmp/list.txt"
  if cmp -s reference-abi.txt "$tmp/list.txt"; then
    echo "self-test broken: '$1' changed nothing" >&2
    exit 1
  fi
  if node ./check-abi.js "$tmp/list.txt" none >"$tmp/out" 2>&1; then
    echo "self-test FAILED: the check accepted $1" >&2
    exit 1
  fi
  grep -q "FAILED" "$tmp/out"
  echo "self-test ok: refused $1"
}
expect_refusal "a wrong parameter type" 's/setMinLiquidity(uint256)/setMinLiquidity(uint128)/'
expect_refusal "a moved indexed flag" 's/PlanCreated(uint256 indexed planId,/PlanCreated(uint256 planId,/'
expect_refusal "a wrong return type" 's/getPlan(uint256) returns (string, uint256, bool)/getPlan(uint256) returns (string, uint256)/'
expect_refusal "a missing error" 's/error PlanNotFound()/error PlanMissing()/'
