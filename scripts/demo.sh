#!/usr/bin/env bash
# The main job, locally: a chain (anvil), a Proxmox stand-in (fakepve over
# HTTPS) and blockhostd start; the operator deploys the contracts and creates a
# plan with bhctl; a user buys a subscription with cast (their signature
# ECIES-encrypted to the server by npm eciesjs); blockhostd provisions the VM
# and mints the access NFT; the user decrypts it with bhctl. The VM is real: the
# stand-in boots it in qemu from the guest template image on a bridge in a
# network namespace, and the demo ends with the buyer's wallet login (the PAM
# module's message signed by `cast wallet sign`) printing `uname -a` and `id`
# from inside the VM.
#   scripts/demo.sh          the whole flow with a real VM (builds the guest image
#                            the first time: a few minutes; the boot under TCG too)
#   scripts/demo.sh --fake   the fast run: VMs are rows in fakepve, nothing boots
#   scripts/demo.sh --keep   leave everything running until Ctrl-C
# The real VM needs root (namespace, tap, the image build's loop devices) and qemu
# (scripts/setup.sh installs it). The image: BLOCKHOST_GUEST_IMAGE=path.qcow2, else
# the last one built under target/guest-image (by the boot test or an earlier demo),
# else one is built with `bhctl template build`. qemu uses KVM when a probe boot
# under /dev/kvm works and TCG otherwise.
# Ports: anvil 127.0.0.1:${DEMO_ANVIL_PORT:-18545}, fakepve ${DEMO_PVE_HOST:-127.0.14.1}:8006,
# the signup page http://127.0.0.1:${DEMO_SIGNUP_PORT:-18080}/.
# Keys: anvil's well-known dev keys only (never use them on a real chain).
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0; REAL=1
for a in "$@"; do
  case "$a" in
    --keep) KEEP=1 ;;
    --fake) REAL=0 ;;
    --real) REAL=1 ;;
    *) echo "usage: scripts/demo.sh [--fake] [--keep]" >&2; exit 2 ;;
  esac
