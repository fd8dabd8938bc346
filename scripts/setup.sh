#!/usr/bin/env bash
# Installs everything BlockHost's demo and tests need on a fresh Debian machine:
# Debian packages, the pinned npm tools (package-lock.json) and the pinned Python
# tools (in .venv). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  openssh-server openssh-client   # wallet-login end-to-end tests (sshd on loopback)
  pamtester libpam-wrapper libpam0g-dev  # PAM module unit tests and build
  chromium                        # browser tests (driven by playwright-core)
  sshpass expect                  # scripted keyboard-interactive SSH clients
  jq curl ca-certificates
  iproute2 nftables               # root agent namespace tests (ip netns, veth, nft)
  python3 python3-venv            # the venv holding fakepve; bench and test helpers
  # The installer ISO (iso/installer/build.sh) and the guest template image
  # (iso/guest): mmdebstrap from Debian's registry (archive keyring), partitions and
  # file systems without mounting vfat, GRUB for BIOS and UEFI, the ISO and
  # cloud-init drives.
  mmdebstrap debian-archive-keyring eatmydata squashfs-tools xorriso mtools fdisk e2fsprogs dosfstools
  grub-common grub-pc-bin grub-efi-amd64-bin
  # qemu under TCG with SeaBIOS and OVMF: the installer's and the image's boot tests,
  # the real-guest stand-in's VMs and their copy-on-write overlays.
  qemu-system-x86 qemu-utils ovmf
  debhelper dpkg-dev lintian       # packaging/build-debs.sh (systemd-analyze comes with systemd)
)
find_missing() {
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # Node.js and npm from Debian only when the machine has none: an image may ship its
  # own build, which Debian's npm package conflicts with.
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
find_missing
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # An install can remove a package that was there: a machine with a newer
  # qemu-utils from backports loses it when Debian's qemu-system-x86 comes in.
  # Ask again, once, for whatever is missing now.
  find_missing
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages removed by the first install: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    find_missing
    [ ${#missing[@]} -eq 0 ] || { echo "setup: still missing after installing: ${missing[*]}" >&2; exit 1; }
  fi
fi

# npm tools, exactly as locked.
if [ ! -f node_modules/.blockhost-installed ] || [ package-lock.json -nt node_modules/.blockhost-installed ]; then
  echo "setup: installing npm tools (package-lock.json)"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
  touch node_modules/.blockhost-installed
fi

# Python tools in a private venv (fakepve, the Proxmox VE stand-in).
PY_REQ=scripts/requirements.txt
if [ ! -f .venv/.blockhost-installed ] || [ "$PY_REQ" -nt .venv/.blockhost-installed ]; then
  echo "setup: installing Python tools ($PY_REQ)"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r "$PY_REQ"
  touch .venv/.blockhost-installed
fi
