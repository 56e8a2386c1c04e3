#!/bin/sh
# vmvault-hv's kvm backend on nested KVM (kvm_amd on the emulated AMD CPU with SVM, NPT
# and AES-NI): the self-test tool, then vmvault-hv's own test executables (the vault
# suite: equivalence, key life cycle, hostile requests), one RESULT per test.
# shellcheck source=tests/vm/suites/lib.sh
. /suites/lib.sh
check kvm-device test -c /dev/kvm || { finish; exit; }
if vmvault-hv --selftest --backend kvm > /tmp/st.out 2>&1; then st=0; else st=1; fi
sed 's/^/    /' /tmp/st.out | cut -c1-160
if [ $st = 0 ] && grep -q '^selftest: ok' /tmp/st.out && grep -q '^backend: kvm' /tmp/st.out; then
  pass selftest-kvm "$(grep -E '^(protection|open time)' /tmp/st.out | tr '\n' ' ')"
else
  fail selftest-kvm "$(tail -c 300 /tmp/st.out | tr '\n' ' ')"
fi
eng=$(sed -n 's/^engine in vault: //p' /tmp/st.out)
case $eng in aesni|vaes*) pass engine-aes-ni "engine in vault: $eng";; *) fail engine-aes-ni "engine in vault: '$eng' (want aesni or vaes)";; esac
check selftest-soft vmvault-hv --selftest --backend soft
n=0
for t in /vault-tests/*; do
  [ -x "$t" ] || continue
  n=$((n + 1)); b=$(basename "$t"); t0=$(now)
  # CI=1: the tests fail (not skip) without a usable /dev/kvm
  CI=1 RUST_BACKTRACE=1 "$t" --test-threads=1 > "/tmp/$b.out" 2>&1; rc=$?
  sed 's/^/    /' "/tmp/$b.out" | grep -v '^    $'
  grep -E '^test .* \.\.\. (ok|FAILED|ignored)$' "/tmp/$b.out" | while read -r _ name _ res; do
    case $res in ok) pass "$b::$name";; ignored) ;; *) fail "$b::$name" "see the log above";; esac
  done
  if [ $rc = 0 ]; then pass "$b" "$(el "$t0" "$(now)") s"; else fail "$b" "exit $rc after $(el "$t0" "$(now)") s"; fi
  if grep -q SKIPPED "/tmp/$b.out"; then fail "$b-no-skips" "a test skipped inside the VM"; fi
done
[ $n -gt 0 ] || fail vault-test-executables "none in /vault-tests (build-initramfs.sh builds them)"
finish
