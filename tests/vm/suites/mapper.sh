#!/bin/sh
# vaultsetup open names the volume /dev/mapper/NAME (issue 7, acceptance 2): the node is
# a block device, dmsetup table/status/info show it, vaultsetup status reports it, a
# second open of NAME exits 5, and close removes it with nothing left behind.
# shellcheck source=tests/vm/suites/lib.sh
. /suites/lib.sh
if why=$(vault_open_missing); then fail vaultsetup-open "$why"; finish; exit; fi
luks_format /tmp/m.img luks2 aes-xts-plain64 512 4096 > /dev/null 2>&1 || fail luksFormat
LOOPS0=$(losetup -a | wc -l)
check open vaultsetup open --type luks2 --key-file /tmp/pass --backend "$VB" /tmp/m.img vmv || { finish; exit; }
settle
check mapper-node test -b /dev/mapper/vmv
TABLE=$(dmsetup table vmv 2>&1); echo "  table: $TABLE"
case $TABLE in "0 12288 linear "*) pass dmsetup-table;; *) fail dmsetup-table "want '0 12288 linear ...', got: $TABLE";; esac
STATUS=$(dmsetup status vmv 2>&1); echo "  status: $STATUS"
case $STATUS in "0 12288 linear"*) pass dmsetup-status;; *) fail dmsetup-status "got: $STATUS";; esac
check dmsetup-info-active sh -c 'dmsetup info vmv | grep -q "State: *ACTIVE"'
run vaultsetup status vmv > /tmp/vs.out; cat /tmp/vs.out
check vaultsetup-status grep -q '/dev/mapper/vmv' /tmp/vs.out
J=$(vaultsetup status --json vmv 2>&1); echo "  json: $J"
for f in name device backing cipher key_size sector_size offset iv_large_sectors backend protection daemon_pid; do
  case $J in *"\"$f\""*) ;; *) fail "status-json-$f" "no field $f";; esac
done
case $J in *'"device"'*'/dev/mapper/vmv'*|*'/dev/mapper/vmv'*'"device"'*) pass status-json-device;; *) fail status-json-device "$J";; esac
vaultsetup open --type luks2 --key-file /tmp/pass /tmp/m.img vmv > /dev/null 2>&1; rc=$?
if [ $rc = 5 ]; then pass open-twice-exits-5; else fail open-twice-exits-5 "exit $rc"; fi
check write dd if=/dev/urandom of=/dev/mapper/vmv bs=1M count=2 conv=fsync
settle
check close vaultsetup close vmv
settle
check mapper-node-gone sh -c '[ ! -e /dev/mapper/vmv ]'
check dmsetup-info-gone sh -c '! dmsetup info vmv > /dev/null 2>&1'
check no-leftover-loop sh -c "[ \$(losetup -a | wc -l) = $LOOPS0 ]"
check status-after-close sh -c '! vaultsetup status vmv > /dev/null 2>&1'
finish
