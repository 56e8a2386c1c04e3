#!/bin/sh
# The ublk frontend passes the ext4 end-to-end test (issue 7, acceptance 3): open with
# --frontend ublk, mkfs.ext4, mount, write, unmount, close, reopen, verify, fsck.
# shellcheck source=tests/vm/suites/lib.sh
. /suites/lib.sh
check ublk-control test -c /dev/ublk-control
if ! vaultsetup open --help 2>&1 | grep -q -- '--frontend'; then
  fail frontend-option "vaultsetup open has no --frontend fuse|ublk: the ublk frontend of dm-vmvault (libublk) is not written yet (issue 7)"
  finish; exit
fi
if why=$(vault_open_missing); then fail vaultsetup-open "$why"; finish; exit; fi
luks_format /tmp/b.img luks2 aes-xts-plain64 512 4096 > /dev/null 2>&1 || fail luksFormat
truncate -s 64M /tmp/b.img   # room for ext4
vo() { vaultsetup open --frontend ublk --type luks2 --key-file /tmp/pass --backend "$VB" /tmp/b.img vmvb; }
check open vo || { finish; exit; }
D=$(vault_dev vmvb); echo "  device: $D"
# the plaintext device must be served by ublk: /dev/mapper/vmvb over /dev/ublkbN
J=$(vaultsetup status --json vmvb 2>&1); echo "  json: $J"
if find /sys/block/dm-*/slaves/ -name 'ublkb*' 2>/dev/null | grep -q . || echo "$J" | grep -q ublkb; then
  pass served-by-ublk; else fail served-by-ublk "no ublkb device under the volume"; fi
check mkfs mkfs.ext4 -q "$D"
mkdir -p /mnt/b
check mount mount -t ext4 "$D" /mnt/b
i=0; while [ $i -lt 20 ]; do dd if=/dev/urandom of=/mnt/b/f$i bs=64k count=$((i + 1)) 2>/dev/null; i=$((i + 1)); done
(cd /mnt/b && sha256sum f*) > /tmp/sums
check umount umount /mnt/b
check close vaultsetup close vmvb
check reopen vo
D=$(vault_dev vmvb)
check mount2 mount -t ext4 -o ro "$D" /mnt/b
check verify sh -c 'cd /mnt/b && sha256sum -c /tmp/sums > /dev/null'
umount /mnt/b
check fsck e2fsck -fn "$D"
check close2 vaultsetup close vmvb
finish
