#!/usr/bin/env bash
# Benchmarks of the foundation (issue 2), on release binaries:
#  - apply 10,000 VirtualMachine specs in one `bhctl apply` (one transaction);
#  - `bhctl get vms -o json` over 10,000, whole process, median of 15 runs (goal < 200 ms);
#  - blockhostd's resident memory holding 10,000 (goal < 64 MiB).
# Usage: bench/store.sh [COUNT]   (default 10000). Prints figures; writes nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
cargo build -q --release -p blockhost-controller -p bhctl --bins
BIN="${CARGO_TARGET_DIR:-target}/release"
T=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$T"' EXIT
printf '# bench: local defaults\n' > "$T/blockhost.yaml"
"$BIN/blockhostd" --config "$T/blockhost.yaml" --store "$T/state.redb" --socket "$T/api.sock" 2>"$T/daemon.log" &
PID=$!
for _ in $(seq 200); do [ -S "$T/api.sock" ] && break; sleep 0.05; done
export BLOCKHOST_SOCKET="$T/api.sock"

python3 - "$N" > "$T/vms.yaml" <<'PY'
import sys
n = int(sys.argv[1])
owners = ["0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"]
for i in range(n):
    print(f"""---
apiVersion: blockhost.io/v1alpha1
kind: VirtualMachine
metadata:
  name: bench-{i:05d}
  labels: {{bench: "yes"}}
spec:
  owner: "{owners[i % 2]}"
  source: {{chain: {{subscriptionId: {i + 1}}}}}
  plan: basic
  resources: {{cores: {1 + i % 4}, memoryMiB: {1024 * (1 + i % 4)}, diskGiB: {10 + i % 50}}}
  expiresAt: "2030-01-01T00:00:00Z\"""")
PY

ms() { echo $(( ($2 - $1) / 1000000 )); }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
echo "blockhostd RSS empty: $(( $(rss_kib) / 1024 )) MiB"

t0=$(date +%s%N); "$BIN/bhctl" apply -f "$T/vms.yaml" >/dev/null; t1=$(date +%s%N)
echo "apply $N specs (parse + validate + one durable transaction): $(ms "$t0" "$t1") ms"
t0=$(date +%s%N); "$BIN/bhctl" apply -f "$T/vms.yaml" >/dev/null; t1=$(date +%s%N)
echo "re-apply $N unchanged specs: $(ms "$t0" "$t1") ms"

count=$("$BIN/bhctl" get vms -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')
[ "$count" -eq "$N" ] || { echo "expected $N objects, got $count" >&2; exit 1; }
runs=()
for _ in $(seq 15); do
  t0=$(date +%s%N); "$BIN/bhctl" get vms -o json >/dev/null; t1=$(date +%s%N)
  runs+=("$(ms "$t0" "$t1")")
done
sorted=$(printf '%s\n' "${runs[@]}" | sort -n)
echo "bhctl get vms -o json over $N (whole process, 15 runs): median $(echo "$sorted" | sed -n 8p) ms, min $(echo "$sorted" | head -1) ms, max $(echo "$sorted" | tail -1) ms (goal < 200 ms)"
t0=$(date +%s%N); "$BIN/bhctl" get vms >/dev/null; t1=$(date +%s%N)
echo "bhctl get vms (table) over $N: $(ms "$t0" "$t1") ms"
echo "blockhostd RSS holding $N: $(( $(rss_kib) / 1024 )) MiB (goal < 64 MiB)"
echo "database file: $(( $(stat -c %s "$T/state.redb") / 1024 / 1024 )) MiB"
