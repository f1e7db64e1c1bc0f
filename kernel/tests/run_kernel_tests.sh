#!/bin/bash
# Builds linux v6.18.5 (Debian's orig tarball; see step 1) with the series in kernel/patches,
# boots it under QEMU TCG with nested SVM (so /dev/kvm works inside), and runs there:
#   guest_memfd_uffd_test   the series' selftest: userfaultfd on guest_memfd (each case)
#   userfault_test          the series' selftest: KVM Userfault vCPU exits on x86 (each case)
#   guest_memfd_test        KVM's upstream selftest (regression)
#   set_memory_region_test  KVM's upstream selftest (regression; memslot flags)
#   pre_fault_memory_test   KVM's upstream selftest (regression; KVM_PRE_FAULT_MEMORY)
#   uffd-unit-tests         mm's upstream userfaultfd suite (regression)
#   pagemap_ioctl           mm's upstream PAGEMAP_SCAN suite (regression; uffd WP_ASYNC)
#   faultline_uffd_test     engine/uffd_test, which places a guest_memfd page on this kernel
#   faultline_demo_guest_memfd
#                           a guest_memfd-backed KVM guest migrated post-copy by faultline,
#                           vCPU faults included, every page verified
#   kernel_not_tainted      no WARN/oops anywhere in the run
# It prints one line per test (PASS/FAIL/SKIP, skips and failures with why) and ends with
# "kernel tests: N passed, N failed, N skipped".
#
# Caching, in ${FAULTLINE_CACHE:-~/.cache/faultline}/kernel:
#   linux-$VERSION/   the pristine source, a git repository tagged v$VERSION
#   work/src, obj/    one persistent worktree + object directory: a new patch set is checked
#                     out there as a commit, so git rewrites only the files that differ and
#                     make rebuilds only what depends on them (seconds to a few minutes,
#                     instead of ~8 min of both cores for a cold build)
#   build-$KEY/       the artifacts of one input set (kernel, selftests, /init); KEY hashes the
#                     patches, the config fragment, init.c and this script's build recipe. A
#                     rerun with the same inputs only boots and tests.
# Builds run under flock $FAULTLINE_HEAVY_LOCK (default /tmp/faultline-heavy.lock), so that
# only one heavy build runs at a time on a shared machine.
#
# Linux source, first found of: the cache, $LINUX_SRC (a tree), a tarball at $LINUX_TARBALL,
# Debian's linux_6.18.5.orig.tar.xz from deb.debian.org (pinned by hash), or v6.18.4 from the
# local mirror the project's search tool fetches (see shared notes/kernel.md).
#
# Exit status: 0 all passed, 1 something failed, 2 the suite cannot run here (says why).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${FAULTLINE_CACHE:-$HOME/.cache/faultline}/kernel
JOBS=${JOBS:-$(nproc)}
LOCK=${FAULTLINE_HEAVY_LOCK:-/tmp/faultline-heavy.lock}
mkdir -p "$CACHE"
log() { echo "kernel-tests: $*" >&2; }
heavy() { flock "$LOCK" "$@"; }
# With $FAULTLINE_RESULTS set (tools/test.sh), one record per test (tools/test_report.py).
record() {
  [[ -n ${FAULTLINE_RESULTS:-} ]] && printf '%s\tkernel\t%s\t%s\n' "$1" "$2" "${3:-}" >>"$FAULTLINE_RESULTS"
  return 0
}
die() {
  record fail "kernel suite" "$*"
  echo "kernel tests: 0 passed, 1 failed, 0 skipped ($*)"
  exit 1
}
# Exit status 2: the suite cannot run on this machine (says why); tools/test.sh reports a skip.
cannot() { record skip "kernel suite" "$*"; echo "kernel tests: skipped — $*"; exit 2; }

for t in flex bison bc gcc make qemu-system-x86_64 cpio git flock; do
  command -v $t >/dev/null || cannot "missing tool '$t' [setup]: tools/setup.sh installs it"
done

