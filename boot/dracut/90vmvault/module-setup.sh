#!/bin/bash
# shellcheck disable=SC2154  # dracutsysrootdir, initdir, moddir, systemd*dir: set by dracut
# dracut module 90vmvault: attaches vmvault volumes (/etc/vaulttab, rd.vmvault.*) in the
# initramfs, the root volume among them, and hands the serving vmvaultd over to the real
# root. With dracut's systemd module the initrd runs vmvault-generator (units per entry) and
# vmvault-switch-root.service; without it, parse-vmvault.sh writes a udev rule that queues
# vmvault-attach for each entry's device, and a pre-pivot hook does the hand-over.

# vmvault_host_volumes: the names of the vmvault volumes (device-mapper uuid VMVAULT-*)
# among the host devices dracut needs (root, /usr, resume, ... and what they sit on).
vmvault_host_volumes() {
    local dev majmin
    # shellcheck disable=SC2154  # host_devs is dracut's
    for dev in "${host_devs[@]}"; do
        majmin=$(get_maj_min "$dev" 2> /dev/null) || continue
        _vmvault_names "/sys/dev/block/$majmin"
    done
}

_vmvault_names() {
    local d slave
    d=$(readlink -f "$1") || return 0
    for slave in "$d"/slaves/*; do
        [[ -e $slave ]] && _vmvault_names "$slave"
    done
    if [[ -r $d/dm/uuid && $(< "$d/dm/uuid") == VMVAULT-* ]]; then
        cat "$d/dm/name"
    fi
}

# vmvault_vaulttab: the host's vaulttab.
vmvault_vaulttab() {
    printf '%s' "$dracutsysrootdir${VMVAULT_VAULTTAB:-/etc/vaulttab}"
}

# called by dracut
check() {
    require_binaries vaultsetup vmvaultd || return 1
    if [[ $hostonly ]] || [[ $mount_needs ]]; then
        [[ -n "$(vmvault_host_volumes)" ]] && return 0
        [[ -f "$(vmvault_vaulttab)" ]] && grep -q 'x-initrd\.attach' "$(vmvault_vaulttab)" && return 0
        return 255
    fi
    # A generic image gets the module where a vaulttab exists (or with --add vmvault).
    [[ -f "$(vmvault_vaulttab)" ]] && return 0
    return 255
}

# called by dracut
depends() {
    echo dm rootfs-block udev-rules
    return 0
}

# called by dracut
installkernel() {
    # fuse is built into many kernels; kvm_intel/kvm_amd are optional (soft backend).
    hostonly='' instmods -o kvm kvm_intel kvm_amd fuse loop dm_mod ublk_drv
}

# called by dracut
install() {
    local name dev key opts uname uopts needed tab
    inst_multiple vaultsetup vmvaultd
    inst_multiple -o /usr/lib/vmvault/vmvault-udev
    inst_rules 59-vmvault.rules 60-vmvault-vaulttab.rules

    # The entries the initramfs attaches: in host-only mode those of the host's vmvault
    # volumes under its root, /usr and resume devices, and x-initrd.attach ones. Key files are
    # not copied (add them with install_items+=" /path " in dracut.conf.d when wanted).
    tab=$(vmvault_vaulttab)
    if [[ $hostonly && -f $tab ]]; then
        needed=" $(vmvault_host_volumes | tr '\n' ' ') "
        while read -r name dev key opts || [[ -n $name ]]; do
            [[ -z $name || $name == \#* ]] && continue
            printf -v uname '%b' "$name"
            printf -v uopts '%b' "$opts"
            if [[ $needed == *" $uname "* || ",$uopts," == *,x-initrd.attach,* ]]; then
                printf '%s %s %s %s\n' "$name" "$dev" "$key" "${opts:-defaults}"
            fi
        done < "$tab" > "$initdir/etc/vaulttab"
        mark_hostonly /etc/vaulttab
    fi

    inst_hook cmdline 30 "$moddir/parse-vmvault.sh"
    if dracut_module_included "systemd"; then
        # Not vmvaultd.service/.socket: a daemon started by a unit of the initrd would be
        # stopped at the switch to the real root. Without the socket, the first attach starts
        # `vmvaultd --initrd` itself (@vmvaultd: spared at switch-root and shutdown).
        inst_multiple -o \
            "$systemdutildir"/system-generators/vmvault-generator \
            "$systemdsystemunitdir"/cryptsetup.target \
            "$systemdsystemunitdir"/remote-cryptsetup.target \
            "$systemdsystemunitdir"/systemd-ask-password-console.path \
            "$systemdsystemunitdir"/systemd-ask-password-console.service \
            systemd-ask-password systemd-tty-ask-password-agent
        inst_simple "$moddir/vmvault-switch-root.service" \
            "$systemdsystemunitdir/vmvault-switch-root.service"
        $SYSTEMCTL -q --root "$initdir" add-wants initrd-switch-root.target vmvault-switch-root.service
    else
        inst_script "$moddir/vmvault-attach.sh" /sbin/vmvault-attach
        inst_hook pre-pivot 90 "$moddir/vmvault-switch-root.sh"
        inst_multiple -o plymouth
    fi
    dracut_need_initqueue
}
