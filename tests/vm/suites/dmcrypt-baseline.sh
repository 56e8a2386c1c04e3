#!/bin/sh
# dm-crypt self-check with cryptsetup alone (no vmvault): for every case of the
# compatibility matrix, luksFormat, open (real dm-crypt), write a pattern, close, reopen,
# read it back; the table carries the expected cipher and sector size; the same
# plaintext comes out of a hand-built dm-crypt table keyed with the dumped volume key
# (what vmvault must reproduce); udev names the device /dev/disk/by-id/dm-name-NAME.
# shellcheck source=tests/vm/suites/lib.sh
. /suites/lib.sh
for c in $CASES; do
  # shellcheck disable=SC2046
  set -- $(echo "$c" | tr , ' ')
  T=$1 C=$2 B=$3 S=$4; N=$(case_name "$T" "$C" "$B" "$S"); IMG=/tmp/$N.img
  echo "== $N"
  check "$N/luksFormat" luks_format "$IMG" "$T" "$C" "$B" "$S" || continue
  check "$N/open" cryptsetup open --key-file /tmp/pass "$IMG" "base-$N" || continue
  DEV=/dev/mapper/base-$N
  SZ=$(bsize "$DEV"); pattern /tmp/pat $((SZ >> 20))
  dd if=/tmp/pat of="$DEV" bs=1M conv=fsync 2>/dev/null
  TABLE=$(dmsetup table "base-$N")
  echo "  table: $(echo "$TABLE" | sed 's/ [0-9a-f]\{32,\} / <key> /')"
  want="crypt $C"
  case "$TABLE" in *"$want "*) pass "$N/table-cipher";; *) fail "$N/table-cipher" "want '$want' in: $TABLE";; esac
  # LUKS2 counts IVs in 512-byte units whatever the sector size: no iv_large_sectors
  if [ "$S" = 4096 ]; then
    case "$TABLE" in *iv_large_sectors*) fail "$N/table-sector-size" "iv_large_sectors in: $TABLE";;
      *" 1 sector_size:4096") pass "$N/table-sector-size";;
      *) fail "$N/table-sector-size" "want '1 sector_size:4096' in: $TABLE";; esac
  fi
  check "$N/close" cryptsetup close "base-$N"
  check "$N/reopen" cryptsetup open --readonly --key-file /tmp/pass "$IMG" "base-$N" || continue
  dropcaches
  dd if="$DEV" of=/tmp/back bs=1M 2>/dev/null
  check "$N/readback" cmp /tmp/pat /tmp/back
  settle
  if [ -L "/dev/disk/by-id/dm-name-base-$N" ]; then pass "$N/udev-by-id"; else fail "$N/udev-by-id" "no /dev/disk/by-id/dm-name-base-$N"; fi
  check "$N/close2" cryptsetup close "base-$N"
  # the same bytes through a hand-built table with the dumped volume key
  KEY=$(cryptsetup luksDump -q --dump-volume-key --key-file /tmp/pass "$IMG" 2>/dev/null \
        | sed -n '/^MK dump:\|^Volume key:/,/^[A-Za-z]/p' | grep -o '[0-9a-f][0-9a-f]' | tr -d '\n')
  [ ${#KEY} = $((B / 4)) ] || { fail "$N/dump-volume-key" "got ${#KEY} hex digits, want $((B / 4))"; continue; }
  LOOP=$(loop_attach "$IMG" -r)
  OPT=; [ "$S" = 4096 ] && OPT=" 1 sector_size:4096"
  check "$N/hand-table" dmsetup create "hand-$N" --readonly --table "0 $((SZ / 512)) crypt $C $KEY 0 $LOOP 4096$OPT"
  dd if="/dev/mapper/hand-$N" of=/tmp/back bs=1M 2>/dev/null
  check "$N/hand-table-readback" cmp /tmp/pat /tmp/back
  settle; dmsetup remove --retry "hand-$N"; losetup -d "$LOOP"
  rm -f "$IMG" /tmp/back
done
# nothing left behind
check no-leftover-mappings sh -c 'dmsetup ls | grep -q "No devices found"'
finish
