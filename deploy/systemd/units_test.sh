#!/bin/bash
# The systemd units are valid (systemd-analyze verify, with ExecStart pointed at the built
# binary) and stay locked down (systemd-analyze security: exposure at most 3.0 of 10).
set -u
FL="$TEST_SRCDIR/$TEST_WORKSPACE/cli/faultline"
HERE="$TEST_SRCDIR/$TEST_WORKSPACE/deploy/systemd"
command -v systemd-analyze >/dev/null || { echo "SKIP: no systemd-analyze"; exit 0; }
T=$(mktemp -d)
fail=0
for u in faultline-serve.service faultline-source.service; do
  sed "s#/usr/local/bin/faultline#$FL#" "$HERE/$u" > "$T/$u"
  if out=$(systemd-analyze verify "$T/$u" 2>&1) && [ -z "$out" ]; then
    echo "ok: verify $u"
  else
    echo "FAIL: verify $u: $out"; fail=1
  fi
  systemd-analyze security --offline=yes "$T/$u" > "$T/sec.txt" 2>&1
  level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$T/sec.txt")
  if [ -n "$level" ] && awk -v l="$level" 'BEGIN { exit !(l <= 3.0) }'; then
    echo "ok: security $u: exposure $level"
  else
    echo "FAIL: security $u: exposure '${level}' (want <= 3.0): $(tail -1 "$T/sec.txt")"; fail=1
  fi
done
rm -rf "$T"
exit $fail