done
GUEST_IMAGE=${BLOCKHOST_GUEST_IMAGE:-}
if [ "$REAL" -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
  echo "the real VM needs root (network namespace, tap, loop devices); run it as root, or scripts/demo.sh --fake" >&2
  exit 1
fi
if [ "$REAL" -eq 1 ] && [ -n "$GUEST_IMAGE" ] && [ ! -f "$GUEST_IMAGE" ]; then
  echo "BLOCKHOST_GUEST_IMAGE=$GUEST_IMAGE does not exist; unset it to use or build target/guest-image's" >&2
  exit 1
fi
bash scripts/setup.sh
# shellcheck source=env.sh
source scripts/env.sh
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
cargo build -q --release -p blockhost-controller -p bhctl --bins
BIN=$TARGET/release
if [ "$REAL" -eq 1 ] && [ -z "$GUEST_IMAGE" ] && [ -f "$TARGET/guest-image/current.json" ]; then
  GUEST_IMAGE=$(jq -r '.image // empty' "$TARGET/guest-image/current.json")
  [ -f "$GUEST_IMAGE" ] || GUEST_IMAGE=""
fi
if [ "$REAL" -eq 1 ] && [ -z "$GUEST_IMAGE" ]; then
  echo "== the guest template image: blockhost-guest package, then bhctl template build"
  GUEST_DEB=$(bash packaging/build-debs.sh --no-check --out "$TARGET/guest-image/demo/debs" blockhost-guest | tail -n 1)
  echo "\$ bhctl template build --builder iso/guest --guest-deb $GUEST_DEB --output $TARGET/guest-image/demo/blockhost-guest-trixie-amd64.qcow2"
  "$BIN/bhctl" template build --builder iso/guest --guest-deb "$GUEST_DEB" \
    --output "$TARGET/guest-image/demo/blockhost-guest-trixie-amd64.qcow2" --cache "$TARGET/guest-image/apt-cache"
  GUEST_IMAGE=$TARGET/guest-image/demo/blockhost-guest-trixie-amd64.qcow2
fi
DIR=$(mktemp -d /tmp/blockhost-demo.XXXXXX)
ANVIL_PORT=${DEMO_ANVIL_PORT:-18545}
PVE_HOST=${DEMO_PVE_HOST:-127.0.14.1}
SIGNUP_PORT=${DEMO_SIGNUP_PORT:-18080}
RPC=http://127.0.0.1:$ANVIL_PORT
CFG=$DIR/blockhost.yaml
# anvil dev account 4 buys; dev key 2 is the server key (well known, test only).
USER_ADDR=0x15d34aaf54267db7d7c367839aaf71a00a2c6a65
SERVER_KEY=5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo stopped; state and logs kept in $DIR"
}
trap cleanup EXIT
step() { echo; echo "== $*"; }
run() { echo "\$ bhctl $*"; "$BIN/bhctl" "$@"; }
wait_until() { # seconds, description, command...
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  while [ "$SECONDS" -lt "$end" ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $what; see $DIR/*.log" >&2; return 1
}

step "chain: anvil on $RPC"
anvil --host 127.0.0.1 --port "$ANVIL_PORT" --silent >"$DIR/anvil.log" 2>&1 &
PIDS+=($!)
wait_until 20 anvil cast block-number --rpc-url "$RPC"

PVE_ARGS=()
if [ "$REAL" -eq 1 ]; then
  step "Proxmox stand-in: fakepve on https://$PVE_HOST:8006, VMs in qemu from $GUEST_IMAGE"
  PVE_ARGS=(--guest-image "$GUEST_IMAGE" --guest-dir "$DIR/guests" --gateway 10.20.0.1/24 --gateway 2001:db8:20::1/64)
else
  step "Proxmox stand-in: fakepve on https://$PVE_HOST:8006 (fake VMs)"
fi
coproc PVE { exec .venv/bin/python controller/pve/tests/fakepve_server.py "$PVE_HOST" "${PVE_ARGS[@]}" 2>"$DIR/fakepve.log"; }
PIDS+=("$PVE_PID")
read -r HELLO <&"${PVE[0]}"
PVE_URL=$(jq -r '.url // empty' <<<"$HELLO")
PVE_FP=$(jq -r '.fingerprint // empty' <<<"$HELLO")
[ -n "$PVE_URL" ] || { echo "fakepve did not start: $HELLO (see $DIR/fakepve.log)" >&2; exit 1; }
if [ "$REAL" -eq 1 ]; then
  NETNS=$(jq -r .netns <<<"$HELLO")
  echo "node network: bridge vmbr0 in namespace $NETNS; accelerator $(jq -r .accel <<<"$HELLO"); serial logs in $(jq -r .serial_dir <<<"$HELLO")"
  BOOT_SECS=900
else
  # Guests' agents answer (a real template has qemu-guest-agent installed).
  echo '{"op":"auto_agent"}' >&"${PVE[1]}"; read -r _ <&"${PVE[0]}"
  BOOT_SECS=60
fi

umask 077
printf 's3cret-token\n' >"$DIR/pve-token"
printf '0x%s\n' "$SERVER_KEY" >"$DIR/server.key"
umask 022
cat >"$CFG" <<YAML
# blockhostd demo configuration (written by scripts/demo.sh)
store: $DIR/state.redb
api:
  socket: $DIR/api.sock
proxmox:
  url: $PVE_URL
  tokenId: "root@pam!blockhost"
  tokenSecretFile: $DIR/pve-token
  tlsFingerprint: "$PVE_FP"
  vmidFirst: 200
  vmidLast: 299
  defaultTemplate: 9001
  resyncSecs: 5
  agentTimeoutSecs: 900
  shutdownTimeoutSecs: 120
network:
  ipv4: {cidr: 10.20.0.0/24, gateway: 10.20.0.1}
  ipv6: {prefix: "2001:db8:20::/64", gateway: "2001:db8:20::1"}
  bridge: vmbr0
  nameservers: [10.20.0.1]
chain:
  chainId: 31337
  rpcUrls: ["$RPC"]
  wsUrls: ["ws://127.0.0.1:$ANVIL_PORT"]
  confirmations: 0
  serverKeyFile: $DIR/server.key
  planDefaults:
    resources: {cores: 1, memoryMiB: 1024, diskGiB: 4}
signup:
  listen: 127.0.0.1:$SIGNUP_PORT
YAML

step "operator: deploy the contracts with the server key"
echo "\$ bhctl chain deploy --config $CFG --dev-stablecoin -o json"
DEPLOYED=$("$BIN/bhctl" chain deploy --config "$CFG" --dev-stablecoin -o json)
jq . <<<"$DEPLOYED"
SUBS=$(jq -r .subscriptionsContract <<<"$DEPLOYED")
NFT=$(jq -r .nftContract <<<"$DEPLOYED")
USDC=$(jq -r .stablecoin <<<"$DEPLOYED")
echo "the configuration now names the contracts:"
grep -E 'subscriptionsContract|nftContract|deploymentBlock' "$CFG"

step "blockhostd starts"
"$BIN/blockhostd" --config "$CFG" 2>"$DIR/blockhostd.log" &
PIDS+=($!)
export BLOCKHOST_SOCKET=$DIR/api.sock
wait_until 20 "the API socket" test -S "$BLOCKHOST_SOCKET"

step "operator: a plan"
run plan create basic 150 --config "$CFG"
wait_until 20 "plan-1" "$BIN/bhctl" get plans plan-1
run get plans

step "user $USER_ADDR: stablecoin, approval, signature, purchase (cast + eciesjs)"
cast send -q --rpc-url "$RPC" --unlocked --from "$USER_ADDR" "$USDC" "mint(address,uint256)" "$USER_ADDR" 100000000
cast send -q --rpc-url "$RPC" --unlocked --from "$USER_ADDR" "$USDC" "approve(address,uint256)" "$SUBS" 100000000
SIG=$(cast rpc --rpc-url "$RPC" personal_sign "0x$(printf blockhost-access | od -An -tx1 | tr -d ' \n')" "$USER_ADDR" | tr -d '"')
PAYLOAD=$(DEMO_SERVER_KEY_FILE=$DIR/server.key node scripts/demo/buyer.js <<<"$SIG")
cast send -q --rpc-url "$RPC" --unlocked --from "$USER_ADDR" "$SUBS" \
  "buySubscription(uint256,uint256,uint256,bytes)" 1 30 1 "0x$PAYLOAD"
echo "bought 30 days of plan 1"

step "blockhostd provisions the VM and mints the NFT"
minted() { "$BIN/bhctl" get subscriptions -o json | jq -e '.items[0].status.nftTokenId != null'; }
running() { "$BIN/bhctl" get vms -o json | jq -e '.items[0].status.phase == "Running"'; }
[ "$REAL" -eq 1 ] && echo "(the VM boots in qemu; under TCG that takes a minute or more)"
wait_until "$BOOT_SECS" "the VM to run" running
wait_until 60 "the NFT" minted
run get vms
run get vms -o wide
run get subscriptions
run describe vm blockhost-001

step "user: decrypt the NFT (signature on stdin, never in argv)"
echo "\$ bhctl nft decrypt --token-id 0 --rpc-url $RPC --nft-contract $NFT --signature -"
"$BIN/bhctl" nft decrypt --token-id 0 --rpc-url "$RPC" --nft-contract "$NFT" --signature - <<<"$SIG"
echo "holder on chain: $(cast call --rpc-url "$RPC" "$NFT" 'ownerOf(uint256)(address)' 0)"

step "the signup page's public status for subscription 1 (what a browser polls)"
echo "\$ curl http://127.0.0.1:$SIGNUP_PORT/api/v1/subscriptions/1"
curl -fsS "http://127.0.0.1:$SIGNUP_PORT/api/v1/subscriptions/1"; echo
echo "signup page: http://127.0.0.1:$SIGNUP_PORT/ (a wallet on chain 31337 at $RPC can buy there)"

if [ "$REAL" -eq 1 ]; then
  step "user: SSH login at the NFT's address, signing the PAM module's message with cast wallet sign"
  DETAILS=$("$BIN/bhctl" nft decrypt --token-id 0 --rpc-url "$RPC" --nft-contract "$NFT" --signature - -o json <<<"$SIG")
  VM_HOST=$(jq -r .hostname <<<"$DETAILS"); VM_USER=$(jq -r .username <<<"$DETAILS")
  mkdir -m 700 "$DIR/ssh"
  # anvil's well-known mnemonic; the buyer is account 4 (test keys only).
  printf 'test test test test test test test test test test test junk\n' >"$DIR/ssh/mnemonic"; chmod 600 "$DIR/ssh/mnemonic"
  cat >"$DIR/ssh/askpass" <<'ASKPASS'
#!/bin/bash
# ssh's askpass: sign the message between pam_blockhost's markers with the buyer's wallet.
msg="$(printf '%s\n' "$1" | sed -n '/^----- BEGIN SIGN-IN MESSAGE -----$/,/^----- END SIGN-IN MESSAGE -----$/p' | sed '1d;$d')"
[ -n "$msg" ] || exit 1
exec cast wallet sign --mnemonic "$(dirname "$0")/mnemonic" --mnemonic-index 4 "$msg"
ASKPASS
  chmod 700 "$DIR/ssh/askpass"
  login() {
    SSH_ASKPASS="$DIR/ssh/askpass" SSH_ASKPASS_REQUIRE=force DISPLAY=:0 ip netns exec "$NETNS" \
      ssh -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
        -o PreferredAuthentications=keyboard-interactive -o NumberOfPasswordPrompts=1 -o ConnectTimeout=5 \
        "$VM_USER@$VM_HOST" "$@" </dev/null
  }
  echo "\$ ssh $VM_USER@$VM_HOST 'uname -a; id'    # from the node's network; the answer is a cast wallet signature"
  wait_until "$BOOT_SECS" "sshd in the VM to let the wallet in" login true
  login 'uname -a; id'
fi

if [ "$KEEP" -eq 1 ]; then  echo; echo "running: export BLOCKHOST_SOCKET=$BLOCKHOST_SOCKET; anvil at $RPC; Ctrl-C stops everything."
  wait "${PIDS[0]}"
fi
