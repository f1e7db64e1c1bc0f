#!/bin/bash
# Runs inside the soft-RoCE VM (tests/rdma/run_rdma_tests.sh boots it), chrooted into the host's
# root (read-only 9p); /tmp is the guest's tmpfs, /tmp/results the host's result directory.
set -u -o pipefail
. /tmp/results/env
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
OUT=/tmp/results
fails=()
passes=()
# One record per case for tools/test_report.py (the host appends them to the suite's results).
record() { printf '%s\trdma\t%s\t%s\n' "$1" "$2" "${3:-in the soft-RoCE VM}" >> "$OUT/records.tsv"; }
step() { echo; echo "=== $* ($(date +%T))"; }

step "network and soft-RoCE"
rm -f "$OUT/records.tsv"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
rdma link add rxe0 type rxe netdev eth0 || fails+=("rdma link add")
sleep 1
rdma link show
ibv_devices 2>/dev/null || true

step "RDMA transport tests (gtest)"
export TEST_TMPDIR=/tmp/gtest
mkdir -p "$TEST_TMPDIR"
# A hang is a failure with every thread's stack (gdb), not a silent timeout: the whole binary
# takes 10-15 s here.
"$BIN/tests/rdma/rdma_transport_test" ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} \
  ${GTEST_REPEAT:+--gtest_repeat=$GTEST_REPEAT} \
  --gtest_output=xml:"$OUT/rdma_transport_test.xml" \
  > "$OUT/rdma_transport_test.log" 2>&1 &
pid=$!
limit=$((${GTEST_HANG_SECONDS:-120} * ${GTEST_REPEAT:-1}))
for ((waited = 0; waited < limit; waited++)); do
  kill -0 $pid 2>/dev/null || break
  sleep 1
done
# gdb reads the binary's symbols before it attaches (seconds here): a run that ends meanwhile
# was slow, not hung, and is judged by its own exit code.
kill -0 $pid 2>/dev/null && gdb -p $pid -batch -ex "thread apply all bt" > "$OUT/hang-stacks.log" 2>&1
if kill -0 $pid 2>/dev/null; then
  kill -9 $pid
  wait $pid
  rc=124
  cat "$OUT/rdma_transport_test.log"
  echo "rdma_transport_test HUNG: still running after ${limit} s; every thread's stack:"
  grep -E '^Thread|^#' "$OUT/hang-stacks.log"
else
  wait $pid
  rc=$?
  cat "$OUT/rdma_transport_test.log"
fi
echo "rdma_transport_test exit $rc"
# Killed or crashed, its XML (if any: gtest writes one per --gtest_repeat pass) does not say
# so; the failure must count all the same.
if [ $rc -eq 124 ]; then
  record fail "//tests/rdma:rdma_transport_test" "hung for ${limit} s in the soft-RoCE VM (stacks in the log)"
elif [ $rc -ne 0 ] && [ ! -f "$OUT/rdma_transport_test.xml" ]; then
  record fail "//tests/rdma:rdma_transport_test" "exit $rc without a result in the soft-RoCE VM"
fi
if [ $rc -eq 0 ]; then
  passes+=("rdma_transport_test $(grep -c '^\[       OK \]' "$OUT/rdma_transport_test.log") ok")
else
  fails+=("rdma_transport_test")
fi

if [ $rc -ne 0 ] && [ -n "${GDB_ON_FAIL:-}" ]; then
  gdb -batch -ex run -ex bt -ex "x/3i \$pc" -ex "p/x \$rax" -ex "p/x \$rbx" -ex "x/4gx \$rbx" \
    -ex "x/20gx (*(long*)\$rbx)-0x80" --args "$BIN/tests/rdma/rdma_transport_test" \
    ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER} > "$OUT/gdb.log" 2>&1
fi
[ "${ONLY:-}" = gtest ] && { echo "RDMA suite: (gtest only) rc $rc" > "$OUT/summary"; exit 0; }
step "CLI e2e: faultline source/dest --transport=rdma"
# 64 MiB of source memory: random data with a zero hole.
dd if=/dev/urandom of=/tmp/ram bs=1M count=48 status=none
dd if=/dev/zero of=/tmp/ram bs=1M count=16 seek=48 status=none
TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
timeout 300 "$BIN/cli/faultline" source --transport=rdma --listen=127.0.0.1:7470 \
  --region=ram=/tmp/ram --token="$TOKEN" > "$OUT/cli_source.log" 2>&1 &
SRC=$!
for i in $(seq 100); do ss -ltnH "sport = :7470" | grep -q . && break; sleep 0.2; done
if timeout 300 "$BIN/cli/faultline" dest --transport=rdma --connect=127.0.0.1:7470 \
    --token="$TOKEN" --kind=memfd --progress=false > "$OUT/cli_dest.log" 2>&1 &&
   grep -q "verified 16384 pages, 0 mismatches" "$OUT/cli_dest.log"; then
  passes+=("cli e2e: $(grep -o 'verified [0-9]* pages, 0 mismatches' "$OUT/cli_dest.log")")
  record pass "faultline source/dest --transport=rdma"
else
  fails+=("cli e2e")
  record fail "faultline source/dest --transport=rdma" "see $OUT/cli_dest.log"
fi
cat "$OUT/cli_dest.log"
wait $SRC; echo "source exit $?"; cat "$OUT/cli_source.log"

step "RDMA vs TCP benchmark"
if timeout 900 "$BIN/bench/rdma/rdma_vs_tcp_benchmark" 2>&1 | tee "$OUT/bench.log"; then
  passes+=("bench")
  record pass "rdma_vs_tcp_benchmark"
else
  fails+=("bench")
  record fail "rdma_vs_tcp_benchmark" "see bench.log"
fi

{
  if [ ${#fails[@]} -eq 0 ]; then
    echo "RDMA suite: PASS ($(IFS=';'; echo "${passes[*]}"))"
  else
    echo "RDMA suite: FAIL (failed: $(IFS=';'; echo "${fails[*]}"); passed: $(IFS=';'; echo "${passes[*]}"))"
  fi
} > "$OUT/summary"
cat "$OUT/summary"
