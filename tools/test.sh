#!/bin/bash
# The whole test suite: every test (plain, ASan/UBSan, TSan builds), the fuzzers, the kernel
# series in its VM, the RDMA suite on soft-RoCE in a VM, the QEMU and libvirt suites — and, on
# a host without /dev/kvm, every KVM test inside a VM that has one (tests/vm/run_kvm_tests.sh);
# on a host whose KVM has no guest_memfd, the guest_memfd cases there.
#
# Every part records its test *cases* (tools/test_report.py): a case skipped inside a passing
# target counts as skipped, a suite skipped as a whole too, each with its reason printed above
# the closing line
#     N passed, N failed, N skipped
# A skip this machine could have avoided (huge pages, a tool tools/setup.sh installs) counts as
# failed. Exit status 0 only if nothing failed.
#
# Environment: FAULTLINE_HIDE_KVM=1 runs as if the host had no /dev/kvm (the KVM tests then run
# in the KVM VM); FAULTLINE_HUGEPAGES (default 96) huge pages reserved for the run; FUZZ_SECONDS.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
[[ $(id -u) -eq 0 ]] || echo "test: not root — userfaultfd/KVM tests will print why they skip" >&2
LOG=$(mktemp -d /tmp/faultline-test.XXXXXX)
export FAULTLINE_RESULTS=$LOG/results.tsv
: >"$FAULTLINE_RESULTS"
REPORT=tools/test_report.py
T0=$(date +%s)
took() { echo "    ($1: $(($(date +%s) - $2)) s; $(($(date +%s) - T0)) s since the start)"; }

# --- huge pages: reserved here, before Bazel (its sandbox cannot raise them), given back after
NR=/proc/sys/vm/nr_hugepages
if [[ -w $NR ]]; then
  HP_BEFORE=$(cat $NR)
  HP_WANT=${FAULTLINE_HUGEPAGES:-96}
  if ((HP_BEFORE < HP_WANT)); then
    echo "$HP_WANT" >$NR
    trap 'echo "$HP_BEFORE" > '"$NR"'; echo "test: vm.nr_hugepages back to $HP_BEFORE"' EXIT
  fi
  echo "test: $(awk '/HugePages_Free/{print $2}' /proc/meminfo) free 2 MiB huge pages (vm.nr_hugepages $(cat $NR), was $HP_BEFORE)"
fi

# --- KVM: where the host has none, the KVM tests run in a VM that has (see the end)
HAVE_KVM=1
TEST_ENV=()
if [[ -n ${FAULTLINE_HIDE_KVM:-} ]]; then
  HAVE_KVM=0
  TEST_ENV=(--test_env=FAULTLINE_HIDE_KVM=1)
  echo "test: FAULTLINE_HIDE_KVM is set: running as if this host had no /dev/kvm"
elif [[ ! -w /dev/kvm ]]; then
  HAVE_KVM=0
  echo "test: no usable /dev/kvm here$(dmesg 2>/dev/null | grep -m1 -o 'kvm-pvm:.*not binding' | sed 's/^/ (/; s/$/)/'): the KVM tests run in a VM with nested SVM"
fi

