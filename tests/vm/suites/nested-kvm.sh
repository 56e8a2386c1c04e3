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
NESTED_SKIP="kvm_request_rewritten_while_the_vault_reads_it drop_races_with_use"
echo "    not run under TCG's nested SVM (host tier runs them): $NESTED_SKIP"
for t in /vault-tests/*; do
  [ -x "$t" ] || continue
  n=$((n + 1)); b=$(basename "$t")
  # #[ignore] tests are helper processes their own tests start: not run on their own
  "$t" --list --ignored --format=terse 2>/dev/null | sed -n 's/: test$//p' > "/tmp/$b.ignored"
  # The racing tests, where host threads rewrite shared memory while the vault's vCPUs
  # read it, are not run here: under TCG's emulated SVM they have panicked the L1 kernel
  # ("corrupted stack end detected inside scheduler") and faulted the L2 vault (Fault(1))
  # while passing on the host's KVM every time. They run in the host tier of every CI run.
  for x in $NESTED_SKIP; do echo "$x"; done >> "/tmp/$b.ignored"
  "$t" --list --format=terse 2>/dev/null | sed -n 's/: test$//p' \
    | awk 'FILENAME == ARGV[1] { ign[$0] = 1; next } !($0 in ign)' "/tmp/$b.ignored" - > "/tmp/$b.list"
  [ -s "/tmp/$b.list" ] || fail "$b/list" "no tests listed by $t --list"
  # one process per test: a RESULT each, with its time
  while read -r name; do
    t0=$(now)
    # CI=1: the tests fail (not skip) without a usable /dev/kvm
    CI=1 RUST_BACKTRACE=1 "$t" --exact "$name" --test-threads=1 --nocapture > /tmp/t.out 2>&1; rc=$?
    secs=$(el "$t0" "$(now)")
    if [ $rc = 0 ] && grep -q '^test result: ok. 1 passed' /tmp/t.out; then
      if grep -q SKIPPED /tmp/t.out; then fail "$b::$name" "skipped inside the VM: $(grep SKIPPED /tmp/t.out | head -1)"
      else pass "$b::$name" "$secs s"; fi
    else
      sed 's/^/    /' /tmp/t.out | tail -40
      fail "$b::$name" "exit $rc after $secs s (output above)"
    fi
  done < "/tmp/$b.list"
done
[ $n -gt 0 ] || fail vault-test-executables "none in /vault-tests (build-initramfs.sh builds them)"
finish
