#!/bin/bash
# The boot suites' Debian root file system (issue 13), built in two cached stages under
# target/vm/boot/ (VMVAULT_VM_DIR/boot):
#  1. base-HASH/: `mmdebstrap --variant=minbase` of bookworm with systemd as PID 1, udev,
#     initramfs-tools, busybox, e2fsprogs, util-linux, kmod, zstd, and the VM tier's kernel
#     (target/vm/debs/linux-image-6.12*.deb from tests/vm/setup.sh, installed with dpkg -i
#     and INITRD=No; modules nobody boots with here are pruned). HASH covers this script and
#     the package list: built once (~1-3 min), reused by every later run.
#  2. rootfs/: a copy of the base with the project's package (`bash .ci/build-deb` ->
#     target/debian/vmvault_*.deb) installed with dpkg -i, the test configuration
#     (tests/vm/boot/rootfs/: vaulttab, fstab, key files, the in-VM check service) and the
#     REAL `update-initramfs -u -k KVER` run in the chroot (/proc, /sys, /dev bound).
#     Skipped when neither the deb nor tests/vm/boot/ changed (stamp .done-HASH).
# Then stage 3 turns rootfs/ into the LUKS2 disk images (and keeps the root's ext4 image as
# plain-root.img, the unencrypted root of run-boot.py's plain-root scenario).
# env: VMVAULT_VM_DIR, VMVAULT_BOOT_DEB (a vmvault .deb; default: newest target/debian/vmvault_*.deb,
#      built with .ci/build-deb unless VMVAULT_VM_NO_BUILD=1).
set -euo pipefail
BOOT_SRC=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/vm/common.sh
. "$BOOT_SRC/../common.sh"
T0=$(now)
B=$VM/boot
mkdir -p "$B"
[ "$(id -u)" = 0 ] || die "building the boot root file system needs root (mmdebstrap, chroot, dpkg)"
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (apt-get install mmdebstrap; .ci/setup installs it)"
KVER=$(cat "$VM/kver" 2>/dev/null) || die "run tests/vm/setup.sh first (kernel)"
KPKG=$(cat "$VM/kpkg")
KDEB=$(compgen -G "$VM/debs/${KPKG}_*.deb" | head -1) || die "$KPKG .deb missing: run tests/vm/setup.sh"

# Packages of the base system (the kernel comes from KDEB).
PKGS=(systemd systemd-sysv udev initramfs-tools kmod e2fsprogs util-linux busybox zstd linux-base
      procps)
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=$(awk '/^URIs:/{print $2}' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -m1 security || true)
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}
# Kernel modules nobody needs in these boots (saves ~300 MB of image and mkfs/dd time).
PRUNE=(drivers/gpu drivers/net drivers/media drivers/infiniband drivers/staging drivers/iio
       drivers/bluetooth drivers/usb drivers/hid drivers/input drivers/isdn drivers/scsi
       drivers/mtd drivers/video drivers/platform drivers/hwmon drivers/thunderbolt
       sound net/wireless net/mac80211 net/bluetooth net/netfilter net/ipv4 net/ipv6 net/sched)

