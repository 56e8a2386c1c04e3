#!/bin/bash
# Builds the VM tier's initramfs (cpio newc, gzip) at target/vm/out/initramfs.cpio.gz:
# busybox, the kernel modules the suites need (with their dependencies), cryptsetup,
# dmsetup, e2fsprogs, udev, the project's binaries (built --release for the host, their
# shared libraries found with ldd), vmvault-hv's test executables and the payload
# (tests/vm/payload + tests/vm/suites, shell only).
# Run setup.sh first. env: VMVAULT_VM_NO_BUILD=1 skips the cargo builds (uses what is
# there), CARGO_TARGET_DIR is respected.
set -euo pipefail
# shellcheck source=tests/vm/common.sh
. "$(dirname "$0")/common.sh"
T0=$(now)
{ [ -s "$VM/kver" ] && [ -d "$ROOT/bin" ]; } || die "run tests/vm/setup.sh first"
KVER=$(cat "$VM/kver")
KMODS=$KROOT/lib/modules/$KVER
ST=$VM/stage
INITRD=$OUT/initramfs.cpio.gz
export LD_LIBRARY_PATH=$HOST_LIBDIRS
MODS=(loop dm_mod dm_crypt brd nbd ublk_drv kvm kvm_amd aesni_intel xts essiv cbc ecb sha256_generic
      af_alg algif_skcipher algif_hash ext4 virtio_blk 9pnet_virtio 9p)

