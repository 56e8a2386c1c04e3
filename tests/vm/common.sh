# Shared settings of the VM tier scripts (sourced, not run).
# VM: the cache/work directory (default <repo>/target/vm, override with VMVAULT_VM_DIR).
# shellcheck shell=bash disable=SC2034
VM_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$VM_SRC/../.." && pwd)
VM=${VMVAULT_VM_DIR:-$REPO/target/vm}
ROOT=$VM/root          # every userland .deb extracted into one tree
KROOT=$VM/kernel       # the kernel .deb extracted
OUT=$VM/out            # vmlinux, initramfs, logs
APTD=$VM/apt           # private apt state (system sources + bookworm-backports)
APTO=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$APTD/etc"
      -o "Dir::State::Lists=$APTD/lists" -o "Dir::Cache=$APTD/cache")
HOST_LIBDIRS="$ROOT/lib/x86_64-linux-gnu:$ROOT/usr/lib/x86_64-linux-gnu"
log() { echo "vm-tier: $*" >&2; }
die() { echo "vm-tier: ERROR: $*" >&2; exit 1; }
now() { date +%s.%N; }
el() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
