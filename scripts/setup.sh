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
  mmdebstrap eatmydata squashfs-tools xorriso mtools grub-common grub-pc-bin grub-efi-amd64-bin  # the installer ISO (iso/installer/build.sh)
  qemu-system-x86 ovmf            # the installer ISO's tests (BIOS and UEFI boots)
  # The guest template image (iso/guest) and its boot test: mmdebstrap from Debian's
  # registry (archive keyring), partitions and file systems without mounting vfat,
  # qemu under TCG with SeaBIOS and OVMF, the cloud-init ISO.
  mmdebstrap debian-archive-keyring eatmydata fdisk e2fsprogs dosfstools mtools
  qemu-system-x86 qemu-utils ovmf xorriso
  debhelper dpkg-dev lintian       # packaging/build-debs.sh (systemd-analyze comes with systemd)
  qemu-system-x86 qemu-utils xorriso iproute2  # real guests: the stand-in's VMs, overlays, cloud-init ISOs, namespaces
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm from Debian only when the machine has none: an image may ship its
# own build, which Debian's npm package conflicts with.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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
