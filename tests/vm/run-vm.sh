#!/bin/bash
# Boots the VM tier (QEMU TCG, -cpu max: AMD with SVM, NPT, AES-NI) on the initramfs of
# build-initramfs.sh, streams the serial console to stdout and to target/vm/out/run-*.log
# (path also in target/vm/out/last-run.log), and prints a summary.
# Exit status: 0 when the run finished (@@VMVAULT-DONE) and every RESULT is PASS,
# 1 when a RESULT failed, 2 when the VM did not finish (timeout, crash).
# env: VMVAULT_VM_SUITES=a,b (default: all)  VMVAULT_VM_BACKEND=kvm|soft|auto
#      VMVAULT_VM_TIMEOUT=seconds (whole run, default 840)  VMVAULT_VM_SUITE_TIMEOUT=420 (each suite)  VMVAULT_VM_SMP=2  VMVAULT_VM_MEM=2048
#      QEMU=qemu-system-x86_64
set -euo pipefail
# shellcheck source=tests/vm/common.sh
. "$(dirname "$0")/common.sh"
KVER=$(cat "$VM/kver" 2>/dev/null) || die "run tests/vm/setup.sh first"
KIMG=$OUT/vmlinux-$KVER
INITRD=$OUT/initramfs.cpio.gz
[ -f "$KIMG" ] || die "$KIMG missing: run tests/vm/setup.sh"
[ -f "$INITRD" ] || die "$INITRD missing: run tests/vm/build-initramfs.sh"
QEMU=${QEMU:-qemu-system-x86_64}
command -v "$QEMU" >/dev/null || die "$QEMU not found: run tests/vm/setup.sh"
TMO=${VMVAULT_VM_TIMEOUT:-840}
APPEND="console=ttyS0 quiet panic=-1 vmvault.suite_timeout=${VMVAULT_VM_SUITE_TIMEOUT:-420}"
[ -n "${VMVAULT_VM_SUITES:-}" ] && APPEND="$APPEND vmvault.suites=$VMVAULT_VM_SUITES"
[ -n "${VMVAULT_VM_BACKEND:-}" ] && APPEND="$APPEND vmvault.backend=$VMVAULT_VM_BACKEND"
LOG=$OUT/run-$(date +%Y%m%d-%H%M%S).log
ln -sf "$(basename "$LOG")" "$OUT/last-run.log"
CMD=("$QEMU" -accel tcg -machine q35 -cpu max -smp "${VMVAULT_VM_SMP:-2}" -m "${VMVAULT_VM_MEM:-2048}"
     -nodefaults -no-user-config -display none -serial stdio -monitor none -no-reboot
     -kernel "$KIMG" -initrd "$INITRD" -append "$APPEND")
echo "# ${CMD[*]}" | tee "$LOG"
log "booting (timeout ${TMO}s); serial log: $LOG"
T0=$(now)
set +e
timeout --kill-after=10 "$TMO" "${CMD[@]}" < /dev/null 2>&1 | tr -d '\r' | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e
WALL=$(el "$T0" "$(now)")
npass=$(grep -c 'RESULT [^ ]* PASS' "$LOG" || true)
nfail=$(grep -c 'RESULT [^ ]* FAIL' "$LOG" || true)
echo "# qemu rc=$rc, wall ${WALL} s, ${npass} PASS, ${nfail} FAIL, log $LOG" | tee -a "$LOG"
if ! grep -q '^@@VMVAULT-DONE' "$LOG"; then
  echo "# the VM did not finish (no @@VMVAULT-DONE; timeout ${TMO}s or crash)" | tee -a "$LOG"; exit 2
fi
[ "$nfail" = 0 ] || { grep -o 'RESULT [^ ]* FAIL.*' "$LOG" | sed 's/^RESULT /# FAILED: /'; exit 1; }
