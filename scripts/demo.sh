#!/usr/bin/env bash
# The main job on local defaults: starts blockhostd on a temporary directory (no
# Proxmox, no chain: specs are stored and shown, nothing is driven), applies the
# example specs, and lists and describes them with bhctl.
#   scripts/demo.sh          run, show, stop
#   scripts/demo.sh --keep   leave the daemon running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build -q --release -p blockhost-controller --bins
BIN=$PWD/target/release
DIR=$(mktemp -d /tmp/blockhost-demo.XXXXXX)
printf '# demo: local defaults\n' > "$DIR/blockhost.yaml"
"$BIN/blockhostd" --config "$DIR/blockhost.yaml" --store "$DIR/state.redb" --socket "$DIR/api.sock" 2>"$DIR/blockhostd.log" &
PID=$!
trap 'kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; echo "demo stopped; state kept in $DIR"' EXIT
for _ in $(seq 200); do [ -S "$DIR/api.sock" ] && break; sleep 0.05; done
export BLOCKHOST_SOCKET="$DIR/api.sock"
run() { echo; echo "\$ bhctl $*"; "$BIN/bhctl" "$@"; }
run apply -f examples/
run apply -f examples/
run get plans
run get vms -o wide
run describe vm web-1
run get events
if [ "${1:-}" = "--keep" ]; then
  echo; echo "blockhostd is running: export BLOCKHOST_SOCKET=$DIR/api.sock; Ctrl-C stops it."
  wait "$PID"
fi
