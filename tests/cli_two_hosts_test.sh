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
# Starts `faultline source` (its arguments after the log file) on a random port; sets PORT and
# SRC once it serves. Another port when it exits first (one in use by a test running beside
# this one); up to 30 s per try (a sanitizer build on a busy machine starts slowly).
start_source() {
  local log=$1; shift
  for _ in 1 2 3 4 5; do
    PORT=$((20000 + RANDOM % 20000))
    "$BIN" source --listen=127.0.0.1:$PORT "$@" > "$log" 2>&1 &
    SRC=$!
    for _ in $(seq 300); do
      grep -q serving "$log" && return 0
      kill -0 $SRC 2> /dev/null || break
      sleep 0.1
    done
    kill $SRC 2> /dev/null; wait $SRC 2> /dev/null
  done
  cat "$log"; fail "faultline source did not start serving"
}
HELP=$("$BIN" --help 2>&1); [[ "$HELP" == *"faultline source"* ]] || fail "--help does not explain source"

RAM="$TEST_TMPDIR/vm-ram"
# 32 MiB of "guest memory": random data with zero holes.
head -c $((24 << 20)) /dev/urandom > "$RAM"
truncate -s $((32 << 20)) "$RAM"
TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

start_source "$TEST_TMPDIR/src.log" --token=$TOKEN --region=ram=$RAM

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

# The same over mutual TLS, with certificates made here by the openssl CLI (as in README.md):
# a plain destination and one without a client certificate are refused with clear messages;
# one with a certificate signed by the CA migrates and verifies every page.
if ! command -v openssl > /dev/null; then
  echo "SKIP (TLS part): no openssl command"; echo "PASS"; exit 0
fi
PKI="$TEST_TMPDIR/pki"; mkdir -p "$PKI"
EC=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${EC[@]}" -days 2 -subj "/CN=faultline test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2> "$PKI/log" || { cat "$PKI/log"; fail "openssl req (CA)"; }
for who in source dest; do
  openssl req "${EC[@]}" -subj "/CN=$who" -keyout "$PKI/$who.key" -out "$PKI/$who.csr" 2>> "$PKI/log" &&
  openssl x509 -req -in "$PKI/$who.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 1 -extfile <(printf "subjectAltName=IP:127.0.0.1,DNS:localhost\n") \
    -out "$PKI/$who.crt" 2>> "$PKI/log" || { cat "$PKI/log"; fail "openssl x509 ($who)"; }
done
start_source "$TEST_TMPDIR/tls-src.log" --token=$TOKEN --region=ram=$RAM \
  --tls_cert="$PKI/source.crt" --tls_key="$PKI/source.key" --tls_ca="$PKI/ca.crt"
grep -q "TLS 1.3, client certificates required" "$TEST_TMPDIR/tls-src.log" || fail "source does not say it serves mutual TLS"
if timeout 20 "$BIN" dest --connect=127.0.0.1:$PORT --token=$TOKEN --kind=anon --progress=false \
    > "$TEST_TMPDIR/tls-plain.log" 2>&1; then
  fail "a plain destination was accepted by a TLS source"
fi
grep -q "requires TLS" "$TEST_TMPDIR/tls-plain.log" || { cat "$TEST_TMPDIR/tls-plain.log"; fail "no clear message for plain vs TLS"; }
if timeout 20 "$BIN" dest --connect=127.0.0.1:$PORT --token=$TOKEN --kind=anon --progress=false \
    --tls_ca="$PKI/ca.crt" > "$TEST_TMPDIR/tls-nocert.log" 2>&1; then
  fail "a destination without a client certificate was accepted"
fi
grep -q "certificate required" "$TEST_TMPDIR/tls-nocert.log" || { cat "$TEST_TMPDIR/tls-nocert.log"; fail "no clear message for a missing client certificate"; }
timeout 120 "$BIN" dest --connect=127.0.0.1:$PORT --token=$TOKEN --kind=memfd --progress=false \
  --touches=2000 --tls_ca="$PKI/ca.crt" --tls_cert="$PKI/dest.crt" --tls_key="$PKI/dest.key" \
  > "$TEST_TMPDIR/tls-dest.log" 2>&1
RC=$?
cat "$TEST_TMPDIR/tls-dest.log"
wait $SRC; SRC_RC=$?
cat "$TEST_TMPDIR/tls-src.log"
[[ $RC -eq 0 ]] || fail "TLS dest exited $RC"
[[ $SRC_RC -eq 0 ]] || fail "TLS source exited $SRC_RC"
grep -q "verified 8192 pages, 0 mismatches" "$TEST_TMPDIR/tls-dest.log" || fail "TLS verification line missing"
grep -q "connections 2" "$TEST_TMPDIR/tls-src.log" || fail "TLS source did not count the two refused connections"
echo "PASS"
