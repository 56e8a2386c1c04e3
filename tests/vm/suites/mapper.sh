#!/bin/sh
# vaultsetup open names the volume /dev/mapper/NAME (issue 7, acceptance 2), over both
# frontends (--frontend ublk, --frontend fuse; results mapper/<frontend>/<case>): the
# node is a block device, dmsetup table/status/info show it, vaultsetup status reports
# it, a second open of NAME exits 5, and close removes it with nothing left behind.
# Then the start-up cleanup of stale /dev/mapper devices (dm-vmvault daemon/stale.rs)
# spares other run directories' live volumes: with volumes of a second vmvaultd
# (--run-dir /run/vmvault-b, one per frontend) open and records of them forged into
# /run/vmvault/dm/, the default daemon is killed (-9) and restarted; it removes its own
# stale device and leaves the other daemon's volumes alone and intact.
# shellcheck source=tests/vm/suites/lib.sh
. /suites/lib.sh
if why=$(vault_open_missing); then fail vaultsetup-open "$why"; finish; exit; fi
luks_format /tmp/m.img luks2 aes-xts-plain64 512 4096 > /dev/null 2>&1 || fail luksFormat
LOOPS0=$(losetup -a | wc -l)
for FE in ublk fuse; do
  echo "== frontend $FE"
  vo() { vaultsetup open --type luks2 --key-file /tmp/pass --backend "$VB" --frontend "$FE" /tmp/m.img vmv; }
  check "$FE/open" vo || continue
  settle
  check "$FE/frontend" frontend_is vmv "$FE"
  check "$FE/mapper-node" test -b /dev/mapper/vmv
  TABLE=$(dmsetup table vmv 2>&1); echo "  table: $TABLE"
  case $TABLE in "0 12288 linear "*) pass "$FE/dmsetup-table";; *) fail "$FE/dmsetup-table" "want '0 12288 linear ...', got: $TABLE";; esac
  STATUS=$(dmsetup status vmv 2>&1); echo "  status: $STATUS"
  case $STATUS in "0 12288 linear"*) pass "$FE/dmsetup-status";; *) fail "$FE/dmsetup-status" "got: $STATUS";; esac
  check "$FE/dmsetup-info-active" sh -c 'dmsetup info vmv | grep -q "State: *ACTIVE"'
  run vaultsetup status vmv > /tmp/vs.out; cat /tmp/vs.out
  check "$FE/vaultsetup-status" grep -q '/dev/mapper/vmv' /tmp/vs.out
  J=$(vaultsetup status --json vmv 2>&1); echo "  json: $J"
  for f in name device backing cipher key_size sector_size offset iv_large_sectors backend protection daemon_pid; do
    case $J in *"\"$f\""*) ;; *) fail "$FE/status-json-$f" "no field $f";; esac
  done
  case $J in *'"device"'*'/dev/mapper/vmv'*|*'/dev/mapper/vmv'*'"device"'*) pass "$FE/status-json-device";; *) fail "$FE/status-json-device" "$J";; esac
  vaultsetup open --type luks2 --key-file /tmp/pass --frontend "$FE" /tmp/m.img vmv > /dev/null 2>&1; rc=$?
  if [ $rc = 5 ]; then pass "$FE/open-twice-exits-5"; else fail "$FE/open-twice-exits-5" "exit $rc"; fi
  pattern /tmp/mp 2
  check "$FE/write" dd if=/tmp/mp of=/dev/mapper/vmv bs=1M count=2 conv=fsync
  dropcaches
  check "$FE/read-back" sh -c 'dd if=/dev/mapper/vmv bs=1M count=2 2>/dev/null | cmp - /tmp/mp'
  settle
  check "$FE/close" vaultsetup close vmv
  settle
  check "$FE/mapper-node-gone" sh -c '[ ! -e /dev/mapper/vmv ]'
  check "$FE/dmsetup-info-gone" sh -c '! dmsetup info vmv > /dev/null 2>&1'
  check "$FE/no-leftover-loop" sh -c "[ \$(losetup -a | wc -l) = $LOOPS0 ]"
  check "$FE/no-leftover-ublk" sh -c '! ls /sys/block | grep -q ublkb'
  check "$FE/status-after-close" sh -c '! vaultsetup status vmv > /dev/null 2>&1'
done

echo "== stale cleanup spares another run directory's volumes"
RB=/run/vmvault-b
ok=1
for FE in fuse ublk; do
  luks_format "/tmp/o-$FE.img" luks2 aes-xts-plain64 256 512 > /dev/null 2>&1
  check "other-rundir/open-$FE" vaultsetup open --run-dir "$RB" --frontend "$FE" --type luks2 \
    --key-file /tmp/pass --backend "$VB" "/tmp/o-$FE.img" "other-$FE" || { ok=; continue; }
  pattern "/tmp/o-$FE.pat" 2
  dd if="/tmp/o-$FE.pat" of="/dev/mapper/other-$FE" bs=1M conv=fsync 2>/dev/null
  # a forged record: "the default run dir's daemon created other-$FE" (same name and uuid)
  mkdir -p /run/vmvault/dm
  dmsetup info -c --noheadings -o uuid "other-$FE" > "/run/vmvault/dm/other-$FE"
done
check "other-rundir/own-open" vaultsetup open --frontend ublk --type luks2 --key-file /tmp/pass \
  --backend "$VB" /tmp/m.img vmv || ok=
P=$(daemon_pid /run/vmvault); echo "  default vmvaultd pid $P, records: $(echo /run/vmvault/dm/*)"
if [ -n "$ok" ] && [ -n "$P" ]; then
  kill -9 "$P"; sleep 1
  check "other-rundir/own-stale-left" dmsetup info vmv
  check "other-rundir/reopen-own-name" vaultsetup open --frontend ublk --type luks2 --key-file /tmp/pass \
    --backend "$VB" /tmp/m.img vmv
  grep 'stale\|alone' /run/vmvault/vmvaultd.log | sed 's/^/    log: /'
  check "other-rundir/log-removed-own" grep -q 'removed stale /dev/mapper/vmv ' /run/vmvault/vmvaultd.log
  for FE in fuse ublk; do
    check "other-rundir/log-left-$FE-alone" grep -q "left /dev/mapper/other-$FE alone" /run/vmvault/vmvaultd.log
    check "other-rundir/$FE-still-active" sh -c "dmsetup info other-$FE | grep -q 'State: *ACTIVE'"
    dropcaches
    check "other-rundir/$FE-data-intact" sh -c "dd if=/dev/mapper/other-$FE bs=1M count=2 2>/dev/null | cmp - /tmp/o-$FE.pat"
    check "other-rundir/$FE-close" vaultsetup close --run-dir "$RB" "other-$FE"
  done
  check "other-rundir/records-dropped" sh -c '! ls /run/vmvault/dm | grep -q other'
  check "other-rundir/close-own" vaultsetup close vmv
fi
settle
check no-leftover-mappings sh -c '! dmsetup ls | grep -q "vmv\|other-"'
rm -f /tmp/o-*.img /tmp/o-*.pat /tmp/mp
finish
