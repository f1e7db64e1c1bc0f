#!/usr/bin/env bash
# A real QEMU-to-QEMU post-copy migration through faultline on this machine, with every page of
# guest memory checksummed afterwards (qemu_migration.py does the migration; this script builds
# what it needs); the same with the destination's RAM preallocated (prealloc=on: faultline
# must punch the stale pages out), without a pager (refused at ADVISE), and with the 10.2 and
# 11.1 series also with an unprivileged destination QEMU and with faultline killed
# mid-post-copy (the destination waits, a restarted faultline resumes). Then QEMU's own
# migration-test post-copy cases on the same patched build, with the capability off, to show
# nothing else changed.
#
#   qemu-integration/qemu/run_qemu_migration.sh [--accel=tcg|kvm] [--size_mib=256]
#                                              [--no-qtest] [--version=7.2|10.2|11.1]
#                                              [--qemu=PATH]
#
# The patched QEMU comes from build_qemu.sh --version=V (default 7.2; cached after its first
# build), or is given with --qemu (then --version is not used).
#
# faultline and its guest are built with `bazel build -c opt` in this workspace, or taken from
# FAULTLINE_BIN and FAULTLINE_GUEST when both are set (e.g. binaries built from a clean checkout).
#
# Needs root (userfaultfd, /dev/shm), QEMU's runtime firmware from Debian (seabios,
# qemu-system-data: -L /usr/share/seabios -L /usr/share/qemu), Bazel for faultline. Ends with one
# summary line per part: PASS/FAIL/SKIP.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ACCEL=tcg
SIZE=256
QTEST=1
VERSION=7.2
QEMU=${FAULTLINE_QEMU:-}
for a in "$@"; do
  case "$a" in
    --accel=*) ACCEL=${a#*=} ;;
    --size_mib=*) SIZE=${a#*=} ;;
    --no-qtest) QTEST=0 ;;
    --version=7.2|--version=10.2|--version=11.1) VERSION=${a#*=} ;;
    --qemu=*) QEMU=${a#*=} ;;
    *) echo "usage: $0 [--accel=tcg|kvm] [--size_mib=N] [--no-qtest] [--version=7.2|10.2|11.1]" \
            "[--qemu=PATH]" >&2; exit 2 ;;
  esac
done

if [[ $(id -u) != 0 ]]; then
  echo "SKIP: needs root (userfaultfd on QEMU's memory, /dev/shm RAM files)"; exit 0
fi
if [[ $ACCEL == kvm && ! -w /dev/kvm ]]; then
  echo "SKIP: --accel=kvm but /dev/kvm is not usable"; exit 0
fi
FW=()
for d in /usr/share/seabios /usr/share/qemu; do
  [[ -d $d ]] && FW+=(--firmware "$d")
done
if [[ ! -f /usr/share/seabios/bios-256k.bin ]]; then
  echo "SKIP: no SeaBIOS (/usr/share/seabios/bios-256k.bin; apt-get install seabios qemu-system-data)"
  exit 0
fi

if [[ -z $QEMU ]]; then
  build_args=(--version="$VERSION")
  (( QTEST )) && build_args+=(--tests)
  QEMU=$("$HERE/build_qemu.sh" "${build_args[@]}" | tail -1) || { echo "FAIL: QEMU build"; exit 1; }
fi
[[ -x $QEMU ]] || { echo "FAIL: no QEMU binary at '$QEMU'"; exit 1; }

WORK=$(mktemp -d /tmp/faultline-qemu-mig.XXXXXX)
if [[ -n ${FAULTLINE_BIN:-} && -n ${FAULTLINE_GUEST:-} ]]; then
  cp "$FAULTLINE_BIN" "$WORK/faultline"; cp "$FAULTLINE_GUEST" "$WORK/faultline-guest"