# ---- 1. pristine source, as a git repository tagged v$VERSION ----------------------------
# The base is v6.18.5 as Debian ships it (linux_6.18.5.orig.tar.xz from any Debian mirror:
# every machine of ours reaches one; pinned by hash), or v6.18.4 from the project's search-tool
# mirror where Debian cannot be reached; the series applies to both unchanged.
DEBIAN_ORIG=linux_6.18.5.orig.tar.xz
DEBIAN_SHA256=69ac99a397e2e1d9e97f6ade0c01e4ab704ba999667932b6b35fec032700cb19
MIRROR=/work/.mirror/liuhaoqq9311-creator+dev-linux-kernel/repo
VERSION=${LINUX_VERSION:-6.18.5}
PRISTINE=$CACHE/linux-$VERSION
if ! git -C "$PRISTINE" rev-parse -q --verify "v$VERSION" >/dev/null 2>&1; then
  rm -rf "$PRISTINE" && mkdir -p "$PRISTINE"
  if [[ -n ${LINUX_SRC:-} ]]; then
    log "copying $LINUX_SRC"
    cp -a "$LINUX_SRC/." "$PRISTINE/"
  elif [[ -n ${LINUX_TARBALL:-} ]]; then
    tar -xf "$LINUX_TARBALL" -C "$PRISTINE" --strip-components=1
  elif [[ $VERSION == 6.18.5 ]] &&
       curl -fsS -o "$CACHE/$DEBIAN_ORIG" "http://deb.debian.org/debian/pool/main/l/linux/$DEBIAN_ORIG" &&
       echo "$DEBIAN_SHA256  $CACHE/$DEBIAN_ORIG" | sha256sum -c --quiet; then
    log "extracting Debian's $DEBIAN_ORIG"
    tar -xf "$CACHE/$DEBIAN_ORIG" -C "$PRISTINE" --strip-components=1
    rm -f "$CACHE/$DEBIAN_ORIG"
  elif [[ -d $MIRROR ]] && git --git-dir="$MIRROR" rev-parse -q --verify v6.18.4 >/dev/null; then
    VERSION=6.18.4
    PRISTINE=$CACHE/linux-$VERSION
    rm -rf "$PRISTINE" && mkdir -p "$PRISTINE"
    log "no Debian mirror: extracting v$VERSION from $MIRROR"
    # Blobs the snapshot lacks (AMD GPU register headers, unused here) are left out.
    missing=$(git --git-dir="$MIRROR" ls-tree -r -l "v$VERSION" |
      awk '$4 >= 4000000 {print $3, $5}' |
      while read -r h p; do git --git-dir="$MIRROR" cat-file -e "$h" 2>/dev/null || echo ":(exclude)$p"; done)
    # shellcheck disable=SC2086
    git --git-dir="$MIRROR" archive "v$VERSION" -- . $missing | tar -x -C "$PRISTINE"
  else
    cannot "no Linux source: Debian's $DEBIAN_ORIG could not be downloaded (no Debian mirror?) and there is no local mirror; set LINUX_SRC or LINUX_TARBALL"
  fi
  git -C "$PRISTINE" init -q
  git -C "$PRISTINE" add -A >/dev/null 2>&1
  git -C "$PRISTINE" -c user.name=faultline -c user.email=faultline@localhost \
    commit -qm "linux $VERSION" --no-verify
  git -C "$PRISTINE" tag "v$VERSION"
fi

