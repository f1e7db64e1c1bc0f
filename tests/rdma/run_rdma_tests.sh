#!/bin/bash
# The RDMA suite: boots Debian's 6.1 kernel under QEMU (TCG) with soft-RoCE (rdma_rxe), the host's
# root mounted read-only over 9p so the Bazel-built binaries and their shared libraries run
# unchanged inside, creates rxe0 on the guest's eth0 and runs there:
#   1. //tests/rdma:rdma_transport_test — RDMA unit + e2e tests (whole post-copy migrations over
#      rxe through the engine, every page compared with the source; failed completions, CRC
#      mismatches, reconnects);
#   2. an e2e migration with the CLI: faultline source --transport=rdma + faultline dest
#      --transport=rdma (every page verified by CRC32C against the source);
#   3. //bench/rdma:rdma_vs_tcp_benchmark — urgent 4 KiB fault latency and bulk throughput, RDMA and
#      TCP in the same VM run.
# Prints one summary line: "RDMA suite: PASS (...)", "RDMA suite: FAIL (...)" or "... SKIP (why)".
#
# With $FAULTLINE_RESULTS set (tools/test.sh), one record per case goes there too
# (tools/test_report.py): every gtest case, the CLI e2e, the benchmark.
#
# Usage (as root, from anywhere in the repo; the checkout may be anywhere, /tmp included):
#   tests/rdma/run_rdma_tests.sh
# Needs: qemu-system-x86_64, network access to a Debian mirror on the first run (apt-get
# download linux-image-6.1.0-*-amd64), busybox-static and kmod (installed with apt if missing).
# The VM image is shared with the other VM suites (tests/vm/debian_vm.sh, cached in
# ~/.cache/faultline/vm/). Results of the last run: ~/.cache/faultline/rdma/last-run/.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${FAULTLINE_CACHE:-$HOME/.cache/faultline}/rdma"
TIMEOUT="${RDMA_VM_TIMEOUT:-1500}"
mkdir -p "$CACHE"
log() { echo "[rdma] $*" >&2; }

# Exit codes: 0 pass, 1 fail, 2 skipped (a prerequisite is missing; the line says which).
# --- 1. the VM image (Debian's 6.1 kernel with rdma_rxe; tests/vm/debian_vm.sh) -------------
. "$REPO/tests/vm/debian_vm.sh"
vm_image || { echo "RDMA suite: SKIP ($VM_WHY)"; exit 2; }

# --- 2. the binaries (run from the host's root inside the guest) ------------------------------
cd "$REPO"
log "building the binaries"
TARGETS="//tests/rdma:rdma_transport_test //cli:faultline //bench/rdma:rdma_vs_tcp_benchmark"
# The workspace's own output base (the other suites build the same -c opt binaries), or
# RDMA_BAZEL_OUTPUT_BASE to keep out of another build's way.
STARTUP=()
[ -n "${RDMA_BAZEL_OUTPUT_BASE:-}" ] && STARTUP=(--output_base="$RDMA_BAZEL_OUTPUT_BASE")
# RDMA_BAZEL_FLAGS: e.g. "--config=tsan" to run the sanitizer builds inside the VM.
FLAGS="${RDMA_BAZEL_FLAGS:--c opt}"
bazel "${STARTUP[@]}" build $FLAGS --symlink_prefix=/ $TARGETS >&2
BIN="$(bazel "${STARTUP[@]}" info $FLAGS bazel-bin 2>/dev/null)"
RESULTS="$CACHE/last-run"
rm -rf "$RESULTS" && mkdir -p "$RESULTS"
cat > "$RESULTS/env" <<ENV
BIN=$BIN
REPO=$REPO
ONLY=${RDMA_SUITE_ONLY:-}
GTEST_FILTER=${RDMA_GTEST_FILTER:-}
GTEST_REPEAT=${RDMA_GTEST_REPEAT:-}
GTEST_HANG_SECONDS=${RDMA_GTEST_HANG_SECONDS:-120}
GDB_ON_FAIL=${RDMA_GDB_ON_FAIL:-}
ENV

# --- 3. boot and run ------------------------------------------------------------------------
log "booting the VM (TCG; the suite takes a few minutes)"
START=$(date +%s)
set +e
vm_run "$REPO/tests/rdma/guest_suite.sh" "$RESULTS" "$TIMEOUT" \
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0
QRC=$?
set -e
ELAPSED=$(( $(date +%s) - START ))
cat "$RESULTS/guest.log" >&2 2>/dev/null || true
REPORT="$REPO/tools/test_report.py"
if [ -n "${FAULTLINE_RESULTS:-}" ]; then
  if [ -f "$RESULTS/rdma_transport_test.xml" ]; then
    python3 "$REPORT" gtest rdma "$RESULTS/rdma_transport_test.xml" "$FAULTLINE_RESULTS" \
      --target=//tests/rdma:rdma_transport_test --where="in the soft-RoCE VM"
  fi
  [ -f "$RESULTS/records.tsv" ] && cat "$RESULTS/records.tsv" >> "$FAULTLINE_RESULTS"
  [ -f "$RESULTS/summary" ] ||
    python3 "$REPORT" add fail rdma "RDMA suite" "no result from the VM (qemu exit $QRC)" "$FAULTLINE_RESULTS"
fi
if [ -f "$RESULTS/summary" ]; then
  echo "$(cat "$RESULTS/summary") [VM ${ELAPSED}s]"
  grep -q "^RDMA suite: PASS" "$RESULTS/summary"
else
  echo "RDMA suite: FAIL (no result from the VM; qemu exit $QRC; see $RESULTS/console.log) [VM ${ELAPSED}s]"
  exit 1
fi