# The base's cache key: what goes into it (bump BASE_REV when the mmdebstrap call changes).
BASE_REV=1
BKEY=$(printf '%s\n' "$BASE_REV" "${PKGS[@]}" "$KPKG" "$MIRROR" "${PRUNE[@]}" | md5sum | cut -c1-12)
BASE=$B/base-$BKEY
if [ ! -f "$BASE/.done" ]; then
  for old in "$B"/base-*; do [ -e "$old" ] && [ "$old" != "$BASE" ] && rm -rf "$old"; done
  rm -rf "$BASE"
  log "mmdebstrap --variant=minbase bookworm ($MIRROR) -> $BASE"
  t=$(now)
  inc=$(IFS=,; echo "${PKGS[*]}")
  mmdebstrap --variant=minbase --mode=root --include="$inc" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="mkdir -p \"\$1/etc/initramfs-tools/conf.d\"; printf 'MODULES=list\nCOMPRESS=zstd\n' > \"\$1/etc/initramfs-tools/conf.d/vmvault-tests.conf\"; printf 'virtio_pci\nvirtio_blk\next4\n' >> \"\$1/etc/initramfs-tools/modules\"" \
    --customize-hook="cp '$KDEB' \"\$1/tmp/kernel.deb\" && chroot \"\$1\" env INITRD=No dpkg -i /tmp/kernel.deb && rm \"\$1/tmp/kernel.deb\"" \
    --customize-hook="cd \"\$1/lib/modules/$KVER/kernel\" && rm -rf ${PRUNE[*]} && chroot \"\$1\" depmod $KVER" \
    --customize-hook="rm -f \"\$1\"/var/cache/apt/*.bin; rm -rf \"\$1\"/var/lib/apt/lists/*" \
    bookworm "$BASE" \
    "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" "deb $SECURITY bookworm-security main" \
    >"$B/mmdebstrap.log" 2>&1 || die "mmdebstrap failed: $(tail -20 "$B/mmdebstrap.log")"
  [ -d "$BASE/lib/modules/$KVER" ] || die "the kernel $KVER did not install into the base"
  touch "$BASE/.done"
  log "base built in $(el "$t" "$(now)") s ($(du -sh --exclude=proc "$BASE" | cut -f1))"
fi
echo "$BASE" > "$B/base"

