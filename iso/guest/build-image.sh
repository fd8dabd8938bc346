#!/usr/bin/env bash
# Builds the BlockHost guest template image: Debian from Debian's registry only
# (mmdebstrap; apt verifies every download against the archive keyring), the cloud
# kernel, systemd, cloud-init (NoCloud and ConfigDrive, as Proxmox writes them),
# qemu-guest-agent, openssh-server and the blockhost-guest package; serial console;
# GRUB for SeaBIOS (MBR gap) and OVMF (removable-path EFI binary on the ESP).
# A template is not a machine: no SSH host keys, machine-id, passwords or logs are
# left in it; each clone makes its own on first boot.
#
# Usage (as root): build-image.sh --deb PATH [--deb PATH...] --output DIR
#                  [--cache DIR] [--suite trixie] [--mirror URL] [--size 3G] [--name NAME]
#   --deb     local .deb installed into the image (blockhost-guest; repeatable)
#   --output  directory for NAME.qcow2, NAME.manifest, NAME.sha256, NAME.json
#   --cache   cache kept between builds (downloaded .debs, package lists and the
#             Debian base as base-SUITE-KEY.tar.zst, rebuilt weekly); rebuildable,
#             delete it any time. Default: DIR/../apt-cache
#   --suite   Debian release (default trixie, the base of Proxmox VE 9)
#   --mirror  Debian mirror (default: deb.debian.org with SUITE-updates and the
#             security archive, which mmdebstrap adds for stable releases)
#   --size    virtual disk size (default 3G; Proxmox grows it per plan, cloud-init
#             grows the root partition)
#   --name    image base name (default blockhost-guest-SUITE-amd64)
# Stdout carries only machine-readable lines for callers (bhctl template build, tests):
#   progress N/TOTAL what       a step starts
#   image PATH | manifest PATH | sha256 HEX | seconds N
# Everything else (tool output) goes to stderr.
set -euo pipefail
export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive

here="$(cd "$(dirname "$0")" && pwd)"
debs=() output="" cache="" suite=trixie mirror="" size=3G name=""
while [ $# -gt 0 ]; do
  case "$1" in
    --deb) debs+=("$(realpath "$2")"); shift 2 ;;
    --output) output="$2"; shift 2 ;;
    --cache) cache="$2"; shift 2 ;;
    --suite) suite="$2"; shift 2 ;;
    --mirror) mirror="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    *) echo "build-image: unknown argument $1 (usage at the top of $0)" >&2; exit 2 ;;
  esac
