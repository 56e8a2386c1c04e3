#!/bin/sh
# /sbin/vmvault-attach NAME DEVICE KEY OPTIONS (vaulttab fields, mangled): run from dracut's
# initqueue (queued by 70-vmvault.rules) when the device of a vmvault entry appears, in a
# dracut initramfs without systemd. `vaultsetup attach` starts vmvaultd --initrd, asks on
# the console (or through plymouth) and honours tries=. A failed entry without nofail stops
# the boot with a message (dracut's emergency shell).

# shellcheck source=/dev/null
command -v getarg > /dev/null || . /lib/dracut-lib.sh

name=$(printf '%b' "$1")
dev=$(printf '%b' "$2")
key=$(printf '%b' "$3")
opts=$(printf '%b' "$4")

[ -b "/dev/mapper/$name" ] && exit 0
modprobe -q dm_mod
modprobe -q loop
modprobe -q fuse
modprobe -q ublk_drv
modprobe -q kvm_intel || modprobe -q kvm_amd
mkdir -p /run/vmvault

if vaultsetup attach "$name" "$dev" "$key" "$opts" < /dev/console > /dev/console 2>&1; then
    info "vmvault: $name: set up successfully"
    exit 0
else
    rc=$?
fi
# The hotplug rule (60-vmvault-vaulttab.rules, key-file entries) may have won the race.
if [ -b "/dev/mapper/$name" ]; then
    info "vmvault: $name: already set up"
    exit 0
fi
case ",$opts," in
    *,nofail,*)
        warn "vmvault: $name: attach failed (exit $rc); going on (nofail)"
        exit 0
        ;;
esac
die "vmvault: cannot unlock $name ($dev): vaultsetup attach failed (exit $rc). The boot stops here."
