# Helpers sourced by every suite (busybox ash). SUITE is set by /init.
# shellcheck shell=dash disable=SC2034
: "${SUITE:?run by /init}"
FAILS=0
pass() { echo "RESULT $SUITE/$1 PASS${2:+ $2}"; }
fail() { echo "RESULT $SUITE/$1 FAIL${2:+ $2}"; FAILS=$((FAILS + 1)); }
# check NAME CMD...: PASS when CMD succeeds, else FAIL with the tail of its output
check() {
  _n=$1; shift
  if "$@" > /tmp/.check.out 2>&1; then pass "$_n"; return 0; fi
  fail "$_n" "$* => $(tail -c 300 /tmp/.check.out | tr '\n' ' ')"; return 1
}
# run CMD... with its output indented in the log, returning its status
run() { echo "  \$ $*"; "$@" > /tmp/.run.out 2>&1; _rc=$?; sed 's/^/    /' /tmp/.run.out; return $_rc; }
now() { cut -d' ' -f1 /proc/uptime; }
el() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
settle() { [ -x /bin/udevadm ] && udevadm settle --timeout=30; true; }
dropcaches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# a file of N MiB of random bytes
pattern() { dd if=/dev/urandom of="$1" bs=1M count="$2" 2>/dev/null; }
# size in bytes of a block device
bsize() { blockdev --getsize64 "$1"; }
# loop_attach FILE [-r]: attaches FILE to a free loop device and prints it (busybox losetup
# has no --show)
loop_attach() { _l=$(losetup -f) && losetup ${2:+"$2"} "$_l" "$1" && echo "$_l"; }
# the test passphrase and the cheap KDF settings (TCG is slow; the KDF is not under test here)
printf 'vmvault-vm-tier' > /tmp/pass
KDF1="--pbkdf-force-iterations 1000 --hash sha256"
KDF2="--pbkdf pbkdf2 --pbkdf-force-iterations 1000 --hash sha256"
# The dm-crypt compatibility matrix: type,cipher,key bits,sector size
CASES="luks1,aes-xts-plain64,256,512 luks1,aes-xts-plain64,512,512 luks1,aes-cbc-essiv:sha256,256,512
luks2,aes-xts-plain64,256,512 luks2,aes-xts-plain64,512,512 luks2,aes-xts-plain64,256,4096
luks2,aes-xts-plain64,512,4096 luks2,aes-cbc-essiv:sha256,256,512 luks2,aes-cbc-essiv:sha256,256,4096"
# case_name TYPE CIPHER BITS SS -> e.g. luks2-xts256-4k
case_name() {
  _c=$(echo "$2" | sed 's/^aes-//; s/-plain64//; s/cbc-essiv:sha256/cbcessiv/')
  _s=$4; [ "$4" = 4096 ] && _s=4k
  echo "$1-$_c$3-$_s"
}
# luks_format IMG TYPE CIPHER BITS SS: an 8 MiB image, 2 MiB header area, 6 MiB of data
luks_format() {
  rm -f "$1"; truncate -s 8M "$1"
  if [ "$2" = luks1 ]; then
    # shellcheck disable=SC2086
    cryptsetup luksFormat -q --type luks1 --cipher "$3" --key-size "$4" $KDF1 --offset 4096 --key-file /tmp/pass "$1"
  else
    # shellcheck disable=SC2086
    cryptsetup luksFormat -q --type luks2 --cipher "$3" --key-size "$4" --sector-size "$5" $KDF2 --offset 4096 --key-file /tmp/pass "$1"
  fi
}
# vaultsetup's backend for this run (kernel arg vmvault.backend=kvm|soft|auto)
VB=${VAULT_BACKEND:-auto}
# the plaintext device of an open vaultsetup volume: /dev/mapper/NAME, else status --json's
vault_dev() {
  if [ -b "/dev/mapper/$1" ]; then echo "/dev/mapper/$1"; return; fi
  vaultsetup status --json "$1" 2>/dev/null | tr ',' '\n' | sed -n 's/.*"device" *: *"\([^"]*\)".*/\1/p' | head -1
}
# does `vaultsetup open` exist yet (issue 5)? prints the reason when it does not
vault_open_missing() {
  if vaultsetup open --help 2>&1 | grep -q 'only .--test-passphrase. is available'; then
    echo "vaultsetup open DEVICE NAME is not wired yet (issue 5)"; return 0
  fi
  return 1
}
# frontend_is NAME FRONTEND: vaultsetup status --json reports FRONTEND (ublk|fuse) for NAME
frontend_is() {
  _j=$(vaultsetup status --json "$1" 2>&1 | tr -d ' \n')
  case $2:$_j in
    ublk:*'"frontend":"ublk"'*|fuse:*'"frontend":"fuse+loop"'*) return 0;;
  esac
  echo "want frontend $2, status: $_j"; return 1
}
# pid of the vmvaultd of run dir $1 (default /run/vmvault)
daemon_pid() { cat "${1:-/run/vmvault}/vmvaultd.pid" 2>/dev/null; }
finish() { echo "  $SUITE: $FAILS failure(s)"; [ "$FAILS" = 0 ]; }