else
  (
    cd "$REPO" &&
    bazel build -c opt //cli:faultline //qemu-integration/guest:faultline-guest >"$WORK/bazel.log" 2>&1
  ) || { tail -20 "$WORK/bazel.log"; echo "FAIL: bazel build"; exit 1; }
  BIN=$(cd "$REPO" && bazel info -c opt bazel-bin 2>/dev/null)
  # Copies: other builds in this workspace may replace bazel-bin's files while we run.
  cp "$BIN/cli/faultline" "$BIN/qemu-integration/guest/faultline-guest" "$WORK/"
fi

echo "== QEMU post-copy through faultline ($QEMU, $ACCEL, $SIZE MiB; logs in $WORK)"
python3 "$HERE/qemu_migration.py" --qemu="$QEMU" --faultline="$WORK/faultline" \
  --guest="$WORK/faultline-guest" --accel="$ACCEL" --size_mib="$SIZE" --workdir="$WORK" \
  "${FW[@]}" | tee "$WORK/summary.txt"
rc=${PIPESTATUS[0]}

echo "== the same with the destination's RAM preallocated (prealloc=on): every page present before the hand-off"
python3 "$HERE/qemu_migration.py" --qemu="$QEMU" --faultline="$WORK/faultline" \
  --guest="$WORK/faultline-guest" --accel="$ACCEL" --size_mib=128 --workdir="$WORK/prealloc" \
  --dest_prealloc "${FW[@]}" | tail -1
(( PIPESTATUS[0] == 0 )) || rc=1

if ! "$QEMU" --version | grep -q 'version 7\.'; then
  # The 10.2 series makes its userfaultfd with uffd_open() (/dev/userfaultfd first).
  echo "== the same with the destination QEMU unprivileged (user nobody, vm.unprivileged_userfaultfd=0)"
  python3 "$HERE/qemu_migration.py" --qemu="$QEMU" --faultline="$WORK/faultline" \
    --guest="$WORK/faultline-guest" --accel=tcg --size_mib=128 --workdir="$WORK/unprivileged" \
    --dest_user=nobody "${FW[@]}" | grep -E '^(destination QEMU ran|PASS|FAIL)'
  (( PIPESTATUS[0] == 0 )) || rc=1
  # A pager that dies mid-post-copy: the destination waits ("lost"), a new one resumes.
  echo "== the same with faultline SIGKILLed while it places pages, then restarted"
  python3 "$HERE/qemu_migration.py" --qemu="$QEMU" --faultline="$WORK/faultline" \
    --guest="$WORK/faultline-guest" --accel="$ACCEL" --size_mib=128 --workdir="$WORK/kill-pager" \
    --kill_pager "${FW[@]}" | grep -E '^(pager killed|PASS|FAIL)'
  (( PIPESTATUS[0] == 0 )) || rc=1
  # Warm-up (series patch 7): faultline copies RAM during pre-copy, the source QEMU reports
  # what its guest (rewriting a hot tenth all along) wrote since; every page checked before
  # the destination's guest runs.
  echo "== warm-up: faultline copies RAM while the guest still runs on the source"
  python3 "$HERE/qemu_migration.py" --qemu="$QEMU" --faultline="$WORK/faultline" \
    --guest="$WORK/faultline-guest" --accel="$ACCEL" --size_mib=128 --workdir="$WORK/warmup" \
    --warmup "${FW[@]}" | grep -E '^(warm-up:|PASS|FAIL)'
  (( PIPESTATUS[0] == 0 )) || rc=1
  echo "== warm-up with faultline SIGKILLed while it warms up: the migration fails, the guest keeps running on the source"
  python3 "$HERE/qemu_migration.py" --qemu="$QEMU" --faultline="$WORK/faultline" \
    --guest="$WORK/faultline-guest" --accel="$ACCEL" --size_mib=128 --workdir="$WORK/warmup-kill" \
    --warmup --kill_pager "${FW[@]}" | grep -E '^(PASS|FAIL)'
  (( PIPESTATUS[0] == 0 )) || rc=1
  # Patch 8: rounds that do not shrink throttle the source's guest; lifted at the switch, and
  # when faultline dies mid-warm-up (the guest keeps running on the source, at its old pace).
  echo "== warm-up with the guest throttled while the rounds do not shrink"
  python3 "$HERE/qemu_migration.py" --qemu="$QEMU" --faultline="$WORK/faultline" \
    --guest="$WORK/faultline-guest" --accel="$ACCEL" --size_mib=128 \
    --workdir="$WORK/warmup-throttle" --warmup --warmup_throttle=99 "${FW[@]}" |
    grep -E '^(warm-up:|PASS|FAIL)'
  (( PIPESTATUS[0] == 0 )) || rc=1
  echo "== the same with faultline SIGKILLed while the guest is throttled: QEMU lifts the throttle"
  python3 "$HERE/qemu_migration.py" --qemu="$QEMU" --faultline="$WORK/faultline" \
    --guest="$WORK/faultline-guest" --accel="$ACCEL" --size_mib=128 \
    --workdir="$WORK/warmup-throttle-kill" --warmup --warmup_throttle=99 --kill_pager "${FW[@]}" |
    grep -E '^(PASS|FAIL)'
  (( PIPESTATUS[0] == 0 )) || rc=1
