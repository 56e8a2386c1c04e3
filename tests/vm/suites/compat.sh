#!/bin/sh
# dm-crypt compatibility, both ways, byte for byte (issue 7, acceptance 1). For every
# case of the matrix (LUKS1/LUKS2; 512/4096-byte sectors; aes-xts-plain64 256/512;
# aes-cbc-essiv:sha256), on a loop device over a cryptsetup-made image:
#  1. dm-crypt (cryptsetup open) writes pattern P over the whole device;
#  2. vaultsetup open reads P back (dmcrypt-to-vault), then writes Q;
#  3. dm-crypt reads Q (vault-to-dmcrypt);
#  4. vaultsetup writes P again: the ciphertext equals dm-crypt's from step 1 (same-ciphertext).
# Both frontends of vmvaultd: `--frontend ublk` on the whole matrix (what `auto` picks on a
# kernel with ublk), `--frontend fuse` (FUSE file + loop) on a representative subset to
# keep the tier's time down: LUKS1 xts-512, LUKS2 xts-256 at 4096, LUKS2 cbc-essiv at
# 512 (FUSE_CASES). Results are named compat/<frontend>/<case>/<step>; every open checks
# that the volume is served by the frontend asked for (vaultsetup status --json).
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
FUSE_CASES="luks1,aes-xts-plain64,512,512 luks2,aes-xts-plain64,256,4096 luks2,aes-cbc-essiv:sha256,256,512"
vopen() { vaultsetup open --type "$T" --key-file /tmp/pass --backend "$VB" --frontend "$FE" "$@"; }
for FE in ublk fuse; do
if [ "$FE" = fuse ]; then LIST=$FUSE_CASES; else LIST=$CASES; fi
for c in $LIST; do
  # shellcheck disable=SC2046
  set -- $(echo "$c" | tr , ' ')
  T=$1 C=$2 B=$3 S=$4; N=$FE/$(case_name "$T" "$C" "$B" "$S"); DN=$FE-$(case_name "$T" "$C" "$B" "$S"); IMG=/tmp/$DN.img
  echo "== $N (backend $VB, frontend $FE)"
  check "$N/luksFormat" luks_format "$IMG" "$T" "$C" "$B" "$S" || continue
  LOOP=$(loop_attach "$IMG")
  # 1. dm-crypt writes P
  cryptsetup open --key-file /tmp/pass "$LOOP" "dmc-$DN" || { fail "$N/cryptsetup-open"; losetup -d "$LOOP"; continue; }
  SZ=$(bsize "/dev/mapper/dmc-$DN"); MB=$((SZ >> 20))
  pattern /tmp/P "$MB"; pattern /tmp/Q "$MB"
  dd if=/tmp/P of="/dev/mapper/dmc-$DN" bs=1M conv=fsync 2>/dev/null
  settle; cryptsetup close "dmc-$DN"
  cp "$IMG" /tmp/C1
  # 2. vaultsetup reads P, writes Q
  if check "$N/vaultsetup-open" vopen "$LOOP" "vv-$DN"; then
    D=$(vault_dev "vv-$DN")
    echo "  vaultsetup device: $D"
    check "$N/frontend-$FE" frontend_is "vv-$DN" "$FE"
    dropcaches
    dd if="$D" of=/tmp/back bs=1M count="$MB" 2>/dev/null
    check "$N/dmcrypt-to-vault" cmp /tmp/P /tmp/back
    dd if=/tmp/Q of="$D" bs=1M conv=fsync 2>/dev/null
    settle; check "$N/vaultsetup-close" vaultsetup close "vv-$DN"
    # 3. dm-crypt reads Q
    cryptsetup open --readonly --key-file /tmp/pass "$LOOP" "dmc-$DN"
    dropcaches
    dd if="/dev/mapper/dmc-$DN" of=/tmp/back bs=1M 2>/dev/null
    check "$N/vault-to-dmcrypt" cmp /tmp/Q /tmp/back
    settle; cryptsetup close "dmc-$DN"
    # 4. vaultsetup writes P: dm-crypt's ciphertext, byte for byte
    if vopen "$LOOP" "vv-$DN" > /tmp/vo.out 2>&1; then
      dd if=/tmp/P of="$(vault_dev "vv-$DN")" bs=1M conv=fsync 2>/dev/null
      settle; vaultsetup close "vv-$DN"
      check "$N/same-ciphertext" cmp /tmp/C1 "$IMG"
    else
      fail "$N/same-ciphertext" "reopen: $(tail -c 200 /tmp/vo.out | tr '\n' ' ')"
    fi
  fi
  losetup -d "$LOOP"; rm -f "$IMG" /tmp/C1 /tmp/P /tmp/Q /tmp/back
done
done
finish
