#!/bin/bash
# The long suite: what is too slow or too big for every `bazel test //...` (CI runs
# tools/test.sh, not this). As root. Parts, each a Bazel test run with its own log:
#
#   random-cuts       100 migrations whose connections a proxy cuts at seeded random byte
#                     offsets (//tests:random_cut_test); each run verifies every page and
#                     prints its seed
#   random-cuts-tsan  20 of those under ThreadSanitizer
#   engine-restart    `faultline serve` SIGKILLed at a random point of a migration and
#                     replaced, 10 times per region kind (//tests:engine_restart_test)
#   load-plain        a 4 GiB guest, two threads faulting at random all along while the
#   load-asan         background pull runs at full speed, every page verified
#   load-tsan         (//tests:load_test; TSan on anonymous memory with a bounded shadow)
#
# Environment: RANDOM_CUT_RUNS (100), RESTART_RUNS (10), LOAD_SIZE (4G), FAULTLINE_SEED (the
# first seed; default from the clock — a failing run prints its seed and how to rerun it),
# PARTS (space-separated subset of the names above).
# Ends with one line: "long suite: N passed, N failed (...)". Takes ~15-25 min here.
set -uo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || echo "long_suite: not root — userfaultfd tests will skip" >&2

RANDOM_CUT_RUNS=${RANDOM_CUT_RUNS:-100}
RESTART_RUNS=${RESTART_RUNS:-10}
LOAD_SIZE=${LOAD_SIZE:-4G}
SEED=${FAULTLINE_SEED:-$(date +%s)000}
PARTS=${PARTS:-"random-cuts random-cuts-tsan engine-restart load-plain load-asan load-tsan"}
LOG=$(mktemp -d /tmp/faultline-long.XXXXXX)
echo "long suite: seeds from $SEED, logs in $LOG"

# TSan keeps 2x shadow of every byte instrumented code touches: with a 4 GiB source read by
# the page server that alone would be 8 GiB. memory_limit_mb makes TSan flush its shadow
# whenever the process's RSS passes the limit (guest + source memory plus ~3 GiB of shadow).
load_bytes() {
  local s=$1 n=${1%[GgMm]}
  case $s in *[Gg]) echo $((n << 30)) ;; *[Mm]) echo $((n << 20)) ;; *) echo "$n" ;; esac
}
TSAN_LIMIT_MB=$(( ($(load_bytes "$LOAD_SIZE") * 2 >> 20) + 3072 ))
TSAN_BASE="halt_on_error=1:second_deadlock_stack=1"

passed=0; failed=0; summary=()
part() {  # part NAME TARGET bazel-args...
  local name=$1 target=$2; shift 2
  [[ " $PARTS " == *" $name "* ]] || return 0
  echo "=== $name: bazel test $* $target"
  local t0=$SECONDS rc
  bazel test --nocache_test_results --test_output=errors --test_timeout=3600 "$@" "$target" \
    > "$LOG/$name.bazel.log" 2>&1
  rc=$?
  local tlog="bazel-testlogs/${target#//}"; tlog="${tlog/://}/test.log"
  cp "$tlog" "$LOG/$name.log" 2>/dev/null || cp "$LOG/$name.bazel.log" "$LOG/$name.log"
  # The lines that say what happened: per-run seeds, kill points, load figures.
  grep -E "^seed|^  resumed|random cuts:|^load:|Failure|FAILED|ERROR|WARNING: ThreadSanitizer|ERROR: AddressSanitizer" \
    "$LOG/$name.log" | tail -8
  if [[ $rc -eq 0 ]]; then
    passed=$((passed + 1)); summary+=("$name ok")
    echo "$name: PASS ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1)); summary+=("$name FAILED")
    echo "$name: FAIL ($((SECONDS - t0)) s), bazel exit $rc — $LOG/$name.log"
    tail -20 "$LOG/$name.bazel.log"
  fi
}

part random-cuts //tests:random_cut_test \
  --test_env=FAULTLINE_RANDOM_CUT_RUNS="$RANDOM_CUT_RUNS" --test_env=FAULTLINE_SEED="$SEED"
part random-cuts-tsan //tests:random_cut_test --config=tsan \
  --test_env=FAULTLINE_RANDOM_CUT_RUNS=20 --test_env=FAULTLINE_SEED="$((SEED + 500))"
part engine-restart //tests:engine_restart_test \
  --test_env=FAULTLINE_RESTART_RUNS="$RESTART_RUNS" --test_env=FAULTLINE_SEED="$((SEED + 1000))"
part load-plain //tests:load_test --test_env=FAULTLINE_LOAD_SIZE="$LOAD_SIZE"
part load-asan //tests:load_test --config=asan --test_env=FAULTLINE_LOAD_SIZE="$LOAD_SIZE"
part load-tsan //tests:load_test --config=tsan --test_env=FAULTLINE_LOAD_SIZE="$LOAD_SIZE" \
  --test_env=FAULTLINE_LOAD_KIND=anon \
  --test_env=TSAN_OPTIONS="$TSAN_BASE:memory_limit_mb=$TSAN_LIMIT_MB"

line=$(IFS=,; echo "${summary[*]}")
echo "long suite: ${passed} passed, ${failed} failed (${line//,/, }); seeds from $SEED; logs $LOG"
[[ $failed -eq 0 ]]
