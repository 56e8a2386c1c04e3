#!/bin/sh
# dm-crypt compatibility, both ways, byte for byte (issue 7, acceptance 1). For every
# case of the matrix (LUKS1/LUKS2; 512/4096-byte sectors; aes-xts-plain64 256/512;
# aes-cbc-essiv:sha256), on a loop device over a cryptsetup-made image:
#  1. dm-crypt (cryptsetup open) writes pattern P over the whole device;
#  2. vaultsetup open reads P back (dmcrypt-to-vault), then writes Q;
#  3. dm-crypt reads Q (vault-to-dmcrypt);
#  4. vaultsetup writes P again: the ciphertext equals dm-crypt's from step 1 (same-ciphertext).
# kernel arg vmvault.backend=kvm|soft|auto picks vaultsetup's backend (default auto).
# shellcheck source=tests/vm/suites/lib.sh
. /suites/lib.sh
if why=$(vault_open_missing); then
  for c in $CASES; do
    # shellcheck disable=SC2046
    set -- $(echo "$c" | tr , ' '); fail "$(case_name "$@")/vaultsetup-open" "$why"
  done
  finish; exit
fi
vopen() { vaultsetup open --type "$T" --key-file /tmp/pass --backend "$VB" "$@"; }
for c in $CASES; do
  # shellcheck disable=SC2046
  set -- $(echo "$c" | tr , ' ')
  T=$1 C=$2 B=$3 S=$4; N=$(case_name "$T" "$C" "$B" "$S"); IMG=/tmp/$N.img
  echo "== $N (backend $VB)"
  check "$N/luksFormat" luks_format "$IMG" "$T" "$C" "$B" "$S" || continue
  LOOP=$(loop_attach "$IMG")
  # 1. dm-crypt writes P
  cryptsetup open --key-file /tmp/pass "$LOOP" "dmc-$N" || { fail "$N/cryptsetup-open"; losetup -d "$LOOP"; continue; }
  SZ=$(bsize "/dev/mapper/dmc-$N"); MB=$((SZ >> 20))
  pattern /tmp/P "$MB"; pattern /tmp/Q "$MB"
  dd if=/tmp/P of="/dev/mapper/dmc-$N" bs=1M conv=fsync 2>/dev/null
  settle; cryptsetup close "dmc-$N"
  cp "$IMG" /tmp/C1
  # 2. vaultsetup reads P, writes Q
  if check "$N/vaultsetup-open" vopen "$LOOP" "vv-$N"; then
    D=$(vault_dev "vv-$N")
    echo "  vaultsetup device: $D"
    dropcaches
    dd if="$D" of=/tmp/back bs=1M count="$MB" 2>/dev/null
    check "$N/dmcrypt-to-vault" cmp /tmp/P /tmp/back
    dd if=/tmp/Q of="$D" bs=1M conv=fsync 2>/dev/null
    settle; check "$N/vaultsetup-close" vaultsetup close "vv-$N"
    # 3. dm-crypt reads Q
    cryptsetup open --readonly --key-file /tmp/pass "$LOOP" "dmc-$N"
    dropcaches
    dd if="/dev/mapper/dmc-$N" of=/tmp/back bs=1M 2>/dev/null
    check "$N/vault-to-dmcrypt" cmp /tmp/Q /tmp/back
    settle; cryptsetup close "dmc-$N"
    # 4. vaultsetup writes P: dm-crypt's ciphertext, byte for byte
    if vopen "$LOOP" "vv-$N" > /tmp/vo.out 2>&1; then
      dd if=/tmp/P of="$(vault_dev "vv-$N")" bs=1M conv=fsync 2>/dev/null
      settle; vaultsetup close "vv-$N"
      check "$N/same-ciphertext" cmp /tmp/C1 "$IMG"
    else
      fail "$N/same-ciphertext" "reopen: $(tail -c 200 /tmp/vo.out | tr '\n' ' ')"
    fi
  fi
  losetup -d "$LOOP"; rm -f "$IMG" /tmp/C1 /tmp/P /tmp/Q /tmp/back
done
finish