# 1. the project's binaries (release, host target) and vmvault-hv's test executables
TGT=${CARGO_TARGET_DIR:-$REPO/target}
case $TGT in /*) ;; *) TGT=$REPO/$TGT;; esac
if [ "${VMVAULT_VM_NO_BUILD:-0}" != 1 ]; then
  log "cargo build --release (vaultsetup, vmvaultd, vmvault-hv)"
  (cd "$REPO" && "${CARGO:-cargo}" build --release -q -p vaultsetup -p dm-vmvault -p vmvault-hv) \
    || die "cargo build --release failed"
  log "cargo test --release --no-run -p vmvault-hv (the vault suite for nested KVM)"
  (cd "$REPO" && "${CARGO:-cargo}" test --release --no-run -q -p vmvault-hv --message-format=json) \
    > "$OUT/hv-tests.json" || die "building vmvault-hv's test executables failed"
fi
for b in vaultsetup vmvaultd vmvault-hv; do
  [ -x "$TGT/release/$b" ] || die "$TGT/release/$b is missing (build failed or VMVAULT_VM_NO_BUILD=1 without a build)"
done
HV_TESTS=()
if [ -s "$OUT/hv-tests.json" ]; then
  while read -r exe; do HV_TESTS+=("$exe"); done < <(grep '"target":{[^}]*"kind":\["test"\]' "$OUT/hv-tests.json" \
    | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
fi

# 2. staging tree
rm -rf "$ST"
mkdir -p "$ST"/{bin,sbin,usr/bin,usr/sbin,usr/lib,etc,proc,sys,dev,tmp,run,mnt,root,lib64,lib/x86_64-linux-gnu/systemd}
ln -s ../../lib/x86_64-linux-gnu "$ST/usr/lib/x86_64-linux-gnu"
mkdir -p "$ST"/{lib/modules/"$KVER",suites,vault-tests,etc/udev,lib/udev/rules.d,lib/systemd}
cp "$ROOT/bin/busybox" "$ST/bin/busybox"
for a in $("$ST/bin/busybox" --list-full); do [ -e "$ST/$a" ] || ln -s /bin/busybox "$ST/$a"; done

# dynamically linked ELF files: copy, replacing any busybox applet of the same name
copy_bin() {  # copy_bin SRC DEST-IN-STAGE
  rm -f "$ST/$2"; mkdir -p "$(dirname "$ST/$2")"; cp -L "$1" "$ST/$2"
  BINS+=("$ST/$2")
}
BINS=()
copy_bin "$ROOT/sbin/cryptsetup" sbin/cryptsetup
copy_bin "$ROOT/sbin/dmsetup" sbin/dmsetup
copy_bin "$ROOT/sbin/mke2fs" sbin/mke2fs
copy_bin "$ROOT/sbin/e2fsck" sbin/e2fsck
copy_bin "$ROOT/sbin/blkdiscard" sbin/blkdiscard   # util-linux's: -z (busybox's has none)
for l in mkfs.ext4 mkfs.ext2; do rm -f "$ST/sbin/$l"; ln -s mke2fs "$ST/sbin/$l"; done
for l in fsck.ext4 fsck.ext2; do rm -f "$ST/sbin/$l"; ln -s e2fsck "$ST/sbin/$l"; done
cp "$ROOT/etc/mke2fs.conf" "$ST/etc/"
copy_bin "$ROOT/bin/udevadm" bin/udevadm
ln -sf /bin/udevadm "$ST/lib/systemd/systemd-udevd"
for b in vaultsetup vmvaultd vmvault-hv; do copy_bin "$TGT/release/$b" "usr/sbin/$b"; done
for t in "${HV_TESTS[@]}"; do
  n=$(basename "$t"); copy_bin "$t" "vault-tests/${n%-*}"
done
# the release profile keeps debug info: drop it (smaller initramfs, faster unpacking under TCG)
for b in "${BINS[@]}"; do strip --strip-debug "$b"; done
# shared libraries (resolved against the extracted debs first, then the host)
LIBS=$(for b in "${BINS[@]}"; do
  LD_LIBRARY_PATH=$HOST_LIBDIRS:$ROOT/usr/lib/x86_64-linux-gnu/systemd ldd "$b" \
    | awk -v b="$b" '/not found/{print "MISSING:" b ":" $1} /=>/{print $3} /ld-linux/{print $1}'
done | sort -u)
if grep -q '^MISSING:' <<<"$LIBS"; then die "unresolved shared libraries: $(grep '^MISSING:' <<<"$LIBS" | tr '\n' ' ')"; fi
for l in $LIBS; do
  case $l in
    */ld-linux-x86-64.so.2) cp -L "$l" "$ST/lib64/";;
    */systemd/*) cp -L "$l" "$ST/lib/x86_64-linux-gnu/systemd/";;
    *) cp -L "$l" "$ST/lib/x86_64-linux-gnu/";;
  esac
done
# gcc's unwinder (Rust test harness, panics)
[ -e "$ST/lib/x86_64-linux-gnu/libgcc_s.so.1" ] || cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$ST/lib/x86_64-linux-gnu/"

# udev: rules for block devices and device-mapper (dmsetup's rules)
for r in 50-udev-default 60-block 60-persistent-storage 80-drivers 99-systemd; do
  [ -f "$ROOT/lib/udev/rules.d/$r.rules" ] && cp "$ROOT/lib/udev/rules.d/$r.rules" "$ST/lib/udev/rules.d/"
done
cp "$ROOT"/lib/udev/rules.d/*dm*.rules "$ST/lib/udev/rules.d/"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$ST/etc/passwd"
for g in root:0 disk:6 tty:5 kvm:104 kmem:15 audio:29 video:44 input:105 render:106 sgx:107 \
         dialout:20 cdrom:24 tape:26 floppy:25 lp:7; do echo "${g%:*}:x:${g#*:}:"; done > "$ST/etc/group"

# 3. kernel modules with dependencies (decompressed), depmod for busybox modprobe
[ -f "$KMODS/modules.dep" ] || "$ROOT/sbin/depmod" -b "$KROOT" "$KVER"
for m in "${MODS[@]}"; do
  deps=$("$ROOT/sbin/modprobe" -d "$KROOT" -S "$KVER" --show-depends "$m") || die "module $m not found in $KVER"
  while read -r kind f _; do
    [ "$kind" = insmod ] || continue
    rel=${f#"$KROOT"/}; mkdir -p "$ST/$(dirname "$rel")"
    case $f in
      *.xz) xz -dc "$f" > "$ST/${rel%.xz}";;
      *.zst) zstd -qdc "$f" > "$ST/${rel%.zst}";;
      *) cp "$f" "$ST/$rel";;
    esac
  done <<<"$deps"
done
cp "$KMODS"/modules.{builtin,builtin.modinfo,order} "$ST/lib/modules/$KVER/"
"$ROOT/sbin/depmod" -b "$ST" "$KVER"

# 4. payload
cp "$VM_SRC/payload/init" "$ST/init"
cp "$VM_SRC"/suites/*.sh "$ST/suites/"
chmod +x "$ST/init" "$ST"/suites/*.sh

# 5. archive (only rewritten when the contents changed, so the run can be cached)
(cd "$ST" && find . | LC_ALL=C sort | "$ROOT/bin/cpio" -o -H newc --quiet -R 0:0 | gzip -1) > "$INITRD.tmp"
mv "$INITRD.tmp" "$INITRD"
log "initramfs $(du -h "$INITRD" | cut -f1) ($(du -sh "$ST" | cut -f1) unpacked, ${#HV_TESTS[@]} vault test executables) in $(el "$T0" "$(now)") s"