# --- stage 2: our package, the test configuration, the real update-initramfs ----------------
TGT=${CARGO_TARGET_DIR:-$REPO/target}
case $TGT in /*) ;; *) TGT=$REPO/$TGT;; esac
DEB=${VMVAULT_BOOT_DEB:-}
if [ -z "$DEB" ]; then
  if [ "${VMVAULT_VM_NO_BUILD:-0}" != 1 ]; then
    [ -f "$REPO/.ci/build-deb" ] || die ".ci/build-deb is missing (the Debian package of issue 13)"
    log "bash .ci/build-deb"
    (cd "$REPO" && bash .ci/build-deb >&2) || die ".ci/build-deb failed"
  fi
  DEB=$(ls -t "$TGT"/debian/vmvault_*.deb 2>/dev/null | head -1) \
    || die "no $TGT/debian/vmvault_*.deb (run bash .ci/build-deb)"
fi
[ -f "$DEB" ] || die "no vmvault .deb ($DEB)"
RKEY=$( { echo "$BKEY"; sha256sum "$DEB"; cd "$BOOT_SRC" && find . -type f | LC_ALL=C sort | xargs sha256sum; } \
        | md5sum | cut -c1-12)
R=$B/rootfs
D=$B/disks
if [ -f "$B/.done-$RKEY" ] && [ -f "$B/boot.json" ]; then
  log "root file system and disks up to date ($(basename "$DEB")); build-rootfs done in $(el "$T0" "$(now)") s"
  exit 0
fi
rm -f "$B"/.done-*
MNTS=()
cleanup() {
  local i; for ((i=${#MNTS[@]}-1; i>=0; i--)); do umount -l "${MNTS[$i]}" 2>/dev/null || true; done
  [ -n "${HOSTPID:-}" ] && kill "$HOSTPID" 2>/dev/null
  [ -n "${HOST_RUN_DIR:-}" ] && { sleep 0.5; rm -rf "$HOST_RUN_DIR"; }
  true
}
trap cleanup EXIT
t=$(now)
{ findmnt -rn -o TARGET | grep "^$R/" || true; } | sort -r | while read -r m; do umount -l "$m"; done
rm -rf --one-file-system "$R"; cp -a "$BASE" "$R"; rm -f "$R/.done"
for m in dev proc sys; do mount --rbind "/$m" "$R/$m"; MNTS+=("$R/$m"); done
cp "$DEB" "$R/tmp/vmvault.deb"
log "dpkg -i $(basename "$DEB") in the root file system"
chroot "$R" dpkg -i /tmp/vmvault.deb > "$B/dpkg.log" 2>&1 || die "dpkg -i failed: $(tail -20 "$B/dpkg.log")"
rm "$R/tmp/vmvault.deb"

# test configuration: fixed LUKS UUIDs, key files, the token of "a file written earlier"
ROOT_UUID=13b00700-0000-4000-8000-000000000001 DATA1_UUID=13b00700-0000-4000-8000-000000000002
DATA2_UUID=13b00700-0000-4000-8000-000000000003 HOT_UUID=13b00700-0000-4000-8000-000000000004
GHOST_UUID=13b00700-0000-4000-8000-000000000005 NOKEY_UUID=13b00700-0000-4000-8000-000000000006
ROOT_PASS=vmvault-root-13 DATA2_PASS=vmvault-data2-13
TOKEN=written-$(date -u +%Y%m%dT%H%M%S)-$RANDOM
cp -a "$BOOT_SRC/rootfs/." "$R/"
sed -e "s/@ROOT_UUID@/$ROOT_UUID/" -e "s/@DATA1_UUID@/$DATA1_UUID/" -e "s/@DATA2_UUID@/$DATA2_UUID/" \
    -e "s/@HOT_UUID@/$HOT_UUID/" -e "s/@GHOST_UUID@/$GHOST_UUID/" -e "s/@NOKEY_UUID@/$NOKEY_UUID/" "$BOOT_SRC/rootfs/etc/vaulttab.in" > "$R/etc/vaulttab"
rm "$R/etc/vaulttab.in"
mkdir -p "$R/etc/vmvault/keys" "$R"/mnt/{data1,data2,ghost,hot}
chmod 700 "$R/etc/vmvault/keys"
head -c 64 /dev/urandom > "$R/etc/vmvault/keys/data1.key"
head -c 64 /dev/urandom > "$R/etc/vmvault/keys/hot.key"
chmod 600 "$R"/etc/vmvault/keys/*.key
echo "$TOKEN" > "$R/root/written-earlier"
echo vmvault-boot > "$R/etc/hostname"
chroot "$R" passwd -dq root >/dev/null 2>&1 || true
mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/vmvault-boot-check.service "$R/etc/systemd/system/multi-user.target.wants/"
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
  ln -sf /dev/null "$R/etc/systemd/system/$u"
done

log "update-initramfs -u -k $KVER in the root file system (mkinitramfs with the vmvault hook)"
t2=$(now)
chroot "$R" update-initramfs -u -k "$KVER" > "$B/update-initramfs.log" 2>&1 \
  || die "update-initramfs failed: $(tail -20 "$B/update-initramfs.log")"
[ -s "$R/boot/initrd.img-$KVER" ] || die "no /boot/initrd.img-$KVER after update-initramfs"
INITRAMFS_SECS=$(el "$t2" "$(now)")
cp "$R/boot/initrd.img-$KVER" "$B/initrd.img-$KVER"
for ((i=${#MNTS[@]}-1; i>=0; i--)); do umount -l "${MNTS[$i]}"; done; MNTS=()
log "rootfs ready in $(el "$t" "$(now)") s (update-initramfs ${INITRAMFS_SECS} s, initrd $(du -h "$B/initrd.img-$KVER" | cut -f1))"

# --- stage 3: disk images --------------------------------------------------------------------
# Each is a LUKS2 volume made by the host's cryptsetup (cheap PBKDF2), filled with an ext4
# image (mkfs.ext4 -d) written through vmvault on the host: vaultsetup open with the fuse
# frontend, dd into the plaintext device from `status --json`, close (no dm-crypt here).
t=$(now)
rm -rf "$D"; mkdir -p "$D"
VS=$TGT/release/vaultsetup
[ -x "$VS" ] || die "$VS missing (cargo build --release -p vaultsetup)"
HOST_RUN_DIR=/run/vmvault-boot-build-$$
export VMVAULT_RUN_DIR=$HOST_RUN_DIR
luks_fill() {  # luks_fill NAME UUID EXT4-IMAGE KEY(passphrase text or @keyfile) [KEEP-AS]
  local n=$1 uuid=$2 fs=$3 key=$4 keep=${5:-} img=$D/$1.img kf dev st
  truncate -s $(( $(stat -c %s "$fs") + 16*1024*1024 )) "$img"
  if [ "${key#@}" != "$key" ]; then kf=${key#@}; else kf=$D/.pass; printf %s "$key" > "$kf"; fi
  cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --uuid "$uuid" --key-file "$kf" "$img" || die "luksFormat $img failed"
  "$VS" open --frontend fuse --key-file "$kf" "$img" "bootbuild-$n-$$" || die "vaultsetup open $img failed"
  st=$("$VS" status "bootbuild-$n-$$" --json)
  dev=$(sed -n 's/.*"device": *"\([^"]*\)".*/\1/p' <<<"$st" | head -1)
  HOSTPID=$(sed -n 's/.*"daemon_pid": *\([0-9]*\).*/\1/p' <<<"$st" | head -1)
  [ -b "$dev" ] || die "no plaintext device for $img: $st"
  dd if="$fs" of="$dev" bs=4M conv=fsync status=none || die "dd into $dev failed"
  "$VS" close "bootbuild-$n-$$" || die "vaultsetup close failed"
  rm -f "$D/.pass"
  if [ -n "$keep" ]; then mv "$fs" "$keep"; else rm -f "$fs"; fi
}
rsize=$(du -sm --apparent-size "$R" | cut -f1)
mkfs.ext4 -q -F -b 4096 -L vmvault-root -d "$R" "$D/root.ext4" "$(( rsize * 13 / 10 + 96 ))M" || die "mkfs.ext4 -d of the root failed"
# the same ext4 image is kept as the unencrypted root of the plain-root scenario (no extra
# build time; ~400 MB of disk, sparse)
luks_fill root "$ROOT_UUID" "$D/root.ext4" "$ROOT_PASS" "$D/plain-root.img"
for n in data1 data2 hot; do
  mkdir -p "$D/fs-$n"; echo "vmvault boot test $n" > "$D/fs-$n/known"
  mkfs.ext4 -q -F -b 4096 -L "$n" -d "$D/fs-$n" "$D/$n.ext4" 24M || die "mkfs.ext4 $n failed"
  rm -rf "$D/fs-$n"