fi

echo "== the same without a pager listening: the destination must refuse at ADVISE, the source keep running"
python3 "$HERE/qemu_migration.py" --qemu="$QEMU" --faultline="$WORK/faultline" \
  --guest="$WORK/faultline-guest" --accel="$ACCEL" --size_mib=128 --workdir="$WORK/no-pager" \
  --no_pager "${FW[@]}" | tail -1
(( PIPESTATUS[0] == 0 )) || rc=1

if (( QTEST )); then
  MT=$(dirname "$QEMU")/tests/qtest/migration-test
  if [[ ! -x $MT ]]; then
    echo "SKIP: QEMU's migration-test was not built ($MT)"
  else
    # migration-test starts QEMU itself: a wrapper adds the firmware paths.
    mkdir -p "$WORK/wrap"  # migration-test wants a name ending in -system-x86_64
    cat >"$WORK/wrap/qemu-system-x86_64" <<EOF
#!/bin/sh
exec "$QEMU" -L /usr/share/seabios -L /usr/share/qemu -L /usr/lib/ipxe/qemu "\$@"
EOF
    chmod +x "$WORK/wrap/qemu-system-x86_64"
    qrc=0
    tests=(/x86_64/migration/postcopy/plain /x86_64/migration/postcopy/recovery/plain
           /x86_64/migration/postcopy/preempt/plain)
    # The 10.2 series brings its own cases: patch 1's LISTEN-without-discard case (upstream
    # QEMU alone, capability off) and a stub pager (capability on).
    listed=$(QTEST_QEMU_BINARY="$WORK/wrap/qemu-system-x86_64" "$MT" -l 2>/dev/null)
    grep -q postcopy/no-discard <<<"$listed" && tests+=(/x86_64/migration/postcopy/no-discard)
    grep -q external-pager <<<"$listed" && tests+=(/x86_64/migration/postcopy/external-pager)
    for t in "${tests[@]}"; do
      what="capability off"
      [[ $t == */external-pager ]] && what="capability on, the series' stub pager"
      if QTEST_QEMU_BINARY="$WORK/wrap/qemu-system-x86_64" QTEST_QEMU_IMG=/bin/false \
         timeout 900 "$MT" -p "$t" >"$WORK/qtest.log" 2>&1; then
        echo "PASS: migration-test $t ($(grep -c '^ok' "$WORK/qtest.log") ok, $what)"
      else
        qrc=1
        tail -5 "$WORK/qtest.log"
        echo "FAIL: migration-test $t"
      fi
    done
    (( qrc == 0 )) || rc=1
  fi
fi
exit "$rc"
