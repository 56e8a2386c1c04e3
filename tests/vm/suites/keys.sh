#!/bin/sh
# Issue 14: volumes born in the vault are dm-crypt volumes, byte for byte. On a loop
# device, for LUKS2 (argon2id, 4096-byte sectors), LUKS2 (pbkdf2, 512) and LUKS1:
#  1. vaultsetup luksFormat (the key generated and sealed in the vault);
#  2. vaultsetup open writes P, close; cryptsetup open (dm-crypt) reads P (vault-to-dmcrypt);
#  3. dm-crypt writes Q; vaultsetup open reads Q (dmcrypt-to-vault);
#  4. vaultsetup luksAddKey (unlocked and sealed in the vault): dm-crypt opens with the
#     new passphrase; vaultsetup luksRemoveKey of the first: it no longer opens.
# And on a cryptsetup-made LUKS2 volume: vaultsetup luksAddKey, dm-crypt opens with it.
# shellcheck source=tests/vm/suites/lib.sh
. /suites/lib.sh
printf 'vmvault-added' > /tmp/pass2
FKDF="--pbkdf pbkdf2 --pbkdf-force-iterations 1000"
vopen() { vaultsetup open --key-file "${2:-/tmp/pass}" --backend "$VB" "$1" vk; }
for c in luks2-argon2id-4k luks2-pbkdf2-512 luks1-xts512; do
  N=$c; IMG=/tmp/$c.img
  echo "== $N (backend $VB)"
  rm -f "$IMG"; truncate -s 24M "$IMG"
  LOOP=$(loop_attach "$IMG")
  case $c in
    luks2-argon2id-4k) A="--type luks2 --sector-size 4096 --pbkdf argon2id --pbkdf-memory 8192 --pbkdf-parallel 1 --pbkdf-force-iterations 4";;
    luks2-pbkdf2-512) A="--type luks2 --sector-size 512 -s 256 $FKDF";;
    luks1-xts512) A="--type luks1 $FKDF";;
  esac
  # shellcheck disable=SC2086
  check "$N/vaultsetup-luksFormat" vaultsetup luksFormat -q --backend "$VB" $A --key-file /tmp/pass "$LOOP" || { run tail -n 20 /run/vmvault/vmvaultd.log; losetup -d "$LOOP"; continue; }
  run cryptsetup luksDump "$LOOP"
  check "$N/cryptsetup-test-passphrase" cryptsetup open --test-passphrase --key-file /tmp/pass "$LOOP"
  if check "$N/vaultsetup-open" vopen "$LOOP"; then
    D=$(vault_dev vk); SZ=$(bsize "$D"); MB=$((SZ >> 20))
    pattern /tmp/P "$MB"; pattern /tmp/Q "$MB"
    dd if=/tmp/P of="$D" bs=1M conv=fsync 2>/dev/null
    settle; check "$N/vaultsetup-close" vaultsetup close vk
    if check "$N/cryptsetup-open" cryptsetup open --key-file /tmp/pass "$LOOP" dmk; then
      dropcaches
      dd if=/dev/mapper/dmk of=/tmp/back bs=1M count="$MB" 2>/dev/null
      check "$N/vault-to-dmcrypt" cmp /tmp/P /tmp/back
      dd if=/tmp/Q of=/dev/mapper/dmk bs=1M count="$MB" conv=fsync 2>/dev/null
      settle; cryptsetup close dmk
      if check "$N/vaultsetup-reopen" vopen "$LOOP"; then
        dropcaches
        dd if="$(vault_dev vk)" of=/tmp/back bs=1M count="$MB" 2>/dev/null
        check "$N/dmcrypt-to-vault" cmp /tmp/Q /tmp/back
        settle; vaultsetup close vk
      fi
    fi
  fi
  # shellcheck disable=SC2086
  check "$N/vaultsetup-luksAddKey" vaultsetup luksAddKey --backend "$VB" $FKDF --key-file /tmp/pass "$LOOP" /tmp/pass2
  if check "$N/dmcrypt-opens-added" cryptsetup open --readonly --key-file /tmp/pass2 "$LOOP" dmk; then
    settle; cryptsetup close dmk
  fi
  check "$N/vaultsetup-luksRemoveKey" vaultsetup luksRemoveKey --backend "$VB" --key-file /tmp/pass "$LOOP"
  if cryptsetup open --test-passphrase --key-file /tmp/pass "$LOOP" 2>/dev/null; then
    fail "$N/removed-does-not-open"
  else
    pass "$N/removed-does-not-open"
  fi
  losetup -d "$LOOP"; rm -f "$IMG" /tmp/P /tmp/Q /tmp/back
done
# A cryptsetup-made volume gets a keyslot from the vault.
N=cryptsetup-made; IMG=/tmp/cs.img
check "$N/luksFormat" luks_format "$IMG" luks2 aes-xts-plain64 512 4096
# shellcheck disable=SC2086
check "$N/vaultsetup-luksAddKey" vaultsetup luksAddKey --backend "$VB" $FKDF --key-file /tmp/pass "$IMG" /tmp/pass2
LOOP=$(loop_attach "$IMG")
if check "$N/dmcrypt-opens-added" cryptsetup open --readonly --key-file /tmp/pass2 "$LOOP" dmk; then
  settle; cryptsetup close dmk
fi
losetup -d "$LOOP"; rm -f "$IMG"
finish
