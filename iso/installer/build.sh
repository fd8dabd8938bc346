#!/usr/bin/env bash
# Builds the BlockHost installer ISO, target/iso/blockhost-<version>-amd64.iso,
# from Debian's packages only (mmdebstrap), as root:
#   - the installed system: a prebuilt Debian trixie root (Proxmox VE 9's base)
#     with the host packages (*.deb from --debs), the guest template image
#     (--guest-image) and the first-boot unit, as a squashfs;
#   - the installer environment: a small trixie live system (live-boot) that runs
#     blockhost-installer on the screen and the serial console;
#   - GRUB for BIOS and UEFI, from CD or USB stick (grub-mkrescue, hybrid);
#   - a manifest of every package and version, and the ISO's SHA-256.
# Downloaded packages are kept in target/iso/apt-cache, so a rebuild downloads
# only what changed.
#
#   iso/installer/build.sh [--debs DIR] [--guest-image FILE] [--out DIR]
#                          [--installer-bin FILE] [--mirror URL]
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$REPO/iso/installer
SUITE=trixie
MIRROR=${BLOCKHOST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
OUT=$REPO/target/iso
DEBS=${BLOCKHOST_DEBS:-$REPO/target/debian}
GUEST_IMAGE=${BLOCKHOST_GUEST_IMAGE:-}
INSTALLER_BIN=

while [ $# -gt 0 ]; do
  case $1 in
    --debs) DEBS=$2; shift 2 ;;
    --guest-image) GUEST_IMAGE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --installer-bin) INSTALLER_BIN=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || { echo "build.sh: run as root (mmdebstrap and chroot need it)" >&2; exit 1; }
for t in mmdebstrap eatmydata mksquashfs grub-mkrescue xorriso mformat systemctl sha256sum; do
  command -v "$t" >/dev/null || { echo "build.sh: $t is missing: bash scripts/setup.sh installs it" >&2; exit 1; }
done
for d in /usr/lib/grub/i386-pc /usr/lib/grub/x86_64-efi; do
  [ -d "$d" ] || { echo "build.sh: $d is missing (grub-pc-bin, grub-efi-amd64-bin): bash scripts/setup.sh installs them" >&2; exit 1; }
done

VERSION=$(awk -F'"' '/^\[workspace.package\]/ { p = 1 } p && /^version *=/ { print $2; exit }' "$REPO/Cargo.toml")
[ -n "$VERSION" ] || { echo "build.sh: no version in $REPO/Cargo.toml [workspace.package]" >&2; exit 1; }
NAME=blockhost-$VERSION-amd64
WORK=$OUT/work
CACHE=$OUT/apt-cache/$SUITE
ISO=$OUT/$NAME.iso
mkdir -p "$WORK" "$CACHE"

TOTAL=8
STEP=0
START=$SECONDS
step() {
  STEP=$((STEP + 1))
  printf '[%d/%d] %s (%d s)\n' "$STEP" "$TOTAL" "$*" $((SECONDS - START))
}

# Packages of the installed system. grub-pc for BIOS (and its kernel hooks), the
# EFI modules for UEFI's removable path; ifupdown because Proxmox VE configures
# /etc/network/interfaces; lvm2 and thin-provisioning-tools for the pve/data
# thin pool; curl and gnupg for the Proxmox VE step.
TARGET_PACKAGES=(
  linux-image-amd64 systemd-sysv udev dbus kmod initramfs-tools
  grub-pc grub-efi-amd64-bin efibootmgr
  e2fsprogs dosfstools lvm2 thin-provisioning-tools
  ifupdown isc-dhcp-client iproute2 iputils-ping netbase ca-certificates curl gnupg
  openssh-server locales less vim-tiny zstd
)
# Packages of the installer environment: what partitions, formats and copies.
LIVE_PACKAGES=(
  linux-image-amd64 live-boot systemd-sysv udev kmod busybox
  fdisk e2fsprogs dosfstools lvm2 thin-provisioning-tools squashfs-tools
)

