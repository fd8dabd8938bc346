#!/usr/bin/env bash
# End-to-end smoke test of the committed artifacts on a real node, with only
# foundry's `cast` as the client (as an outside wallet/script would be):
# deploy on a throw-away anvil, configure, buy a subscription through the
# original signatures, mint an access NFT and read its id from the receipt.
# anvil listens on 127.0.0.1:${SMOKE_ANVIL_PORT:-18537} only.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
# shellcheck source=../scripts/env.sh
source ../scripts/env.sh
port="${SMOKE_ANVIL_PORT:-18537}"
rpc="http://127.0.0.1:$port"
# anvil's well-known dev accounts 0 (owner/server) and 1 (buyer).
owner_key=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
buyer_key=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d
buyer=$(cast wallet address --private-key $buyer_key)

anvil --host 127.0.0.1 --port "$port" --silent &
anvil_pid=$!
trap 'kill $anvil_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do cast block-number --rpc-url "$rpc" >/dev/null 2>&1 && break; sleep 0.1; done

fail() { echo "smoke FAILED: $*" >&2; exit 1; }
json() { node -e "const r=JSON.parse(require('fs').readFileSync(0,'utf8')); console.log($1)"; }
bytecode() { node -p "require('./artifacts/$1.json').bytecode"; }
deploy() { # <artifact> [constructor signature and args...]
  local code
  code=$(bytecode "$1")
  shift
  if [ $# -gt 0 ]; then code="$code$(cast abi-encode "$@" | sed 's/^0x//')"; fi
  cast send --rpc-url "$rpc" --private-key $owner_key --json --create "$code" | json r.contractAddress
}
send() { # <key> <to> <sig> [args...] -> receipt JSON
  local key=$1
  shift
  cast send --rpc-url "$rpc" --private-key "$key" --json "$@"
}

subs=$(deploy BlockhostSubscriptions)
nft=$(deploy AccessCredentialNFT)
usdc=$(deploy MockERC20 'constructor(string,string,uint8)' 'USD Coin' USDC 6)
echo "deployed subscriptions=$subs nft=$nft usdc=$usdc"

send $owner_key "$subs" 'setPrimaryStablecoin(address)' "$usdc" >/dev/null
send $owner_key "$subs" 'createPlan(string,uint256)' basic 150 >/dev/null
send $buyer_key "$usdc" 'mint(address,uint256)' "$buyer" 100000000 >/dev/null
# cast annotates big numbers ("45000000 [4.5e7]"); keep the plain value.
quote=$(cast call --rpc-url "$rpc" "$subs" 'calculatePayment(uint256,uint256,uint256)(uint256)' 1 30 1 | awk '{print $1}')
[ "$quote" = "45000000" ] || fail "quote for 30 days was '$quote'"
send $buyer_key "$usdc" 'approve(address,uint256)' "$subs" "$quote" >/dev/null
receipt=$(send $buyer_key "$subs" 'buySubscription(uint256,uint256,uint256,bytes)' 1 30 1 0xc0ffee)

topic=$(cast sig-event 'SubscriptionCreated(uint256 indexed subscriptionId, uint256 indexed planId, address indexed subscriber, uint256 expiresAt, uint256 paidAmount, address paymentToken, bytes userEncrypted)')
[ "$(echo "$receipt" | json 'r.status')" = "0x1" ] || fail "purchase reverted"
log_topic=$(echo "$receipt" | json "r.logs.find(l => l.address.toLowerCase() === '${subs,,}').topics[0]")
[ "$log_topic" = "$topic" ] || fail "SubscriptionCreated topic $log_topic != $topic"
sub=$(cast call --rpc-url "$rpc" "$subs" 'getSubscription(uint256)(uint256,address,uint256,bool,bool)' 1 | tr '\n' ' ')
case "$sub" in "1 $buyer "*" true false ") ;; *) fail "getSubscription(1) = $sub" ;; esac
paid=$(cast call --rpc-url "$rpc" "$usdc" 'balanceOf(address)(uint256)' "$subs" | awk '{print $1}')
[ "$paid" = "45000000" ] || fail "contract holds $paid"
echo "bought subscription 1: $sub"

minted_topic=$(cast sig-event 'CredentialMinted(uint256 indexed tokenId, address indexed recipient)')
for expected in 0 1; do
  receipt=$(send $owner_key "$nft" 'mint(address,bytes)' "$buyer" 0xabcdef)
  id_hex=$(echo "$receipt" | json "r.logs.find(l => l.topics[0] === '$minted_topic').topics[1]")
  id=$(cast to-dec "$id_hex")
  [ "$id" = "$expected" ] || fail "minted token id $id, expected $expected"
done
holder=$(cast call --rpc-url "$rpc" "$nft" 'ownerOf(uint256)(address)' 1)
[ "$holder" = "$buyer" ] || fail "ownerOf(1) = $holder"
payload=$(cast call --rpc-url "$rpc" "$nft" 'getUserEncrypted(uint256)(bytes)' 1)
[ "$payload" = "0xabcdef" ] || fail "getUserEncrypted(1) = $payload"
echo "minted tokens 0 and 1 to $buyer; ids read from CredentialMinted in the receipts"
echo "smoke ok"
