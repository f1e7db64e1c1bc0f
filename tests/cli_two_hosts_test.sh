#!/bin/bash
# The two-host commands as an operator runs them, over loopback: `faultline source` serves a
# file holding "VM RAM"; `faultline dest` migrates it into userfaultfd memory while its thread
# guest runs, verifies every page by CRC32C against the source, and sends DONE. Also: a wrong
# token is refused with a clear message, and --help explains the commands.
set -uo pipefail
BIN="$TEST_SRCDIR/$TEST_WORKSPACE/cli/faultline"
if [[ ! -r /dev/userfaultfd && $(id -u) -ne 0 ]]; then
  echo "SKIP: userfaultfd needs root here"; exit 0
fi
fail() { echo "FAIL: $*"; exit 1; }
HELP=$("$BIN" --help 2>&1); [[ "$HELP" == *"faultline source"* ]] || fail "--help does not explain source"

RAM="$TEST_TMPDIR/vm-ram"
# 32 MiB of "guest memory": random data with zero holes.
head -c $((24 << 20)) /dev/urandom > "$RAM"
truncate -s $((32 << 20)) "$RAM"
TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
PORT=$((20000 + RANDOM % 20000))

"$BIN" source --listen=127.0.0.1:$PORT --token=$TOKEN --region=ram=$RAM > "$TEST_TMPDIR/src.log" 2>&1 &
SRC=$!
for _ in $(seq 50); do grep -q serving "$TEST_TMPDIR/src.log" && break; sleep 0.1; done

BAD=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
if "$BIN" dest --connect=127.0.0.1:$PORT --token=$BAD --kind=anon --progress=false \
    > "$TEST_TMPDIR/bad.log" 2>&1; then
  fail "a wrong token was accepted"
fi
grep -q "wrong migration token" "$TEST_TMPDIR/bad.log" || { cat "$TEST_TMPDIR/bad.log"; fail "no clear message for a wrong token"; }

"$BIN" dest --connect=127.0.0.1:$PORT --token=$TOKEN --kind=memfd --progress=false \
  --touches=2000 > "$TEST_TMPDIR/dest.log" 2>&1
RC=$?
cat "$TEST_TMPDIR/dest.log"
wait $SRC; SRC_RC=$?
cat "$TEST_TMPDIR/src.log"
[[ $RC -eq 0 ]] || fail "dest exited $RC"
[[ $SRC_RC -eq 0 ]] || fail "source exited $SRC_RC (it should stop cleanly on DONE)"
grep -q "verified 8192 pages, 0 mismatches" "$TEST_TMPDIR/dest.log" || fail "verification line missing"
grep -q "refused requests 0, connections 1" "$TEST_TMPDIR/src.log" || fail "source did not count the refused connection"
echo "PASS"