# mmdebstrap with the download cache carried in and out of the chroot.
debstrap() {
  local dir=$1; shift
  rm -rf "$dir"
  # eatmydata: dpkg's fsyncs are pointless in a root that is squashed afterwards.
  mmdebstrap --variant=apt --components=main --quiet \
    --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
    --aptopt='Acquire::Retries "3"' \
    --skip=download/empty --skip=essential/unlink \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="sync-in $CACHE /var/cache/apt/archives/" \
    "$@" \
    --customize-hook="sync-out /var/cache/apt/archives $CACHE" \
    --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
    "$SUITE" "$dir" "$MIRROR"
}

step "Building blockhost-installer"
if [ -z "$INSTALLER_BIN" ]; then
  (cd "$REPO" && cargo build --quiet --release -p blockhost-installer)
  INSTALLER_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/blockhost-installer
fi
[ -x "$INSTALLER_BIN" ] || { echo "build.sh: $INSTALLER_BIN is not an executable" >&2; exit 1; }

step "Installed system: Debian $SUITE with the BlockHost packages (mmdebstrap)"
debs=()
if [ -d "$DEBS" ]; then
  mapfile -t debs < <(find "$DEBS" -maxdepth 1 -name '*.deb' ! -name 'blockhost-guest_*' | sort)
fi
hooks=()
if [ ${#debs[@]} -gt 0 ]; then
  echo "    host packages: ${debs[*]##*/}"
  hooks+=(--customize-hook='mkdir -p "$1"/tmp/blockhost-debs')
  hooks+=(--customize-hook="copy-in ${debs[*]} /tmp/blockhost-debs/")
  hooks+=(--customize-hook='chroot "$1" sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /tmp/blockhost-debs/*.deb"')
  hooks+=(--customize-hook='rm -rf "$1"/tmp/blockhost-debs')
else
  echo "    host packages: none in $DEBS (the installed system will lack blockhostd and the wizard)"
fi
ROOT=$WORK/root
debstrap "$ROOT" --include="$(IFS=,; echo "${TARGET_PACKAGES[*]}")" "${hooks[@]}"

step "Installed system: first boot, guest image, settings"
install -D -m 0755 "$HERE/host/firstboot" "$ROOT/usr/lib/blockhost/firstboot"
install -D -m 0644 "$HERE/host/blockhost-firstboot.service" "$ROOT/usr/lib/systemd/system/blockhost-firstboot.service"
systemctl --root="$ROOT" --quiet enable blockhost-firstboot.service
# The package enables the wizard; here first boot starts it instead, once the
# network is up, so the URL it shows names the address DHCP gave (started at
# boot alongside first boot, it could show none). First boot enables it again.
if [ -e "$ROOT/usr/lib/systemd/system/blockhost-wizard.service" ] || [ -e "$ROOT/lib/systemd/system/blockhost-wizard.service" ]; then
  systemctl --root="$ROOT" --quiet disable blockhost-wizard.service
fi
if [ -n "$GUEST_IMAGE" ]; then
  [ -f "$GUEST_IMAGE" ] || { echo "build.sh: guest image $GUEST_IMAGE does not exist" >&2; exit 1; }
  install -D -m 0644 "$GUEST_IMAGE" "$ROOT/var/lib/blockhost/images/${GUEST_IMAGE##*/}"
  (cd "$ROOT/var/lib/blockhost/images" && sha256sum "${GUEST_IMAGE##*/}" >"${GUEST_IMAGE##*/}.sha256")
  echo "    guest image: ${GUEST_IMAGE##*/}"
else
  echo "    guest image: none given (--guest-image); the wizard will have to build it"
fi
# Made per machine by the installer, never shared by every install.
rm -f "$ROOT"/etc/ssh/ssh_host_*
: >"$ROOT/etc/machine-id"
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/tmp/* "$ROOT"/var/log/*.log
# The localhost host name until the installer writes the real one.
echo blockhost >"$ROOT/etc/hostname"
sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' "$ROOT/etc/locale.gen"
chroot "$ROOT" locale-gen >/dev/null
echo "LANG=en_US.UTF-8" >"$ROOT/etc/default/locale"
printf 'BLOCKHOST_VERSION=%s\nBLOCKHOST_BUILD=%s\n' "$VERSION" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$ROOT/etc/blockhost-release"

step "Installer environment: Debian $SUITE live system (mmdebstrap)"
LIVE=$WORK/live
debstrap "$LIVE" --include="$(IFS=,; echo "${LIVE_PACKAGES[*]}")" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
install -D -m 0755 "$INSTALLER_BIN" "$LIVE/usr/sbin/blockhost-installer"
install -D -m 0644 "$HERE/live/blockhost-installer@.service" "$LIVE/usr/lib/systemd/system/blockhost-installer@.service"
install -D -m 0644 "$HERE/live/lvmlocal.conf" "$LIVE/etc/lvm/lvmlocal.conf"
for tty in tty1 ttyS0; do
  systemctl --root="$LIVE" --quiet enable "blockhost-installer@$tty.service"
done
systemctl --root="$LIVE" --quiet mask getty@tty1.service serial-getty@ttyS0.service
echo blockhost-installer >"$LIVE/etc/hostname"
: >"$LIVE/etc/machine-id"
rm -rf "$LIVE"/var/lib/apt/lists/* "$LIVE"/tmp/*

step "Manifest of every package"
MANIFEST=$OUT/$NAME.manifest
{
  echo "# BlockHost $VERSION installer ISO: every Debian package and its version"
  echo "# Debian $SUITE from $MIRROR"
  echo "[installed-system]"
  dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Package} ${Version} ${Architecture}\n' | sort
  echo "[installer-environment]"
  dpkg-query --admindir="$LIVE/var/lib/dpkg" -W -f='${Package} ${Version} ${Architecture}\n' | sort
  echo "[blockhost]"
  if [ -e "$ROOT/usr/lib/systemd/system/blockhost-wizard.service" ]; then
    echo "wizard blockhost-wizard.service"
  else
    echo "wizard none"
  fi
  if [ -n "$GUEST_IMAGE" ]; then
    echo "[guest-image]"
    cat "$ROOT/var/lib/blockhost/images/${GUEST_IMAGE##*/}.sha256"
  fi
} >"$MANIFEST"

