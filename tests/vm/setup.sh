#!/bin/bash
# One-time setup of the VM tier (idempotent; everything cached under target/vm/).
#  - installs qemu-system-x86 (10, from bookworm-backports through a private apt config
#    that leaves the system's sources untouched) when qemu-system-x86_64 is missing;
#  - fetches with `apt-get download` Debian's linux-image-6.12.*-amd64 (bookworm-security;
#    6.1 lacks ublk) and the userland that goes into the initramfs, extracts them with
#    `dpkg -x` and extracts an uncompressed vmlinux (PVH boot, no decompression under TCG).
# env: VMVAULT_VM_DIR (cache dir), VMVAULT_VM_KPKG (kernel package, default: newest 6.12).
set -euo pipefail
# shellcheck source=tests/vm/common.sh
. "$(dirname "$0")/common.sh"
T0=$(now)
# Userland packages for the initramfs (their libs are resolved with ldd at build time;
# a lib not listed here falls back to the host's bookworm copy).
PKGS=(busybox-static cryptsetup cryptsetup-bin libcryptsetup12 libpopt0 libargon2-1 libjson-c5
      libssl3 libuuid1 libblkid1 dmsetup libdevmapper1.02.1 libselinux1 libpcre2-8-0 libudev1
      udev libsystemd-shared libkmod2 libacl1 libcap2 libzstd1 liblz4-1 liblzma5 libgcrypt20
      libgpg-error0 libseccomp2 libcrypt1 libpam0g libaudit1 libcap-ng0 libip4tc2 libmount1
      libapparmor1 e2fsprogs libext2fs2 libcom-err2 libss2 kmod cpio fuse3 libfuse3-3
      util-linux)
mkdir -p "$VM" "$OUT" "$VM/debs" "$APTD/lists/partial" "$APTD/cache/archives/partial" "$APTD/etc"

apt_update() {
  [ -f "$APTD/updated" ] && return 0
  cp /etc/apt/sources.list.d/debian.sources "$APTD/etc/" 2>/dev/null \
    || cp /etc/apt/sources.list "$APTD/etc/debian.list" \
    || die "no /etc/apt/sources.list.d/debian.sources nor /etc/apt/sources.list"
  local uris
  uris=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  uris=${uris:-http://deb.debian.org/debian}
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uris" > "$APTD/etc/bpo.sources"
  log "apt-get update (private lists)"
  apt-get "${APTO[@]}" update -qq || die "apt-get update failed (network/mirror?)"
  touch "$APTD/updated"
}

# qemu-system-x86 10 from bookworm-backports (7.2's TCG runs aesenc ~4.6x slower and its
# install would downgrade the preinstalled qemu-utils 10).
if ! command -v qemu-system-x86_64 >/dev/null; then
  [ "$(id -u)" = 0 ] || die "qemu-system-x86_64 is missing and installing it needs root"
  apt_update
  log "installing qemu-system-x86 from bookworm-backports"
  DEBIAN_FRONTEND=noninteractive apt-get "${APTO[@]}" install -y -qq --no-install-recommends \
    -t bookworm-backports qemu-system-x86 >/dev/null || die "installing qemu-system-x86 failed"
fi

# kernel package: pinned by VMVAULT_VM_KPKG, else the newest 6.12 (remembered in kpkg)
if [ -n "${VMVAULT_VM_KPKG:-}" ]; then KPKG=$VMVAULT_VM_KPKG
elif [ -s "$VM/kpkg" ]; then KPKG=$(cat "$VM/kpkg")
else
  apt_update
  KPKG=$(apt-cache "${APTO[@]}" pkgnames linux-image-6.12. | grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' \
         | sort -V | tail -1)
  [ -n "$KPKG" ] || die "no linux-image-6.12.*+deb12-amd64 in the apt lists (bookworm-security missing?)"
fi
echo "$KPKG" > "$VM/kpkg"

# downloads (skipped when the .deb is cached)
cd "$VM/debs"
for p in "$KPKG" "${PKGS[@]}"; do
  compgen -G "${p}_*.deb" >/dev/null && continue
  apt_update
  log "apt-get download $p"
  apt-get "${APTO[@]}" download -qq "$p" 2>&1 | grep -v unsandboxed >&2 || true
  compgen -G "${p}_*.deb" >/dev/null || die "apt-get download $p failed"
done

# extraction (stamp files make it idempotent)
if [ ! -f "$KROOT/.done-$KPKG" ]; then
  log "extracting $KPKG"
  rm -rf "$KROOT"; mkdir -p "$KROOT"
  dpkg -x "$VM/debs/${KPKG}"_*.deb "$KROOT"
  touch "$KROOT/.done-$KPKG"
fi
stamp=$(printf '%s\n' "${PKGS[@]}" | md5sum | cut -c1-12)
if [ ! -f "$ROOT/.done-$stamp" ]; then
  log "extracting userland debs"
  rm -rf "$ROOT"; mkdir -p "$ROOT"
  for p in "${PKGS[@]}"; do dpkg -x "$(compgen -G "$VM/debs/${p}_*.deb" | head -1)" "$ROOT"; done
  for t in depmod modprobe modinfo; do ln -sf ../bin/kmod "$ROOT/sbin/$t"; done
  touch "$ROOT/.done-$stamp"
fi

# uncompressed vmlinux out of the bzImage (xz or zstd payload)
KVER=$(ls "$KROOT/lib/modules")
echo "$KVER" > "$VM/kver"
if [ ! -s "$OUT/vmlinux-$KVER" ]; then
  log "extracting vmlinux"
  BZ=$KROOT/boot/vmlinuz-$KVER
  ok=
  for magic in '\xfd7zXZ\x00:xz' '\x28\xb5\x2f\xfd:zstd'; do
    while read -r off; do
      tail -c +$((off + 1)) "$BZ" | "${magic#*:}" -dcq > "$OUT/vmlinux.tmp" 2>/dev/null || true
      if [ "$(head -c 4 "$OUT/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then ok=1; break 2; fi
    done < <(LC_ALL=C grep -obUaP "${magic%:*}" "$BZ" | cut -d: -f1)
  done
  [ -n "$ok" ] || die "no ELF payload found in $BZ"
  mv "$OUT/vmlinux.tmp" "$OUT/vmlinux-$KVER"
fi
log "setup done in $(el "$T0" "$(now)") s (kernel $KVER, $(qemu-system-x86_64 --version | head -1))"
