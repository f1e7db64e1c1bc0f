#!/bin/bash
# The "does each test catch its defect" check: rebuilds the kernel of the last
# run_kernel_tests.sh run with the defect fixes taken out again (fixes-removed.diff:
# WP_ASYNC order, the EOF checks, the memcg scope, patch 8's hole check, the pre-fault
# EAGAIN, no huge-page recovery in a guest_memfd memslot), boots it and runs only the
# series' two selftests. Expected: eof_sigbus, wp_async_register, memcg_charged_to_guest,
# prefault_userfault, no_zero_fill_without_bitmap, copy_races_vcpu_fault and
# userfault_off_whole_huge_range fail; everything else passes.
# Usage: kernel/tests/run_negative_check.sh KEY   (KEY: the build-KEY run_kernel_tests.sh
# printed in its log path). Uses the persistent tree and puts it back afterwards.
set -euo pipefail
KEY=$1
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${FAULTLINE_CACHE:-$HOME/.cache/faultline}/kernel
SRC=$CACHE/work/src OBJ=$CACHE/work/obj
OUT=$(mktemp -d)
[[ $(git -C "$SRC" rev-parse HEAD) == $(git -C "$SRC" rev-parse "flt-$KEY") ]] ||
  { echo "work/src is not at flt-$KEY: run run_kernel_tests.sh first"; exit 2; }
git -C "$SRC" diff --quiet || { echo "work/src has local changes"; exit 2; }
patch -s -d "$SRC" -p1 <"$HERE/fixes-removed.diff"
rc=0
flock "${FAULTLINE_HEAVY_LOCK:-/tmp/faultline-heavy.lock}" \
  make -s -C "$SRC" O="$OBJ" -j"$(nproc)" bzImage >"$OUT/build.log" 2>&1 || rc=$?
cp "$OBJ/arch/x86/boot/bzImage" "$OUT/bzImage" || true
git -C "$SRC" checkout -q -f "flt-$KEY"  # the tree goes back whatever happened
[[ $rc == 0 ]] || { tail -30 "$OUT/build.log"; exit 1; }
RD=$OUT/rd
mkdir -p "$RD"/{bin,lib,lib64,tests,proc,sys,dev,tmp,run}
cp "$CACHE/build-$KEY/bin/init" "$RD/init"
cp "$CACHE/build-$KEY/bin/guest_memfd_uffd_test" "$CACHE/build-$KEY/bin/userfault_test" "$RD/tests/"
printf '%s\n' "guest_memfd_uffd_test:900 /tests/guest_memfd_uffd_test" \
  "userfault_test:1200 /tests/userfault_test" >"$RD/tests.list"
(cd "$RD" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$OUT/initramfs.cpio.gz"
timeout 3600 qemu-system-x86_64 -accel tcg -cpu max -m 3G -smp 2 -nographic -no-reboot \
  -kernel "$OUT/bzImage" -initrd "$OUT/initramfs.cpio.gz" \
  -append "console=ttyS0 panic=-1 tsc_early_khz=2000000 tsc=reliable hugepages=64 quiet" \
  </dev/null >"$OUT/run.log" 2>&1 || true
echo "log: $OUT/run.log"
tr -d '\r' <"$OUT/run.log" | grep -aE '^(ok|not ok) |^# Totals|KiB|Expected|terminated by timeout|reads 0x'