run_bazel() { # NAME bazel-flags...
  local name=$1 t=$(date +%s)
  shift
  echo "=== $name: bazel test $* //..."
  # rdma-tagged tests need an RDMA device: the RDMA suite runs them in its VM.
  bazel test "$@" "${TEST_ENV[@]}" --nocache_test_results --test_tag_filters=-rdma //... \
    >"$LOG/$name.log" 2>&1
  local rc=$?
  grep -E "FAILED|TIMEOUT|NO STATUS|ERROR|Executed" "$LOG/$name.log" || true
  for f in $(grep -oE "^//[^ ]+ +(FAILED|TIMEOUT)" "$LOG/$name.log" | awk '{print $1}'); do
    local tl
    tl=$(bazel info "$@" bazel-testlogs 2>/dev/null)/${f#//}
    echo "----- $f ($name) -----"
    tail -60 "${tl/://}/test.log" 2>/dev/null || true
  done
  ((rc == 0 || rc == 3)) || { echo "$name: bazel exited $rc (build error?)"; tail -30 "$LOG/$name.log"; }
  python3 $REPORT bazel "$name" "$LOG/$name.log" "$(bazel info "$@" bazel-testlogs 2>/dev/null)" \
    "$FAULTLINE_RESULTS"
  took "$name" "$t"
}
run_bazel default
run_bazel asan --config=asan
run_bazel tsan --config=tsan

# libFuzzer on every parser (protocol frames, hand-off messages, Firecracker JSON), bounded.
echo "=== fuzz: tools/fuzz.sh ${FUZZ_SECONDS:-20}"
t=$(date +%s)
if tools/fuzz.sh "${FUZZ_SECONDS:-20}" >"$LOG/fuzz.log" 2>&1; then
  python3 $REPORT add pass fuzz "protocol + handoff fuzzers" "" "$FAULTLINE_RESULTS"
else
  tail -20 "$LOG/fuzz.log"
  python3 $REPORT add fail fuzz "protocol + handoff fuzzers" "see $LOG/fuzz.log" "$FAULTLINE_RESULTS"
fi
took fuzz "$t"

# The benchmark report's own unit tests (figures and targets from results.json).
echo "=== scripts: bench/e2e/compare_postcopy_test.py"
t=$(date +%s)
python3 bench/e2e/compare_postcopy_test.py -v 2>&1 | tee "$LOG/scripts.log" |
  sed -nE 's/^(test_[a-z0-9_]+) .*\.\.\. ok$/PASS: \1/p; s/^(test_[a-z0-9_]+) .*\.\.\. (FAIL|ERROR)$/FAIL: \1/p; s/^(test_[a-z0-9_]+) .*\.\.\. skipped (.*)$/SKIP: \1: \2/p' |
  python3 $REPORT lines scripts "$FAULTLINE_RESULTS"
grep -E "^(Ran|OK|FAILED)" "$LOG/scripts.log"
took scripts "$t"

# The KVM tests where this host has no KVM: every kvm-tagged target, each build, in the VM.
if ((HAVE_KVM == 0)); then
  echo "=== kvm-vm: tests/vm/run_kvm_tests.sh --parts=default,asan,tsan"
  t=$(date +%s)
  tests/vm/run_kvm_tests.sh --parts=default,asan,tsan 2>"$LOG/kvm-vm.log" | tail -42
  took kvm-vm "$t"
fi

# A host whose KVM has no guest_memfd (seen: kvm_pvm with KVM_CAP_GUEST_MEMFD 0): the
# guest_memfd cases it skipped above run in the VM, whose 6.18 KVM has it — the targets taken
# from those skips, so a new such case needs no list here. The rest ran on this host.
GMEM_TARGETS=""
if ((HAVE_KVM == 1)); then
  GMEM_TARGETS=$(awk -F'\t' '$1 == "skip" && $3 ~ / [^ ]*GuestMemfd/ { split($3, c, " "); print c[1] }' \
    "$FAULTLINE_RESULTS" | sort -u | tr '\n' ' ')
fi
if [[ -n $GMEM_TARGETS ]]; then
  echo "=== kvm-vm (guest_memfd): the guest_memfd cases this host skipped, in the VM"
  t=$(date +%s)
  KVM_VM_GTEST_FILTER='*GuestMemfd*' tests/vm/run_kvm_tests.sh --parts=default,asan,tsan \
    --targets="$GMEM_TARGETS" 2>"$LOG/kvm-vm.log" | tail -12
  took kvm-vm "$t"
fi

# The guest_memfd kernel series (kernel/): patched v6.18.4 built once (cached by patch set),
# booted under QEMU TCG; its selftest, the upstream suites and faultline's guest_memfd e2e.
echo "=== kernel: kernel/tests/run_kernel_tests.sh"
t=$(date +%s)
kernel/tests/run_kernel_tests.sh 2>"$LOG/kernel.log" | tail -25
took kernel "$t"

# The RDMA transport on real verbs (tests/rdma/): soft-RoCE in Debian's 6.1 kernel under QEMU
# TCG — unit tests, an e2e migration over rxe, RDMA vs TCP.
echo "=== rdma: tests/rdma/run_rdma_tests.sh"
t=$(date +%s)
rout=$(tests/rdma/run_rdma_tests.sh 2>"$LOG/rdma.log")
rrc=$?
echo "$rout" | tail -1
if ((rrc == 2)); then
  python3 $REPORT add skip rdma "RDMA suite" "$(echo "$rout" | tail -1)" "$FAULTLINE_RESULTS"
elif ((rrc != 0)); then
  # A failing suite must fail the summary even where no case said so.
  grep -q "^fail"$'\t'"rdma" "$FAULTLINE_RESULTS" ||
    python3 $REPORT add fail rdma "RDMA suite" "$(echo "$rout" | tail -1)" "$FAULTLINE_RESULTS"
  tail -40 "$LOG/rdma.log"
fi
took rdma "$t"

# QEMU with faultline's series (built once, cached by series in ~/.cache/faultline/qemu):
# QEMU-to-QEMU post-copy through faultline + QEMU's own migration-test post-copy cases, then
# the libvirt driver against two real libvirtd daemons. Lines: PASS:/FAIL:/SKIP:.
echo "=== qemu: qemu-integration/qemu/run_qemu_migration.sh"
t=$(date +%s)
qout=$(qemu-integration/qemu/run_qemu_migration.sh 2>"$LOG/qemu.log")
qrc=$?
echo "$qout" | grep -E "^(PASS|FAIL|SKIP)"
echo "$qout" | python3 $REPORT lines qemu "$FAULTLINE_RESULTS"
if ((qrc != 0)); then
  echo "$qout" | grep -q "^FAIL" ||
    python3 $REPORT add fail qemu "QEMU suite" "exit $qrc (see $LOG/qemu.log)" "$FAULTLINE_RESULTS"
  tail -20 "$LOG/qemu.log"
fi
took qemu "$t"

echo "=== libvirt: tests/libvirt/run_libvirt_tests.sh"
t=$(date +%s)
lout=$(tests/libvirt/run_libvirt_tests.sh 2>"$LOG/libvirt.log")
lrc=$?
echo "$lout" | grep -E "^(PASS|FAIL|SKIP)|libvirt (tests|suite)"
if ((lrc == 2)); then
  python3 $REPORT add skip libvirt "libvirt suite" "$(echo "$lout" | tail -1)" "$FAULTLINE_RESULTS"
else
  echo "$lout" | python3 $REPORT lines libvirt "$FAULTLINE_RESULTS"
  if ((lrc != 0)); then
    echo "$lout" | grep -q "^FAIL" ||
      python3 $REPORT add fail libvirt "libvirt suite" "exit $lrc (see $LOG/libvirt.log)" "$FAULTLINE_RESULTS"
    tail -20 "$LOG/libvirt.log"
  fi
fi
took libvirt "$t"

echo "=== summary (every case: $FAULTLINE_RESULTS; logs: $LOG; $(($(date +%s) - T0)) s in all)"
python3 $REPORT summary "$FAULTLINE_RESULTS"
