#!/bin/sh
# A volume in use is never torn down (issue 11, point 2), over both frontends (results
# busy/<frontend>/<holder>/...): with /dev/mapper/NAME held by a plain open (`exec
# 3</dev/mapper/NAME`, no O_EXCL), with the frontend device under it (/dev/ublkbN or
# /dev/loopN) held the same way, and with a mounted ext4, `vaultsetup close` exits 5
# with cryptsetup's "Device NAME is still in use.", the dm device stays ACTIVE and the
# data reads back; once released, close succeeds and leaves nothing behind.
# shellcheck source=tests/vm/suites/lib.sh
. /suites/lib.sh
if why=$(vault_open_missing); then fail vaultsetup-open "$why"; finish; exit; fi
luks_format /tmp/b.img luks2 aes-xts-plain64 512 4096 > /dev/null 2>&1 || fail luksFormat
# room for the ext4 of the mounted-holder case (8 MiB less the 2 MiB header ran full once)
truncate -s 40M /tmp/b.img
LOOPS0=$(losetup -a | wc -l)
# refused FE/HOLDER [nodata]: close must exit 5 with the message, the volume must stay
# whole (and read back /tmp/bp unless nodata: a mounted filesystem may write meanwhile)
refused() {
  vaultsetup close vmb > /tmp/busy.out 2>&1; rc=$?
  if [ $rc = 5 ]; then pass "$1/close-exits-5"; else fail "$1/close-exits-5" "exit $rc: $(tr '\n' ' ' < /tmp/busy.out)"; fi
  check "$1/message" grep -q 'Device vmb is still in use.' /tmp/busy.out
  check "$1/still-active" sh -c 'dmsetup info vmb | grep -q "State: *ACTIVE"'
  check "$1/still-in-status" vaultsetup status vmb
  [ -n "$2" ] && return
  dropcaches
  check "$1/data-intact" sh -c 'dd if=/dev/mapper/vmb bs=1M count=2 2>/dev/null | cmp - /tmp/bp'
}
for FE in ublk fuse; do
  echo "== frontend $FE"
  vo() { vaultsetup open --type luks2 --key-file /tmp/pass --backend "$VB" --frontend "$FE" /tmp/b.img vmb; }
  check "$FE/open" vo || continue
  settle
  pattern /tmp/bp 2
  check "$FE/write" dd if=/tmp/bp of=/dev/mapper/vmb bs=1M count=2 conv=fsync
  settle
  LOWER=$(vaultsetup status --json vmb | tr ',' '\n' | sed -n 's/.*"loop_device" *: *"\([^"]*\)".*/\1/p')
  echo "  lower device: $LOWER"

  # 1. a plain open of /dev/mapper/vmb
  exec 3< /dev/mapper/vmb
  refused "$FE/mapper-open"
  exec 3<&-
  settle

  # 2. a plain open of the frontend device under the mapper
  if [ -b "$LOWER" ]; then
    exec 4< "$LOWER"
    refused "$FE/lower-open"
    exec 4<&-
    settle
  else
    fail "$FE/lower-device" "status gives no block device: '$LOWER'"
  fi

  # 3. a mounted filesystem
  check "$FE/mkfs" mkfs.ext4 -q -F /dev/mapper/vmb
  mkdir -p /tmp/bmnt
  if check "$FE/mount" mount /dev/mapper/vmb /tmp/bmnt; then
    echo kept > /tmp/bmnt/f; sync
    refused "$FE/mounted" nodata
    check "$FE/mounted/fs-works" sh -c 'echo more > /tmp/bmnt/g && sync && grep -q kept /tmp/bmnt/f'
    check "$FE/umount" umount /tmp/bmnt
  fi
  settle
  check "$FE/close-after-release" vaultsetup close vmb
  settle
  check "$FE/mapper-node-gone" sh -c '[ ! -e /dev/mapper/vmb ]'
  check "$FE/no-leftover-loop" sh -c "[ \$(losetup -a | wc -l) = $LOOPS0 ]"
  check "$FE/no-leftover-ublk" sh -c '! ls /sys/block | grep -q ublkb'
  # the data written before the refused closes survived
  if check "$FE/reopen" vo; then
    settle
    check "$FE/fsck" e2fsck -fn /dev/mapper/vmb
    check "$FE/remount" mount -o ro /dev/mapper/vmb /tmp/bmnt
    check "$FE/file-kept" grep -q more /tmp/bmnt/g
    umount /tmp/bmnt 2>/dev/null
    settle
    check "$FE/close-reopened" vaultsetup close vmb
  fi
done
rm -f /tmp/b.img /tmp/bp
finish