# zstd level 6: a fraction of the default level's time for a few percent more size.
step "Squashing both systems (zstd)"
ISODIR=$WORK/iso
rm -rf "$ISODIR"
mkdir -p "$ISODIR/live" "$ISODIR/blockhost" "$ISODIR/boot/grub"
mksquashfs "$ROOT" "$ISODIR/blockhost/root.squashfs" -comp zstd -Xcompression-level 6 -noappend -quiet -no-progress
mksquashfs "$LIVE" "$ISODIR/live/filesystem.squashfs" -comp zstd -Xcompression-level 6 -noappend -quiet -no-progress -e boot
KVER=$(ls "$LIVE/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -n 1)
cp "$LIVE/boot/vmlinuz-$KVER" "$ISODIR/live/vmlinuz"
cp "$LIVE/boot/initrd.img-$KVER" "$ISODIR/live/initrd.img"
cp "$MANIFEST" "$ISODIR/blockhost/manifest.txt"
sed "s/@VERSION@/$VERSION/g" "$HERE/grub.cfg.in" >"$ISODIR/boot/grub/grub.cfg"

step "Writing the hybrid ISO (BIOS and UEFI, CD and USB)"
grub-mkrescue --quiet -o "$ISO" "$ISODIR" -- -volid "BLOCKHOST_${VERSION//./_}" 2>"$WORK/grub-mkrescue.log" \
  || { cat "$WORK/grub-mkrescue.log" >&2; exit 1; }

step "SHA-256"
(cd "$OUT" && sha256sum "$NAME.iso" >"$NAME.iso.sha256")
printf 'Built %s (%s MiB) in %d s\n  %s\n  %s\n' "$ISO" $(( $(stat -c %s "$ISO") / 1048576 )) $((SECONDS - START)) \
  "$(cat "$OUT/$NAME.iso.sha256")" "manifest: $MANIFEST"
