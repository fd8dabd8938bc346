#!/usr/bin/env bash
# Runs every test of BlockHost on this machine, installing what they need first.
#   scripts/test.sh            everything
#   scripts/test.sh --quick    Rust unit and integration tests only (no lint)
# Exit status is non-zero if anything fails. The last line is a summary:
# "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1

bash scripts/setup.sh || { echo "setup failed"; exit 1; }
# shellcheck source=scripts/env.sh
source scripts/env.sh
# Tests that need anvil, node, fakepve, sshd or chromium fail instead of skipping.
export BLOCKHOST_REQUIRE_TOOLS=1

LOG=$(mktemp); trap 'rm -f "$LOG"' EXIT
failed_steps=()
step() {
  local name=$1; shift
  echo "==> $name"
  if ! "$@" 2>&1 | tee -a "$LOG"; then failed_steps+=("$name"); fi
}

if [ "$QUICK" -eq 0 ]; then
  step "cargo fmt --check" cargo fmt --all -- --check
  step "cargo clippy" cargo clippy --workspace --all-targets --all-features -- -D warnings
fi
# The PAM, signing-page, chain and Proxmox end-to-end suites are cargo tests too:
# they start sshd, chromium, anvil and fakepve themselves.
step "cargo test (workspace)" cargo test --workspace --all-features --no-fail-fast
# The VM suites boot real guests under TCG (minutes each), in this order
# (`--workspace`, so they reuse the build above instead of resolving features per
# package and compiling everything again): the guest template's boot test builds
# (or finds in target/guest-image) the image the real-guest end-to-end tests then
# boot; the installer ISO, built with that image and the host packages, installs
# to a blank disk and first-boots to the wizard (BIOS). They run by default;
# BLOCKHOST_VM_TESTS=0 leaves them out (a quick local run). The long variant, the
# same install under UEFI (4-8 min more, beside the BIOS one), runs with
# BLOCKHOST_ISO_UEFI=1.
if [ "${BLOCKHOST_VM_TESTS:-1}" = "1" ] && [ "$QUICK" -eq 0 ]; then
  step "VM suite: guest image boot" \
    cargo test --workspace --all-features --test guest_image -- --ignored
  step "VM suite: real guests end to end" \
    cargo test --workspace --all-features --test e2e_guests -- --ignored --test-threads 1
  # The ISO carries the host packages (blockhostd, bhctl, the wizard): made from
  # the binaries the workspace test above built.
  step "VM suite: host packages for the ISO" \
    bash packaging/build-debs.sh --profile dev --no-build
  # --nocapture: the log keeps the test's `bench:` figures (BENCHMARKS.md).
  iso_tests=(iso_installs_bios)
  [ "${BLOCKHOST_ISO_UEFI:-0}" = "1" ] && iso_tests=()
  step "VM suite: installer ISO" \
    cargo test --workspace --all-features --test iso -- --ignored --nocapture "${iso_tests[@]}"
fi
if [ "$QUICK" -eq 0 ] && [ -x contracts/test.sh ]; then
  step "contracts (forge + freshness + selectors)" contracts/test.sh
fi

# Sum every runner's closing lines: cargo ("test result: ok. N passed; M failed")
# and forge ("N tests passed, M failed").
read -r passed failed < <(awk '
  /test result: / { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
  /tests passed, [0-9]+ failed/ { for (i = 1; i <= NF; i++) { if ($i == "passed,") p += $(i-2); if ($i ~ /^failed/) f += $(i-1) } }
  END { print p + 0, f + 0 }' "$LOG")
if [ ${#failed_steps[@]} -gt 0 ]; then
  echo "FAILED steps: ${failed_steps[*]}"
  [ "${failed:-0}" -eq 0 ] && failed=${#failed_steps[@]}
fi
echo "${passed:-0} passed, ${failed:-0} failed"
[ ${#failed_steps[@]} -eq 0 ]
