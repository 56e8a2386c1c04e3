#!/bin/sh
# The ublk frontend passes the ext4 end-to-end test (issue 7, acceptance 3): open with
# --frontend ublk, mkfs.ext4, mount, write, unmount, close, reopen, verify, fsck.
# Then, on ublk: --readonly (reads work, writes fail, the data is unchanged) and
# --allow-discards (blkdiscard succeeds; blkdiscard -z reads back zeros; without the
# option the device takes no discards). And daemon death, on ublk and on fuse+loop
# (death/<frontend>/...): a writer on /dev/mapper/NAME errors out within seconds of a
# kill -9 of vmvaultd instead of hanging, the stale /dev/mapper/NAME is left behind, and
# a new `vaultsetup open` of the same NAME works (the new vmvaultd removes its
# predecessor's dm device, ublk device, loop device and FUSE mount at start-up).
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
vo() { vaultsetup open --frontend ublk --type luks2 --key-file /tmp/pass --backend "$VB" "$@" /tmp/b.img vmvb; }
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
check no-discards-without-option sh -c "[ \"\$(cat /sys/block/\$(basename \$(readlink -f $D))/queue/discard_max_bytes)\" = 0 ]"
check close2 vaultsetup close vmvb

echo "== read-only"
dd if=/tmp/b.img of=/tmp/b.before bs=1M 2>/dev/null
check ro/open vo --readonly
D=$(vault_dev vmvb)
check ro/getro sh -c "[ \"\$(blockdev --getro $D)\" = 1 ]"
check ro/read dd if="$D" of=/dev/null bs=1M
check ro/fsck e2fsck -fn "$D"
if dd if=/dev/zero of="$D" bs=4k count=1 oflag=direct conv=notrunc > /tmp/ro.out 2>&1; then
  fail ro/write-refused "a write to the read-only volume succeeded"
elif grep -qi 'read-only\|not permitted\|I/O error\|permission denied' /tmp/ro.out; then
  pass ro/write-refused "$(grep -i 'read-only\|not permitted\|I/O error\|permission denied' /tmp/ro.out | head -1)"
else
  fail ro/write-refused "unexpected error: $(tail -c 200 /tmp/ro.out | tr '\n' ' ')"
fi
check ro/close vaultsetup close vmvb
check ro/image-unchanged cmp /tmp/b.before /tmp/b.img
rm -f /tmp/b.before

echo "== discards"
check discard/open vo --allow-discards
D=$(vault_dev vmvb)
Q=/sys/block/$(basename "$(readlink -f "$D")")/queue
echo "  $D: discard_max_bytes $(cat "$Q/discard_max_bytes"), write_zeroes_max_bytes $(cat "$Q/write_zeroes_max_bytes")"
check discard/queue-takes-discards sh -c "[ \$(cat $Q/discard_max_bytes) -gt 0 ]"
pattern /tmp/dp 1
dd if=/tmp/dp of="$D" bs=1M seek=2 conv=fsync 2>/dev/null
check discard/blkdiscard blkdiscard -o $((2 << 20)) -l $((1 << 20)) "$D"
dd if=/tmp/dp of="$D" bs=1M seek=3 conv=fsync 2>/dev/null
check discard/blkdiscard-z /sbin/blkdiscard -f -z -o $((3 << 20)) -l $((1 << 20)) "$D"
dropcaches
head -c $((1 << 20)) /dev/zero > /tmp/dz
check discard/zeros-read-back sh -c "dd if=$D bs=1M skip=3 count=1 2>/dev/null | cmp - /tmp/dz"
check discard/close vaultsetup close vmvb
rm -f /tmp/dp /tmp/dz

# death FRONTEND: kill -9 vmvaultd under a writer, then reopen the same name
death() {
  fe=$1; n=vmvk-$fe; N=death/$fe
  echo "== daemon death ($fe)"
  luks_format "/tmp/k-$fe.img" luks2 aes-xts-plain64 256 512 > /dev/null 2>&1
  truncate -s 40M "/tmp/k-$fe.img"
  ko() { vaultsetup open --frontend "$fe" --type luks2 --key-file /tmp/pass --backend "$VB" "/tmp/k-$fe.img" "$n"; }
  check "$N/open" ko || return
  check "$N/frontend" frontend_is "$n" "$fe"
  P=$(daemon_pid /run/vmvault)
  # the writer: direct 64 KiB writes over the volume, round and round, until one fails
  rm -f /tmp/w.rc
  ( timeout -k 5 60 sh -c "while :; do dd if=/dev/zero of=/dev/mapper/$n bs=64k count=256 oflag=direct conv=notrunc 2>/tmp/w.err || exit 3; done"
    echo $? > /tmp/w.rc ) &
  W=$!
  sleep 2
  if [ -f /tmp/w.rc ]; then fail "$N/writer-running" "the writer ended before the kill: $(cat /tmp/w.err)"; fi
  t0=$(now)
  kill -9 "$P"
  # at most 30 s for the writer to notice (the outer timeout above is 60 s)
  i=0; while [ ! -f /tmp/w.rc ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
  secs=$(el "$t0" "$(now)")
  rc=$(cat /tmp/w.rc 2>/dev/null)
  case $rc in
    "") fail "$N/writer-errors-out" "writer still running ${secs} s after kill -9 (hung)";;
    0|124|137|143) fail "$N/writer-errors-out" "writer rc $rc after ${secs} s: $(tail -c 200 /tmp/w.err | tr '\n' ' ')";;
    *) pass "$N/writer-errors-out" "rc $rc after ${secs} s: $(grep -m1 -i error /tmp/w.err)";;
  esac
  wait "$W" 2>/dev/null
  # gone, or a zombie (reparented to /init, which reaps only its own children), within
  # 20 s: a SIGKILLed process still tears down its memory and io_uring for a while, and
  # the writer can see its error before that ends (a zombie reaped between the two looks
  # is gone too)
  check "$N/daemon-gone" sh -c "i=0; until [ ! -d /proc/$P ] || grep -q '^State:.*Z' /proc/$P/status 2>/dev/null || [ ! -d /proc/$P ]; do
    [ \$i -ge 200 ] && { grep -E '^(State|Name)' /proc/$P/status; cat /proc/$P/wchan 2>/dev/null; echo; exit 1; }
    i=\$((i + 1)); sleep 0.1; done"
  check "$N/stale-mapper-left" dmsetup info "$n"
  t0=$(now)
  if check "$N/reopen-same-name" ko; then
    pass "$N/reopen-time" "$(el "$t0" "$(now)") s"
    grep 'stale\|alone' /run/vmvault/vmvaultd.log | tail -5 | sed 's/^/    log: /'
    check "$N/log-removed-stale" grep -q "removed stale /dev/mapper/$n " /run/vmvault/vmvaultd.log
    check "$N/frontend-again" frontend_is "$n" "$fe"
    pattern /tmp/kp 2
    check "$N/write-after-reopen" dd if=/tmp/kp of="/dev/mapper/$n" bs=1M conv=fsync
    dropcaches
    check "$N/read-after-reopen" sh -c "dd if=/dev/mapper/$n bs=1M count=2 2>/dev/null | cmp - /tmp/kp"
    settle
    check "$N/close" vaultsetup close "$n"
  fi
  settle
  check "$N/nothing-left" sh -c "! dmsetup info $n > /dev/null 2>&1 && ! ls /sys/block | grep -q ublkb && [ -z \"\$(ls /run/vmvault/mnt)\" ]"
  rm -f "/tmp/k-$fe.img" /tmp/kp /tmp/w.rc /tmp/w.err
}
death ublk
death fuse
finish