done
luks_fill data1 "$DATA1_UUID" "$D/data1.ext4" "@$R/etc/vmvault/keys/data1.key"
luks_fill data2 "$DATA2_UUID" "$D/data2.ext4" "$DATA2_PASS"
luks_fill hot "$HOT_UUID" "$D/hot.ext4" "@$R/etc/vmvault/keys/hot.key"
[ -n "${HOSTPID:-}" ] && kill "$HOSTPID" 2>/dev/null; HOSTPID=
# nokey: a LUKS2 volume whose vaulttab key file is missing; its hash must not change
truncate -s 20M "$D/nokey.img"
printf %s "vmvault-nokey-13" | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --uuid "$NOKEY_UUID" --key-file - "$D/nokey.img" || die "luksFormat nokey.img failed"
NOKEY_SHA=$(sha256sum "$D/nokey.img" | cut -d' ' -f1)
cat > "$B/boot.json" <<JSON
{"kver": "$KVER", "kernel": "$OUT/vmlinux-$KVER", "initrd": "$B/initrd.img-$KVER",
 "disks": {"root": "$D/root.img", "data1": "$D/data1.img", "data2": "$D/data2.img", "hot": "$D/hot.img", "nokey": "$D/nokey.img",
           "plain-root": "$D/plain-root.img"},
 "uuids": {"data1": "$DATA1_UUID", "data2": "$DATA2_UUID"},
 "nokey_sha256": "$NOKEY_SHA",
 "root_pass": "$ROOT_PASS", "data2_pass": "$DATA2_PASS", "token": "$TOKEN",
 "deb": "$(basename "$DEB")", "initramfs_secs": $INITRAMFS_SECS}
JSON
rm -rf --one-file-system "$R"   # the disks hold it now (~230 MB less in target/)
touch "$B/.done-$RKEY"
log "disks ready in $(el "$t" "$(now)") s ($(du -sh "$D" | cut -f1)); build-rootfs done in $(el "$T0" "$(now)") s"
