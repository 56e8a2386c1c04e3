#!/bin/sh
# The harness itself: CPU features of -cpu max, kernel modules, device nodes, the kernel
# keyring, udevd. Every other suite stands on this one (it always runs first).
# shellcheck source=tests/vm/suites/lib.sh
. /suites/lib.sh
echo "  kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
for f in aes svm npt pclmulqdq avx2 vaes; do
  case "$FLAGS" in *" $f "*) pass "cpuflag-$f";; *) fail "cpuflag-$f" "-cpu max should offer $f";; esac
done
for m in loop dm_mod dm_crypt brd nbd ublk_drv aesni_intel xts essiv ext4 kvm kvm_amd af_alg algif_skcipher; do
  check "modprobe-$m" modprobe "$m"
done
for d in /dev/mapper/control /dev/loop-control /dev/ublk-control /dev/nbd0 /dev/kvm /dev/fuse; do
  if [ -c "$d" ] || [ -b "$d" ]; then pass "dev-${d#/dev/}"; else fail "dev-${d#/dev/}" "$d is missing"; fi
done
check crypto-aesni sh -c "grep -A2 'name *: xts(aes)' /proc/crypto | grep -q aesni"
check keyring sh -c '[ -e /proc/keys ]'
t=$(now); mkdir -p /run/udev
if /lib/systemd/systemd-udevd --daemon --resolve-names=never > /tmp/udevd.log 2>&1 \
   && udevadm trigger --action=add && udevadm settle --timeout=60; then
  pass udevd "started, trigger+settle in $(el "$t" "$(now)") s"
else
  fail udevd "$(tail -c 300 /tmp/udevd.log | tr '\n' ' ')"
fi
check cryptsetup-runs cryptsetup --version
check dmsetup-runs dmsetup version
check vaultsetup-runs vaultsetup --version
check vmvaultd-present test -x /usr/sbin/vmvaultd
finish
