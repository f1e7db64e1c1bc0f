#!/bin/bash
# run_gtest_cases.py resumes after the VM's kernel died: a case with a result keeps it, the case
# the kernel died in runs once more, one it died in twice is recorded failed and not run, and
# the cases after it still run. A fake gtest binary stands in for the real one (what is tested
# is the runner's bookkeeping; the real binaries run through it in the KVM VM suite).
set -euo pipefail
RUNNER="${TEST_SRCDIR:-.}/${TEST_WORKSPACE:-faultline}/tests/vm/run_gtest_cases.py"
[[ -f $RUNNER ]] || RUNNER="$(dirname "$0")/run_gtest_cases.py"
T=$(mktemp -d "${TEST_TMPDIR:-/tmp}/rgc.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# The fake: lists S.a S.b S.c S.d; records each case it runs in $T/ran; S.c fails.
cat > "$T/fake_test" <<'FAKE'
#!/bin/bash
case "$1" in
  --gtest_list_tests) printf 'S.\n  a\n  b\n  c\n  d\n'; exit 0 ;;
esac
c=${1#--gtest_filter=S.}; out=${2#--gtest_output=xml:}
echo "$c" >> "$(dirname "$0")/ran"
if [[ $c == c ]]; then body='<failure message="c failed"/>'; rc=1; else body=''; rc=0; fi
printf '<testsuites><testsuite name="S"><testcase classname="S" name="%s" status="run">%s</testcase></testsuite></testsuites>' "$c" "$body" > "$out"
exit $rc
FAKE
chmod +x "$T/fake_test"

# A first boot that ran S.a and died in S.b; a second one that died in S.b again.
J="$T/out.xml.journal"
printf '%s\n' '{"started": "S.a"}' \
  '{"case": "S.a", "xml": "<testcase classname=\"S\" name=\"a\" status=\"run\" />"}' \
  '{"started": "S.b"}' '{"started": "S.b"}' > "$J"
rc=0; python3 "$RUNNER" "$T/fake_test" "$T/out.xml" > "$T/log" 2>&1 || rc=$?
[[ $rc == 1 ]] || fail "exit $rc, want 1 (S.b and S.c failed)"
ran=$(tr '\n' ' ' < "$T/ran")
[[ $ran == "c d " ]] || fail "ran '$ran', want 'c d ' (a has a result, b killed the kernel twice)"
grep -q "died while this case ran, 2 times" "$T/out.xml" || fail "S.b not recorded as the kernel's death"
grep -q 'name="a"' "$T/out.xml" || fail "S.a's earlier result lost"
[[ $(grep -o '<failure' "$T/out.xml" | wc -l) == 2 ]] || fail "want 2 failures: $(cat "$T/out.xml")"

# Died once in S.b: S.b runs again, and passes.
rm -f "$T/ran" "$T/out.xml"
printf '%s\n' '{"started": "S.b"}' '{"started": "S' > "$J"  # the last line cut short
python3 "$RUNNER" "$T/fake_test" "$T/out.xml" > "$T/log" 2>&1 || true
ran=$(tr '\n' ' ' < "$T/ran")
[[ $ran == "a b c d " ]] || fail "ran '$ran', want 'a b c d '"
grep -q "kernel died while it ran; running it again" "$T/log" || fail "no note of the rerun: $(cat "$T/log")"
[[ $(grep -o '<failure' "$T/out.xml" | wc -l) == 1 ]] || fail "want only S.c failed: $(cat "$T/out.xml")"
grep -q 'name="b"[^>]*fl_note="second run\|fl_note="second run[^"]*"[^>]*name="b"' "$T/out.xml" ||
  fail "S.b's pass does not say the kernel died in its first run: $(cat "$T/out.xml")"

# A clean start journals every case: a run after it reuses all four results.
rm -f "$T/ran" "$T/out.xml" "$J"
python3 "$RUNNER" "$T/fake_test" "$T/out.xml" > "$T/log" 2>&1 || true
python3 "$RUNNER" "$T/fake_test" "$T/out.xml" > "$T/log" 2>&1 || true
[[ $(wc -l < "$T/ran") == 4 ]] || fail "the second run ran cases again: $(cat "$T/ran")"
# --skip: recorded as skipped with its reason, never run.
rm -f "$T/ran" "$T/out.xml" "$J"
python3 "$RUNNER" "$T/fake_test" "$T/out.xml" --skip="S.c=not here: why" > "$T/log" 2>&1 ||
  fail "exit $? with S.c (the failing case) skipped"
grep -q '<skipped message="not here: why"' "$T/out.xml" || fail "no skip for S.c: $(cat "$T/out.xml")"
! grep -qx c "$T/ran" || fail "S.c ran although skipped"
echo "PASS"
