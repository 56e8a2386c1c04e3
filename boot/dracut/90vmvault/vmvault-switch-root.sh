#!/bin/sh
# dracut pre-pivot hook of 90vmvault (initramfs without systemd): the root is mounted at
# $NEWROOT. The vmvaultd serving the volumes chroots into it before switch_root moves /run,
# /dev, /proc and /sys there (see boot/README.md of vmvault).

# shellcheck source=/dev/null
command -v warn > /dev/null || . /lib/dracut-lib.sh

if [ -e /run/vmvault/initrd ] || [ -S /run/vmvault/control ]; then
    vaultsetup switch-root "${NEWROOT:-/sysroot}" \
        || warn "vmvault: vmvaultd did not move into ${NEWROOT:-/sysroot}; its volumes stay open"
fi
