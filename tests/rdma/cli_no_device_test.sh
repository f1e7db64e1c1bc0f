#!/bin/bash
# `faultline source|dest --transport=rdma` on a machine without an RDMA device: each stops at
# once with a message that says so and lists the devices found (none). Skips, saying why, on a
# machine that has one (tests/rdma/run_rdma_tests.sh covers RDMA for real).
set -u
FL="$(dirname "$0")/../../cli/faultline"
[ -x "$FL" ] || FL="$TEST_SRCDIR/$TEST_WORKSPACE/cli/faultline"
if [ -n "$(ls -A /sys/class/infiniband 2>/dev/null)" ]; then
  echo "SKIP: this machine has RDMA devices ($(ls /sys/class/infiniband | tr '\n' ' '))"
  exit 0
fi
T="${TEST_TMPDIR:-/tmp}"
head -c 1048576 /dev/zero > "$T/ram"
fail=0
check() {  # name, output, rc
  if [ "$3" -ne 0 ] && echo "$2" | grep -q "RDMA devices found: none" &&
     echo "$2" | grep -q -- "--transport=rdma"; then
    echo "ok: $1: $2"
  else
    echo "FAIL: $1 (rc $3): $2"
    fail=1
  fi
}
out="$(timeout 20 "$FL" source --transport=rdma --listen=127.0.0.1:0 --region=ram="$T/ram" 2>&1)"
check source "$out" $?
out="$(timeout 20 "$FL" dest --transport=rdma --connect=127.0.0.1:9 \
  --token=0000000000000000000000000000000000000000000000000000000000000000 2>&1)"
check dest "$out" $?
out="$(timeout 20 "$FL" dest --transport=carrier-pigeon --connect=127.0.0.1:9 \
  --token=0000000000000000000000000000000000000000000000000000000000000000 2>&1)"
if [ $? -ne 0 ] && echo "$out" | grep -q "expected tcp or rdma"; then echo "ok: bad transport: $out"; else echo "FAIL: bad transport: $out"; fail=1; fi
exit $fail
