#!/usr/bin/env bash
# Builds BlockHost's Debian packages with debhelper, from binaries cargo built:
#   blockhost        the host (Proxmox node): blockhostd, bhctl, the setup wizard
#                    (blockhost-wizard), units, config, image builder
#   blockhost-guest  inside VMs: pam_blockhost.so, blockhost-signer, blockhost-login, sshd drop-ins
# then checks them: lintian must report no error, and each system unit must score an
# exposure of at most 2.0 in `systemd-analyze security --offline=true` (the wizard's
# at most 3.0: see unit_limit below).
#
# Usage: packaging/build-debs.sh [--profile release|dev|NAME] [--no-build] [--bin-dir DIR]
#                                [--pam-module PATH] [--out DIR] [--guest-deb PATH]
#                                [--no-check] [PACKAGE...]
#   --profile     cargo profile to build (default release)
#   --no-build    use binaries already built (by cargo test, for example)
#   --bin-dir     where the binaries are (default: $CARGO_TARGET_DIR/<profile dir>)
#   --pam-module  the PAM module's cdylib (default: <bin-dir>/deps/libpam_blockhost.so,
#                 the copy cargo refreshes for dependants, else <bin-dir>/libpam_blockhost.so)
#   --out         output directory (default: $CARGO_TARGET_DIR/debian)
#   --guest-deb   the blockhost-guest .deb the host package ships for `bhctl template build`
#                 (default: the one this run builds; without any, the host package
#                 carries no guest package and `bhctl template build` needs --guest-deb)
#   PACKAGE       blockhost and/or blockhost-guest (default: both, guest first)
# Prints the paths of the built .deb files on stdout, one a line; logs go to stderr.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
profile=release build=1 bin_dir="" pam_module="" out="" guest_deb="" check=1
packages=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --pam-module) pam_module="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --guest-deb) guest_deb="$2"; shift 2 ;;
    --no-check) check=0; shift ;;
    blockhost|blockhost-guest) packages+=("$1"); shift ;;
    *) echo "build-debs: unknown argument $1 (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done
[ ${#packages[@]} -gt 0 ] || packages=(blockhost-guest blockhost)
case "$profile" in dev|debug) profile_dir=debug ;; *) profile_dir="$profile" ;; esac
bin_dir="${bin_dir:-$target/$profile_dir}"
out="${out:-$target/debian}"
log() { echo "build-debs: $*" >&2; }

for tool in dpkg-buildpackage dh lintian systemd-analyze; do
  command -v "$tool" >/dev/null || { log "$tool is missing: apt-get install debhelper dpkg-dev lintian systemd (scripts/setup.sh)"; exit 1; }
done

# One version for everything: the workspace's.
version="$(awk '/^\[workspace.package\]/{w=1;next} /^\[/{w=0} w && $1=="version"{gsub(/"/,"",$3); print $3; exit}' "$root/Cargo.toml")"
[ -n "$version" ] || { log "no version in [workspace.package] of $root/Cargo.toml"; exit 1; }
# Reproducible timestamps: the last commit's date (or now, outside git).
SOURCE_DATE_EPOCH="$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)"
export SOURCE_DATE_EPOCH
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"

if [ "$build" = 1 ]; then
  wanted=()
  for p in "${packages[@]}"; do
    case "$p" in
      blockhost) wanted+=(-p blockhost-controller --bin blockhostd -p bhctl --bin bhctl -p blockhost-wizard --bin blockhost-wizard) ;;
      blockhost-guest) wanted+=(-p blockhost-pam -p blockhost-login --bin blockhost-signer --bin blockhost-login --lib) ;;
    esac
  done
  log "cargo build --profile $profile ${wanted[*]}"
  (cd "$root" && cargo build --locked --profile "$profile" "${wanted[@]}" >&2)
fi

need() { [ -f "$1" ] || { log "$1 is missing: build it first (cargo build --profile $profile) or drop --no-build"; exit 1; }; }

mkdir -p "$out"
work="$out/work"
built=()

changelog() { # $1 = source package name
  cat <<EOF
$1 ($version) unstable; urgency=medium

  * Built from the BlockHost workspace, version $version (commit $commit).

 -- BlockHost maintainers <maintainers@example.invalid>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")
EOF
}

build_one() { # $1 = package; the staged/ files must be in place
  local pkg="$1" dir="$work/$1"
  changelog "$pkg" > "$dir/debian/changelog"
  log "dpkg-buildpackage $pkg $version"
  # -d: the build dependencies are cargo's business, already done; noddebs: the
  # debug symbols stay in cargo's target directory.
  (cd "$dir" && DEB_BUILD_OPTIONS="noddebs" dpkg-buildpackage -b -us -uc -d >"$work/$pkg.build.log" 2>&1) || {
    tail -40 "$work/$pkg.build.log" >&2
    log "dpkg-buildpackage $pkg failed; full log: $work/$pkg.build.log"
    exit 1
  }
  local deb="$work/${pkg}_${version}_amd64.deb"
  need "$deb"
  mv "$deb" "$out/"
  built+=("$out/${pkg}_${version}_amd64.deb")
}

