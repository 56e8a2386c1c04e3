#!/bin/sh
# dracut cmdline hook of 90vmvault. rd.vmvault=0 turns the module off for this boot.
# Under systemd, vmvault-generator reads /etc/vaulttab and the rd.vmvault.* options itself.
# Without systemd this hook gathers the entries (the image's /etc/vaulttab unless
# rd.vmvault.vaulttab=0, then rd.vmvault.name=, rd.vmvault.uuid=) and writes
# /etc/udev/rules.d/70-vmvault.rules: when an entry's device appears, udev queues
# /sbin/vmvault-attach for it; the main loop waits for /dev/mapper/NAME (not for nofail).
#   rd.vmvault.uuid=UUID            the volume with that LUKS UUID, named vmvault-UUID
#   rd.vmvault.name=UUID=NAME       the same, named NAME (systemd's rd.luks.name form)
#   rd.vmvault.name=NAME=DEVICE     NAME on DEVICE (a path, UUID=, PARTUUID=, LABEL=, ...)
#   rd.vmvault.key=[UUID=]KEYFILE   rd.vmvault.options=[UUID=]OPTIONS (all, or that volume's)

# shellcheck source=/dev/null
command -v getargbool > /dev/null || . /lib/dracut-lib.sh


# _vmvault_for UUID LIST: the value in LIST given for UUID (UUID=VALUE), else the value
# given for all (VALUE alone).
_vmvault_for() {
    _vf_all=
    for _vf in $2; do
        case "$_vf" in
            "$1"=*) printf '%s' "${_vf#"$1"=}"; return 0 ;;
            *=*) case "${_vf%%=*}" in *-*-*-*-*) continue ;; esac; _vf_all=$_vf ;;
            *) _vf_all=$_vf ;;
        esac
    done
    printf '%s' "$_vf_all"
}

_vmvault_match() {
    case "$1" in
        UUID=*) printf 'ENV{ID_FS_UUID}=="%s"' "${1#UUID=}" ;;
        PARTUUID=*) printf 'ENV{ID_PART_ENTRY_UUID}=="%s"' "${1#PARTUUID=}" ;;
        LABEL=*) printf 'ENV{ID_FS_LABEL}=="%s"' "${1#LABEL=}" ;;
        PARTLABEL=*) printf 'ENV{ID_PART_ENTRY_NAME}=="%s"' "${1#PARTLABEL=}" ;;
        /dev/disk/*) printf 'SYMLINK=="%s"' "${1#/dev/}" ;;
        /dev/*) printf 'KERNEL=="%s"' "${1#/dev/}" ;;
        *) return 1 ;;
    esac
}

# _vmvault_entry NAME DEVICE KEY OPTIONS (as in vaulttab, mangled)
_vmvault_entry() {
    if ! _ve_match=$(_vmvault_match "$2"); then
        warn "vmvault: $1: device $2 is not a path or UUID=, PARTUUID=, LABEL=, PARTLABEL="
        return 0
    fi
    case ",$4," in *,noauto,*) return 0 ;; esac
    printf '%s, RUN+="%s --onetime --unique --settled --name vmvault-attach-%s %s %s %s %s %s"\n' \
        "$_ve_match" "$(command -v initqueue)" "$1" "/sbin/vmvault-attach" "$1" "$2" "${3:-none}" "${4:-defaults}"
    case ",$4," in
        *,nofail,*) ;;
        *) wait_for_dev -n "/dev/mapper/$1" >&2 ;;
    esac
}

_vmvault_rules() {
    echo 'SUBSYSTEM!="block", GOTO="vmvault_end"'
    echo 'ACTION!="add|change", GOTO="vmvault_end"'
    if getargbool 1 rd.vmvault.vaulttab && [ -f /etc/vaulttab ]; then
        while read -r _n _d _k _o || [ -n "$_n" ]; do
            case "$_n" in "" | \#*) continue ;; esac
            _vmvault_entry "$_n" "$_d" "$_k" "$_o"
        done < /etc/vaulttab
    fi
    for _v in $(getargs rd.vmvault.uuid); do
        _v=${_v#vmvault-}
        _vmvault_entry "vmvault-$_v" "UUID=$_v" "$(_vmvault_for "$_v" "$_vmvault_keys")" \
            "$(_vmvault_for "$_v" "$_vmvault_opts")"
    done
    for _v in $(getargs rd.vmvault.name); do
        _l=${_v%%=*}
        _r=${_v#*=}
        case "$_l" in
            *-*-*-*-*) _vmvault_entry "$_r" "UUID=$_l" "$(_vmvault_for "$_l" "$_vmvault_keys")" \
                "$(_vmvault_for "$_l" "$_vmvault_opts")" ;;
            *) _vmvault_entry "$_l" "$_r" "$(_vmvault_for "$_l" "$_vmvault_keys")" \
                "$(_vmvault_for "$_l" "$_vmvault_opts")" ;;
        esac
    done
    echo 'LABEL="vmvault_end"'
}

if ! getargbool 1 rd.vmvault; then
    info "rd.vmvault=0: vmvault volumes are not attached in the initramfs"
    rm -f -- /etc/udev/rules.d/70-vmvault.rules /etc/vaulttab
elif [ -z "$DRACUT_SYSTEMD" ]; then
    _vmvault_keys=$(getargs rd.vmvault.key)
    _vmvault_opts=$(getargs rd.vmvault.options)
    _vmvault_rules > /etc/udev/rules.d/70-vmvault.rules.new
    mv /etc/udev/rules.d/70-vmvault.rules.new /etc/udev/rules.d/70-vmvault.rules
fi
unset _n _d _k _o _v _l _r _vmvault_keys _vmvault_opts
