# Sourced by scripts and tests: puts the pinned tools on PATH (foundry's native
# binaries first, then npm's .bin shims, then the Python venv).
# shellcheck shell=bash
_bh_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PATH="$_bh_root/node_modules/.bin:$_bh_root/.venv/bin:$PATH"
for _t in anvil cast forge; do
  _d="$_bh_root/node_modules/@foundry-rs/$_t-linux-amd64/bin"
  [ -d "$_d" ] && PATH="$_d:$PATH"
done
export PATH BLOCKHOST_ROOT="$_bh_root"
unset _bh_root _t _d