# ---- 2. the patched build, keyed by its inputs ---------------------------------------------
PATCHES=$(printf '%s\n' "$ROOT"/kernel/patches/*.patch | grep -v cover-letter)
# The build recipe (this section) is part of the key: a change to it rebuilds.
RECIPE=$(sed -n '/^# ---- 2\./,/^# ---- 3\./p' "$0")
# shellcheck disable=SC2086
KEY=$( (echo "$VERSION"; echo "$RECIPE"; cat $PATCHES "$ROOT"/kernel/tests/kernel.config \
  "$ROOT"/kernel/tests/init.c) | sha256sum | cut -c1-16)
OUT=$CACHE/build-$KEY
TREE=$CACHE/work
KVM_TESTS="guest_memfd_uffd_test x86/userfault_test guest_memfd_test set_memory_region_test pre_fault_memory_test"
MM_TESTS="uffd-unit-tests pagemap_ioctl"
if [[ ! -f $OUT/done ]]; then
  mkdir -p "$OUT/bin"
  # The series as a commit on v$VERSION, made in a scratch worktree.
  if ! git -C "$PRISTINE" rev-parse -q --verify "refs/tags/flt-$KEY" >/dev/null; then
    AM=$CACHE/am-$KEY
    git -C "$PRISTINE" worktree prune
    rm -rf "$AM"
    git -C "$PRISTINE" worktree add -q --detach "$AM" "v$VERSION"
    # shellcheck disable=SC2086
    git -C "$AM" -c user.name=faultline -c user.email=faultline@localhost am -q $PATCHES ||
      { git -C "$AM" am --abort >/dev/null 2>&1 || true; git -C "$PRISTINE" worktree remove --force "$AM";
        die "the series does not apply on v$VERSION"; }
    git -C "$PRISTINE" tag -f "flt-$KEY" "$(git -C "$AM" rev-parse HEAD)" >/dev/null
    git -C "$PRISTINE" worktree remove --force "$AM"
  fi
  # The persistent tree: checking the commit out rewrites only the files that differ.
  if [[ ! -d $TREE/src ]]; then
    git -C "$PRISTINE" worktree prune
    mkdir -p "$TREE"
    git -C "$PRISTINE" worktree add -q --detach "$TREE/src" "flt-$KEY"
  else
    git -C "$TREE/src" checkout -q --detach "flt-$KEY" ||
      die "cannot check out the series in $TREE/src (local changes there?)"
  fi
  SRC=$TREE/src
  OBJ=$TREE/obj
  mkdir -p "$OBJ"
  # .config from tinyconfig + the fragment; regenerated only when the fragment changes, and
  # kbuild then rebuilds only what the changed options touch.
  CFG_SUM=$(cat "$ROOT/kernel/tests/kernel.config" | sha256sum | cut -c1-16)
  if [[ ! -f $OBJ/.config || $(cat "$OBJ/.fragment" 2>/dev/null) != "$CFG_SUM" ]]; then
    make -s -C "$SRC" O="$OBJ" tinyconfig >/dev/null
    "$SRC/scripts/kconfig/merge_config.sh" -m -O "$OBJ" "$OBJ/.config" \
      "$ROOT/kernel/tests/kernel.config" >/dev/null
    make -s -C "$SRC" O="$OBJ" olddefconfig
    echo "$CFG_SUM" >"$OBJ/.fragment"
  fi
  log "building the patched kernel in $TREE (incremental; a cold build is ~8 min of 2 cores)"
  heavy make -s -C "$SRC" O="$OBJ" -j"$JOBS" bzImage >"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; die "kernel build failed ($OUT/build.log)"; }
  make -s -C "$SRC" O="$OBJ" headers >/dev/null
  HDR="-isystem $OBJ/usr/include"
  # The selftests are rebuilt from scratch for a new input set (their objects would not
  # notice changed UAPI headers).
  rm -rf "$TREE/st" && mkdir -p "$TREE/st/kvm" "$TREE/st/mm"
  # shellcheck disable=SC2046
  heavy make -s -C "$SRC/tools/testing/selftests/kvm" OUTPUT="$TREE/st/kvm" LDFLAGS=-static \
    KHDR_INCLUDES="$HDR" $(for t in $KVM_TESTS; do echo "$TREE/st/kvm/$t"; done) \
    >"$OUT/st-kvm.log" 2>&1 || die "building the KVM selftests failed ($OUT/st-kvm.log)"
  # shellcheck disable=SC2046
  heavy make -s -C "$SRC/tools/testing/selftests/mm" OUTPUT="$TREE/st/mm" LDFLAGS=-static \
    KHDR_INCLUDES="$HDR" $(for t in $MM_TESTS; do echo "$TREE/st/mm/$t"; done) \
    >"$OUT/st-mm.log" 2>&1 || die "building the mm selftests failed ($OUT/st-mm.log)"
  gcc -O2 -Wall -static -o "$OUT/bin/init" "$ROOT/kernel/tests/init.c" ||
    die "building init.c failed"
  for t in $KVM_TESTS; do cp "$TREE/st/kvm/$t" "$OUT/bin/"; done
  for t in $MM_TESTS; do cp "$TREE/st/mm/$t" "$OUT/bin/"; done
  cp "$OBJ/arch/x86/boot/bzImage" "$OUT/bzImage"
  touch "$OUT/done"
fi

# ---- 3. faultline itself (dynamic: its libraries go into the initramfs too) ---------------
(cd "$ROOT" && heavy bazel build -c opt //cli:faultline //engine:uffd_test \
  //qemu-integration/guest:faultline-guest >/dev/null 2>&1) ||
  die "bazel build of faultline failed"
BIN=$ROOT/bazel-out/k8-opt/bin

# ---- 4. initramfs -----------------------------------------------------------------------
RD=$(mktemp -d)
trap 'rm -rf "$RD"' EXIT
mkdir -p "$RD"/{bin,lib,lib64,tests,proc,sys,dev,tmp,run}
cp "$OUT/bin/init" "$RD/init"
for t in $KVM_TESTS $MM_TESTS; do cp "$OUT/bin/$(basename "$t")" "$RD/tests/"; done
cp "$BIN/cli/faultline" "$BIN/engine/uffd_test" "$RD/tests/"
cp "$BIN/qemu-integration/guest/faultline-guest" "$RD/tests/"
for lib in $(ldd "$BIN/cli/faultline" "$BIN/engine/uffd_test" | awk '/=> \//{print $3}' | sort -u); do
  cp -L "$lib" "$RD/lib/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$RD/lib64/"
# "name[:timeout_s] command args..." (init.c); the harness suites print one KTAP line per case.
cat >"$RD/tests.list" <<'EOF'
guest_memfd_uffd_test:600 /tests/guest_memfd_uffd_test
userfault_test:1200 /tests/userfault_test
guest_memfd_test:600 /tests/guest_memfd_test
set_memory_region_test:600 /tests/set_memory_region_test
pre_fault_memory_test:600 /tests/pre_fault_memory_test
uffd-unit-tests:900 /tests/uffd-unit-tests
pagemap_ioctl:600 /tests/pagemap_ioctl
faultline_uffd_test:300 /tests/uffd_test --gtest_brief=1
faultline_demo_guest_memfd:900 /tests/faultline demo --dest_ram=guest_memfd --size=64M --guest_touches=512 --progress=false
EOF
INITRD=$CACHE/initramfs-$KEY.cpio.gz
(cd "$RD" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$INITRD"

# ---- 5. boot ------------------------------------------------------------------------------
LOG=$CACHE/run-$KEY.log
log "booting (log: $LOG)"
timeout 5400 qemu-system-x86_64 -accel tcg -cpu max -m 3G -smp 2 -nographic -no-reboot \
  -kernel "$OUT/bzImage" -initrd "$INITRD" \
  -append "console=ttyS0 panic=-1 tsc_early_khz=2000000 tsc=reliable hugepages=64 quiet" \
  </dev/null >"$LOG" 2>&1 || true
rm -f "$INITRD"

# ---- 6. one line per test -----------------------------------------------------------------
# The series' own selftests get one line per case; the upstream regression suites and
# faultline's programs one line each, with their own counts where they print them.
pass=0 fail=0 skip=0
line() {  # STATUS NAME DETAIL
  case $1 in
    PASS) pass=$((pass + 1)); record pass "$2" "${3:-in the VM of the patched kernel}" ;;
    FAIL) fail=$((fail + 1)); record fail "$2" "${3:-see $LOG}" ;;
    SKIP) skip=$((skip + 1)); record skip "$2" "${3:-}" ;;
  esac
  printf '%-4s  %s%s\n' "$1" "$2" "${3:+  ($3)}"
}
CLEAN=$(mktemp)
tr -d '\r' <"$LOG" >"$CLEAN"
# The output of suite $1 (between its FLT-START and FLT-RESULT lines).
section() { awk -v t="$1" '$1 == "FLT-START" && $2 == t {on=1; next}
                           $1 == "FLT-RESULT" && $2 == t {on=0} on' "$CLEAN"; }
rc_of() { awk -v t="$1" '$1 == "FLT-RESULT" && $2 == t {print $3}' "$CLEAN"; }
ktap_cases() {  # SUITE: one line per "ok N name" / "not ok N name" / "ok N name # SKIP why"
  local suite=$1 st name why n=0 rc
  # STATUS<tab>NAME<tab>WHY per case; a failure's WHY is the first line of its log that says
  # what was expected (the harness's "Expected ..." or a TEST_ASSERT message), else the last.
  while IFS=$'\t' read -r st name why; do
    n=$((n + 1))
    case $st in
      skip) line SKIP "$suite: $name" "${why:-no reason given}" ;;
      ok) line PASS "$suite: $name" ;;
      *) line FAIL "$suite: $name" "${why:-see $LOG}" ;;
    esac
  done < <(section "$suite" | awk '
    /^# +RUN / { buf = ""; first = ""; next }
    /^(not )?ok [0-9]+ / {
      st = ($1 == "not") ? "fail" : "ok"
      name = $0; sub(/^(not )?ok [0-9]+ /, "", name)
      why = first != "" ? first : buf
      if (name ~ / # SKIP/) { why = name; sub(/.* # SKIP ?/, "", why); sub(/ # SKIP.*/, "", name); st = "skip" }
      gsub(/\t/, " ", why)
      printf "%s\t%s\t%s\n", st, name, why
      buf = ""; first = ""; next
    }
    /^(TAP version|1\.\.|# (Starting|PASSED|FAILED|Totals|SKIP))/ { next }
    {
      l = $0; sub(/^# /, "", l); sub(/^ +/, "", l)
      if (l == "" || l ~ /^OK |^=+ Test Assertion/) next
      if (first == "" && l ~ /Expected|timeout|want|[Ff]ailed|should/) first = l
      buf = l
    }')
  rc=$(rc_of "$suite")
  if [[ -z $rc ]]; then
    line FAIL "$suite" "did not finish (see $LOG)"
  elif ((n == 0)); then
    if [[ $rc == 4 ]]; then
      line SKIP "$suite" "$(section "$suite" | grep -m1 -iE "skip|require|not available" | sed 's/^# //')"
    else
      line FAIL "$suite" "exit $rc, no test case reported (see $LOG)"
    fi
  elif [[ $rc != 0 && $rc != 4 ]] && ! section "$suite" | grep -q "^not ok"; then
    line FAIL "$suite" "exit $rc after its cases (see $LOG)"
  fi
}
program() {  # SUITE [DETAIL]: one line for the whole program, from its exit status
  local suite=$1 detail=${2:-} rc failed
  rc=$(rc_of "$suite")
  # A KTAP suite's failed cases, named.
  failed=$(section "$suite" | sed -n 's/^not ok [0-9]* //p' | head -3 | paste -sd ';' -)
  [[ -n $failed && $rc != 0 ]] && detail="${detail:+$detail; }failed: $failed"
  case $rc in
    0) line PASS "$suite" "$detail" ;;
    4) line SKIP "$suite" "$(section "$suite" | grep -m1 -iE "skip" | sed 's/^# //')" ;;
    "") line FAIL "$suite" "did not run or did not finish (see $LOG)" ;;
    *) line FAIL "$suite" "exit $rc${detail:+; $detail} (see $LOG)" ;;
  esac
}

ktap_cases guest_memfd_uffd_test
ktap_cases userfault_test
program guest_memfd_test
program set_memory_region_test
program pre_fault_memory_test
program uffd-unit-tests "$(section uffd-unit-tests | grep -m1 -o 'pass=[0-9]*, skip=[0-9]*, fail=[0-9]*')"
program pagemap_ioctl "$(section pagemap_ioctl | grep -m1 -oE 'pass:[0-9]+ fail:[0-9]+' )"
program faultline_uffd_test "$(section faultline_uffd_test | grep -m1 -oE '[0-9]+ tests? from .* ran|PASSED.*')"
program faultline_demo_guest_memfd "$(section faultline_demo_guest_memfd |
  grep -E 'guest memory verified|missing-page exits' | sed 's/  */ /g; s/^ //' | paste -sd ';' -)"
if [[ $(rc_of kernel_not_tainted) == 0 ]]; then
  line PASS kernel_not_tainted
else
  line FAIL kernel_not_tainted "$(section kernel_not_tainted | grep -m3 -E 'WARNING|BUG|tainted' | paste -sd ';' -)"
fi
rm -f "$CLEAN"
echo "kernel tests: $pass passed, $fail failed, $skip skipped"
[[ $fail -eq 0 ]]
