#!/bin/bash
# The whole test suite: every test, then the ASan/UBSan and TSan builds of every test.
# Ends with one line "N passed, N failed" over all three runs.
set -uo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || echo "test: not root — userfaultfd/KVM tests will print why they skip" >&2
LOG=$(mktemp -d)
pass=0; fail=0; rc_all=0
run() {  # run NAME bazel-args...
  local name=$1; shift
  echo "=== $name: bazel test $* //..."
  bazel test "$@" //... > "$LOG/$name.log" 2>&1
  local rc=$?
  grep -E "PASSED|FAILED|TIMEOUT|NO STATUS|SKIPPED|ERROR|Executed" "$LOG/$name.log" || true
  # Show the log of every failed test.
  for f in $(grep -oE "^//[^ ]+ +(FAILED|TIMEOUT)" "$LOG/$name.log" | awk '{print $1}'); do
    t=${f#//}; t=${t/://}
    echo "----- $f ($name) -----"
    tail -60 "bazel-testlogs/$t/test.log" 2>/dev/null || true
  done
  local p f
  p=$(grep -cE "^//.* PASSED in" "$LOG/$name.log" || true)
  f=$(grep -cE "^//.* (FAILED|TIMEOUT|NO STATUS|FAILED TO BUILD)" "$LOG/$name.log" || true)
  pass=$((pass + p)); fail=$((fail + f))
  if [[ $rc -ne 0 ]]; then
    rc_all=1
    if [[ $f -eq 0 ]]; then fail=$((fail + 1)); echo "$name: bazel exited $rc (build error?)"; tail -30 "$LOG/$name.log"; fi
  fi
}
run default
run asan --config=asan
run tsan --config=tsan
# libFuzzer on every parser (protocol frames, hand-off messages, Firecracker JSON), bounded.
echo "=== fuzz: tools/fuzz.sh ${FUZZ_SECONDS:-20}"
if tools/fuzz.sh "${FUZZ_SECONDS:-20}"; then pass=$((pass + 2)); else fail=$((fail + 2)); rc_all=1; fi
# The guest_memfd kernel series (kernel/): patched v6.18.4 built once (cached by patch set),
# booted under QEMU TCG; its selftest, the upstream suites and faultline's guest_memfd e2e.
echo "=== kernel: kernel/tests/run_kernel_tests.sh"
kout=$(kernel/tests/run_kernel_tests.sh 2>&1); krc=$?
echo "$kout" | tail -25
if [[ $krc -eq 2 ]]; then
  echo "kernel suite skipped (reason above)"
else
  kp=$(echo "$kout" | sed -n 's/^kernel tests: \([0-9]*\) passed, \([0-9]*\) failed.*/\1/p' | tail -1)
  kf=$(echo "$kout" | sed -n 's/^kernel tests: \([0-9]*\) passed, \([0-9]*\) failed.*/\2/p' | tail -1)
  pass=$((pass + ${kp:-0})); fail=$((fail + ${kf:-1}))
  [[ $krc -eq 0 ]] || rc_all=1
fi
# The RDMA transport on real verbs (tests/rdma/): soft-RoCE in Debian's 6.1 kernel under QEMU
# TCG — unit tests, an e2e migration over rxe, RDMA vs TCP. ~4.5 min once cached.
echo "=== rdma: tests/rdma/run_rdma_tests.sh"
rout=$(tests/rdma/run_rdma_tests.sh 2> "$LOG/rdma.log"); rrc=$?
echo "$rout" | tail -1
if [[ $rrc -eq 2 ]]; then
  echo "rdma suite skipped (reason above)"
elif [[ $rrc -eq 0 ]]; then
  pass=$((pass + 1))
else
  fail=$((fail + 1)); rc_all=1; tail -40 "$LOG/rdma.log"
fi
# QEMU with faultline's series (built once, cached by series in ~/.cache/faultline/qemu):
# QEMU-to-QEMU post-copy through faultline + QEMU's own migration-test post-copy cases, then
# the libvirt driver against two real libvirtd daemons. Lines: PASS:/FAIL:/SKIP:.
echo "=== qemu: qemu-integration/qemu/run_qemu_migration.sh"
qout=$(qemu-integration/qemu/run_qemu_migration.sh 2> "$LOG/qemu.log"); qrc=$?
echo "$qout" | grep -E "^(PASS|FAIL|SKIP)"
qp=$(echo "$qout" | grep -c "^PASS" || true); qf=$(echo "$qout" | grep -c "^FAIL" || true)
if [[ $qrc -ne 0 && $qf -eq 0 ]]; then qf=1; tail -20 "$LOG/qemu.log"; fi
pass=$((pass + qp)); fail=$((fail + qf)); [[ $qf -eq 0 ]] || rc_all=1
echo "=== libvirt: tests/libvirt/run_libvirt_tests.sh"
lout=$(tests/libvirt/run_libvirt_tests.sh 2> "$LOG/libvirt.log"); lrc=$?
echo "$lout" | grep -E "^(PASS|FAIL|SKIP)|libvirt (tests|suite)"
if [[ $lrc -eq 2 ]]; then
  echo "libvirt suite skipped (reason above)"
else
  lp=$(echo "$lout" | sed -n 's/^libvirt tests: \([0-9]*\) passed, \([0-9]*\) failed.*/\1/p' | tail -1)
  lf=$(echo "$lout" | sed -n 's/^libvirt tests: \([0-9]*\) passed, \([0-9]*\) failed.*/\2/p' | tail -1)
  pass=$((pass + ${lp:-0})); fail=$((fail + ${lf:-1}))
  if [[ $lrc -ne 0 ]]; then rc_all=1; tail -20 "$LOG/libvirt.log"; fi
fi
echo "${pass} passed, ${fail} failed"
exit $rc_all