stage() { # $1 = package: a fresh copy of its debian/ directory and a staged/ directory
  rm -rf "${work:?}/$1"
  mkdir -p "$work/$1/staged"
  cp -a "$here/$1/debian" "$work/$1/"
}

for pkg in "${packages[@]}"; do
  stage "$pkg"
  s="$work/$pkg/staged"
  case "$pkg" in
    blockhost-guest)
      if [ -z "$pam_module" ]; then
        pam_module="$bin_dir/deps/libpam_blockhost.so"
        [ -f "$pam_module" ] || pam_module="$bin_dir/libpam_blockhost.so"
      fi
      for f in "$pam_module" "$bin_dir/blockhost-signer" "$bin_dir/blockhost-login"; do need "$f"; done
      cp "$pam_module" "$s/libpam_blockhost.so"
      cp "$bin_dir/blockhost-signer" "$bin_dir/blockhost-login" "$s/"
      cp "$root/pam/packaging/blockhost-signer.service" "$s/"
      cp "$root/pam/packaging/sshd_config.d-50-blockhost.conf" "$s/"
      cp "$here/blockhost-guest/blockhost-sshd.pam" "$here/blockhost-guest/sshd_config.d-49-blockhost-pam.conf" "$s/"
      build_one "$pkg"
      [ -n "$guest_deb" ] || guest_deb="$out/${pkg}_${version}_amd64.deb"
      ;;
    blockhost)
      for f in "$bin_dir/blockhostd" "$bin_dir/bhctl" "$bin_dir/blockhost-wizard"; do need "$f"; done
      cp "$bin_dir/blockhostd" "$bin_dir/bhctl" "$bin_dir/blockhost-wizard" "$s/"
      mkdir -p "$s/completions" "$s/man"
      "$bin_dir/bhctl" completion bash > "$s/completions/bhctl"
      "$bin_dir/bhctl" completion zsh > "$s/completions/_bhctl"
      "$bin_dir/bhctl" completion fish > "$s/completions/bhctl.fish"
      "$bin_dir/bhctl" generate-man "$s/man"
      "$bin_dir/blockhostd" --generate-man "$s/man"
      "$bin_dir/blockhost-wizard" generate-man "$s/man"
      cp "$root/crd-schemas/schemas/daemon-config.json" "$s/"
      cp "$here/blockhost/blockhostd.service" "$here/blockhost/blockhost.yaml" "$s/"
      cp "$root/wizard/packaging/blockhost-wizard.service" "$s/"
      mkdir -p "$s/guest-image"
      cp "$root/iso/guest/build-image.sh" "$root/iso/guest/packages.txt" "$s/guest-image/"
      if [ -n "$guest_deb" ]; then
        need "$guest_deb"
        cp "$guest_deb" "$s/guest-image/"
      else
        log "no blockhost-guest .deb given: the host package will not carry one"
      fi
      build_one "$pkg"
      ;;
  esac
done

# The highest exposure each unit may score, times ten (systemd-analyze's
# --threshold). 2.0 for all but the wizard: it runs as root, because finalization
# writes /etc/blockhost, hands the key files to user blockhost (CAP_CHOWN,
# CAP_FOWNER, CAP_DAC_OVERRIDE), serves HTTPS on port 443 to the LAN and starts
# blockhostd through systemctl; those alone cost about 1.9, and it scores 2.7
# (systemd 252; AF_NETLINK, to list its addresses, adds 0.1). It runs only until the host is set up, then disables itself.
unit_limit() {
  case "$1" in
    blockhost-wizard.service) echo 30 ;;
    *) echo 20 ;;
  esac
}

if [ "$check" = 1 ]; then
  # Errors fail the build; warnings are shown for the record.
  log "lintian ${built[*]##*/}"
  lintian --fail-on error --no-tag-display-limit "${built[@]}" >&2 || {
    log "lintian reported errors (above)"
    exit 1
  }
  for pkg in "${packages[@]}"; do
    # /lib on Debian 12's debhelper, /usr/lib on 13's.
    for unit in "$work/$pkg/debian/$pkg"/{,usr/}lib/systemd/system/*.service; do
      [ -f "$unit" ] || continue
      # --threshold=N: exit 1 above an exposure of N/10.
      limit="$(unit_limit "${unit##*/}")"
      score="$(systemd-analyze security --offline=true --threshold="$limit" "$unit" 2>&1 | tail -1)" || {
        systemd-analyze security --offline=true "$unit" >&2 || true
        log "${unit##*/}: exposure above $((limit / 10)).$((limit % 10)): $score"
        exit 1
      }
      log "${unit##*/}: $score"
    done
  done
fi
printf '%s\n' "${built[@]}"