done
log() { echo "build-image: $*" >&2; }
die() { log "$*"; exit 1; }
[ -n "$output" ] || die "--output DIR is required"
[ ${#debs[@]} -gt 0 ] || die "--deb PATH (the blockhost-guest package) is required"
for d in "${debs[@]}"; do [ -f "$d" ] || die "$d does not exist"; done
[ "$(id -u)" = 0 ] || die "needs root (loop devices, mounts, chroot); run it with sudo"
for tool in mmdebstrap sfdisk losetup partx fstrim mkfs.ext4 mkfs.vfat mmd mcopy qemu-img chroot eatmydata sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing: apt-get install mmdebstrap fdisk mount e2fsprogs dosfstools mtools qemu-utils eatmydata"
done
name="${name:-blockhost-guest-$suite-amd64}"
mkdir -p "$output"
output="$(realpath "$output")"
cache="${cache:-$output/../apt-cache}"
mkdir -p "$cache/archives/partial" "$cache/lists/partial"
cache="$(realpath "$cache")"

TOTAL=7
step=0
progress() { step=$((step + 1)); echo "progress $step/$TOTAL $*"; log "[$step/$TOTAL] $*"; }
started=$(date +%s)

work="$(mktemp -d "$output/.work.XXXXXX")"
raw="$work/disk.raw"
mnt="$work/root"
loop=""
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  if [ -n "$loop" ]; then
    partx -d "$loop" 2>/dev/null || true
    losetup -d "$loop" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
mnt_() { mount "$@"; mounted+=("${*: -1}"); }

progress "partitioning a $size disk (MBR: EFI system, root)"
truncate -s "$size" "$raw"
# MBR with the first partition at 1 MiB: GRUB's core image for SeaBIOS goes into
# the gap after the MBR (Debian 13's grub-install does not find a GPT BIOS boot
# partition on loop devices), OVMF boots the ESP (type EF) at the removable-media
# path, and the root file system is last so cloud-init's growpart can extend it to
# the disk size Proxmox gives each clone.
sfdisk --quiet "$raw" >&2 <<'EOF'
label: dos
start=1MiB, size=127MiB, type=ef
type=83, bootable
EOF
loop="$(losetup --show -f -P "$raw")"
partx -u "$loop" 2>/dev/null || true
# No udev here: wait for the kernel to publish the partition nodes.
for _ in $(seq 50); do [ -b "${loop}p2" ] && break; sleep 0.1; done
[ -b "${loop}p2" ] || die "${loop}p2 did not appear (loop partitions need losetup -P)"
root_uuid="$(cat /proc/sys/kernel/random/uuid)"
mkfs.vfat -F 32 -n ESP "${loop}p1" >&2
esp_uuid="$(blkid -s UUID -o value "${loop}p1" 2>/dev/null || true)"
mkfs.ext4 -q -L root -U "$root_uuid" "${loop}p2" >&2
mkdir -p "$mnt"
mnt_ "${loop}p2" "$mnt"

# The Debian base (mmdebstrap of packages.txt) is kept as a tarball in the cache,
# keyed by the suite, the mirror, packages.txt and this step's own text, and rebuilt
# after BASE_MAX_DAYS; every build, warm or cold, then upgrades it from the archive
# and installs the given .debs, so a warm build still gets today's packages.
BASE_MAX_DAYS=7
base_recipe='base-v1 variant=apt components=main eatmydata docs-excluded'
base_key="$(printf '%s\n' "$suite" "${mirror:-default}" "$base_recipe" | cat - "$here/packages.txt" | sha256sum | cut -c1-16)"
base_tar="$cache/base-$suite-$base_key.tar.zst"
if [ -f "$base_tar" ] && [ -n "$(find "$base_tar" -mtime -"$BASE_MAX_DAYS" 2>/dev/null)" ]; then
  progress "unpacking the cached Debian $suite base ($base_tar)"
  tar -C "$mnt" --zstd --xattrs --xattrs-include='*' --numeric-owner -xpf "$base_tar"
else
  progress "installing Debian $suite (mmdebstrap; apt cache $cache)"
  rm -f "$cache"/base-"$suite"-*.tar.zst
  pkgs="$(grep -v '^#' "$here/packages.txt" | tr -s '[:space:]' ',' | sed 's/^,//; s/,$//')"
  # The cache hooks follow mmdebstrap(1)'s example. Package lists are cached too and
  # refreshed in a setup hook (mmdebstrap skips its own update when lists exist), so
  # a warm update only fetches what changed. Every download, cached or not, is
  # checked against the signed Release files.
  mmdebstrap --mode=root --variant=apt --architectures=amd64 --components=main \
    --skip=essential/unlink \
    --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
    --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/ "$1"/var/lib/apt/lists/' \
    --setup-hook="sync-in '$cache/archives' /var/cache/apt/archives/" \
    --setup-hook="sync-in '$cache/lists' /var/lib/apt/lists/" \
    --setup-hook='APT_CONFIG="$MMDEBSTRAP_APT_CONFIG" apt-get update -q' \
    --customize-hook="sync-out /var/cache/apt/archives '$cache/archives'" \
    --customize-hook="sync-out /var/lib/apt/lists '$cache/lists'" \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --include="$pkgs" "$suite" "$mnt" ${mirror:+"$mirror"} >&2
  tar -C "$mnt" --zstd --xattrs --xattrs-include='*' --numeric-owner -cpf "$base_tar.part" .
  mv "$base_tar.part" "$base_tar"
fi

progress "configuring: serial console, cloud-init, network, locale"
for fs in proc sys dev dev/pts; do mkdir -p "$mnt/$fs"; done
mnt_ -t proc proc "$mnt/proc"
mnt_ -t sysfs sysfs "$mnt/sys"
mnt_ --bind /dev "$mnt/dev"
mnt_ --bind /dev/pts "$mnt/dev/pts"
in_root() { chroot "$mnt" "$@"; }

# Today's packages and blockhost-guest, through the same apt cache (bind-mounted)
# and the host's resolver (the image's own resolv.conf is put back afterwards).
mkdir -p "$mnt/var/cache/apt/archives" "$mnt/var/lib/apt/lists"
mnt_ --bind "$cache/archives" "$mnt/var/cache/apt/archives"
mnt_ --bind "$cache/lists" "$mnt/var/lib/apt/lists"
resolv_saved=""
if [ -e "$mnt/etc/resolv.conf" ] || [ -L "$mnt/etc/resolv.conf" ]; then
  mv "$mnt/etc/resolv.conf" "$mnt/etc/resolv.conf.blockhost-build"
  resolv_saved=1
fi
cp -L /etc/resolv.conf "$mnt/etc/resolv.conf"
mkdir -p "$mnt/tmp/blockhost-debs"
cp "${debs[@]}" "$mnt/tmp/blockhost-debs/"
apt_in_root() {
  in_root env DEBIAN_FRONTEND=noninteractive apt-get -q -o Acquire::Languages=none \
    -o DPkg::Options::=--force-unsafe-io -o DPkg::Options::=--force-confold "$@" >&2
}
apt_in_root update
apt_in_root -y upgrade
in_debs=()
for d in "${debs[@]}"; do in_debs+=("/tmp/blockhost-debs/$(basename "$d")"); done
apt_in_root -y install --no-install-recommends "${in_debs[@]}"
rm -rf "$mnt/tmp/blockhost-debs" "$mnt/etc/resolv.conf"
if [ -n "$resolv_saved" ]; then mv "$mnt/etc/resolv.conf.blockhost-build" "$mnt/etc/resolv.conf"; fi
umount "$mnt/var/lib/apt/lists" "$mnt/var/cache/apt/archives"
mounted=("${mounted[@]:0:${#mounted[@]}-2}")

cat > "$mnt/etc/fstab" <<EOF
# Written by BlockHost's image builder.
UUID=$root_uuid / ext4 errors=remount-ro 0 1
${esp_uuid:+UUID=$esp_uuid /boot/efi vfat umask=0077,nofail 0 2}
EOF
mkdir -p "$mnt/boot/efi"
echo localhost > "$mnt/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$mnt/etc/hosts"
# cloud-init's locale module sets en_US.UTF-8; without it generated cloud-init ends in error.
echo "en_US.UTF-8 UTF-8" > "$mnt/etc/locale.gen"
in_root locale-gen >&2
echo 'LANG=en_US.UTF-8' > "$mnt/etc/default/locale"
mkdir -p "$mnt/etc/cloud/cloud.cfg.d"
cat > "$mnt/etc/cloud/cloud.cfg.d/90-blockhost.cfg" <<'EOF'
# BlockHost guest template. Proxmox VE writes its cloud-init drive as NoCloud
# (Linux guests) or ConfigDrive (citype configdrive2); nothing is fetched from a network.
datasource_list: [NoCloud, ConfigDrive, None]
# Each clone makes its own SSH host keys on first boot.
ssh_deletekeys: true
ssh_genkeytypes: [ed25519, ecdsa, rsa]
# Logins are wallet signatures (blockhost-guest); never root, never passwords.
disable_root: true
ssh_pwauth: false
EOF
# cloud-init renders the network for systemd-networkd (part of systemd on Debian 13).
in_root systemctl enable systemd-networkd.service >&2
cat > "$mnt/etc/default/grub.d/50-blockhost.cfg" <<'EOF'
# BlockHost guest: the serial console is the console (Proxmox: serial0 socket, vga serial0).
GRUB_TIMEOUT=1
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF

progress "installing GRUB for SeaBIOS and OVMF"
# No udev: give grub-mkconfig the by-uuid name it looks for, so the kernel line
# says root=UUID=… rather than this build's loop device.
mkdir -p /dev/disk/by-uuid
ln -sf "${loop}p2" "/dev/disk/by-uuid/$root_uuid"
in_root grub-install --target=i386-pc --boot-directory=/boot "$loop" >&2
in_root update-grub >&2
rm -f "/dev/disk/by-uuid/$root_uuid"
grep -q "root=UUID=$root_uuid" "$mnt/boot/grub/grub.cfg" || die "grub.cfg does not boot root=UUID=$root_uuid"
# OVMF: a standalone GRUB at the removable-media path (no NVRAM entry needed), whose
# early config finds the root file system and reads the same grub.cfg (the
# partition table and file system modules must be loaded before search can see it).
cat > "$mnt/tmp/early-grub.cfg" <<EOF
insmod part_msdos
insmod ext2
search --no-floppy --fs-uuid --set=root $root_uuid
configfile (\$root)/boot/grub/grub.cfg
EOF
in_root grub-mkstandalone -O x86_64-efi -o /tmp/BOOTX64.EFI "boot/grub/grub.cfg=/tmp/early-grub.cfg" >&2
mmd -i "${loop}p1" ::/EFI ::/EFI/BOOT
mcopy -i "${loop}p1" "$mnt/tmp/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
rm -f "$mnt/tmp/BOOTX64.EFI" "$mnt/tmp/early-grub.cfg"

progress "removing machine identity (host keys, machine-id, logs) and writing the manifest"
in_root dpkg-query -W -f='${binary:Package}\t${Version}\n' > "$work/manifest"
grep -q '^blockhost-guest	' "$work/manifest" || die "blockhost-guest is not installed in the image"
rm -f "$mnt"/etc/ssh/ssh_host_*
: > "$mnt/etc/machine-id"
rm -f "$mnt/var/lib/dbus/machine-id" "$mnt/var/lib/systemd/random-seed" "$mnt/var/lib/systemd/credential.secret"
rm -rf "$mnt"/var/lib/cloud/* "$mnt"/tmp/* "$mnt"/var/tmp/* "$mnt"/root/.bash_history "$mnt"/var/lib/blockhost-signer
find "$mnt/var/log" -type f -delete
rm -rf "$mnt"/var/cache/apt/*.bin "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/debconf/*-old
mkdir -p "$mnt/var/lib/apt/lists/partial"
# No account may have a password: every shadow entry is locked (* or !).
if in_root awk -F: '$2 !~ /^[!*]/ { print $1; bad=1 } END { exit !bad }' /etc/shadow >&2; then
  die "accounts above have passwords in the image"
fi
# The .debs apt downloaded into the image and deleted still fill blocks of the raw
# disk, which the qcow2 would carry (a cold build's image was 330 MiB, a warm
# one's 194): discard the free blocks, so the loop device punches holes in the
# file and qemu-img copies only what the file system uses.
sync
fstrim "$mnt" >&2 || log "fstrim failed: the image keeps the free blocks' old data (larger, not wrong)"
for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[$i]}"; done
mounted=()
# The device can stay busy for a moment after the last umount (no udev to wait on).
for try in 1 2 3 4 5 6 7 8 9 10; do
  rc=0
  e2fsck -fy "${loop}p2" >&2 || rc=$?
  [ "$rc" -le 1 ] && break
  [ "$rc" -eq 8 ] && [ "$try" -lt 10 ] && { sleep 1; continue; }
  die "e2fsck of the root file system failed (exit $rc)"
done
partx -d "$loop" 2>/dev/null || true
losetup -d "$loop"
loop=""

progress "converting to a compressed qcow2"
qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd "$raw" "$work/$name.qcow2"

progress "recording the image's SHA-256"
sum="$(sha256sum "$work/$name.qcow2" | cut -d' ' -f1)"
mv "$work/manifest" "$output/$name.manifest"
mv "$work/$name.qcow2" "$output/$name.qcow2"
echo "$sum  $name.qcow2" > "$output/$name.sha256"
seconds=$(($(date +%s) - started))
cat > "$output/$name.json" <<EOF
{"name": "$name", "suite": "$suite", "mirror": "${mirror:-deb.debian.org (+updates, +security)}", "size": "$size", "sha256": "$sum", "packages": $(wc -l < "$output/$name.manifest"), "buildSeconds": $seconds, "rootUuid": "$root_uuid"}
EOF
log "image $output/$name.qcow2 sha256 $sum ($seconds s)"
echo "image $output/$name.qcow2"
echo "manifest $output/$name.manifest"
echo "sha256 $sum"
echo "seconds $seconds"
