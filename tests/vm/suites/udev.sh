#!/bin/sh
# udev runs in the VM and names an opened vaultsetup volume
# /dev/disk/by-id/dm-name-NAME (issue 7, acceptance 5); the link goes away on close.
# shellcheck source=tests/vm/suites/lib.sh
. /suites/lib.sh
check udevd-running pidof systemd-udevd
if why=$(vault_open_missing); then fail vaultsetup-open "$why"; finish; exit; fi
luks_format /tmp/u.img luks1 aes-xts-plain64 256 512 > /dev/null 2>&1 || fail luksFormat
check open vaultsetup open --type luks1 --key-file /tmp/pass --backend "$VB" /tmp/u.img vmvu || { finish; exit; }
settle
L=/dev/disk/by-id/dm-name-vmvu
if [ -L "$L" ]; then pass by-id-link "$L -> $(readlink "$L")"; else fail by-id-link "no $L; by-id: $(find /dev/disk/by-id -name 'dm-*' 2>&1 | tr '\n' ' ')"; fi
if [ ! -L "$L" ]; then
  echo "  udev properties of /dev/mapper/vmvu (DM_UDEV_DISABLE_DISK_RULES_FLAG=1 suppresses the link):"
  udevadm info --query=property --name=/dev/mapper/vmvu 2>&1 | grep -E '^(DM_|DEVNAME|DEVLINKS)' | sed 's/^/    /'
fi
check by-id-same-device sh -c "[ \"\$(readlink -f $L)\" = \"\$(readlink -f /dev/mapper/vmvu)\" ]"
check close vaultsetup close vmvu
settle
check by-id-link-gone sh -c "[ ! -e $L ]"
finish
