#!/bin/bash
# The faultline guest boots under QEMU too (PVH ELF via -kernel, TCG), runs every phase and
# exits through isa-debug-exit with "no bad reads" — the same guest QEMU's own post-copy will
# migrate in the side-by-side bench.
set -uo pipefail
QEMU=$(command -v qemu-system-x86_64 || true)
if [[ -z "$QEMU" ]]; then
  echo "SKIP: qemu-system-x86_64 is not installed (tools/setup.sh installs qemu-system-x86)"
  exit 0
fi
GUEST="$TEST_SRCDIR/$TEST_WORKSPACE/qemu-integration/guest/faultline-guest"
[[ -f "$GUEST" ]] || { echo "guest ELF not found at $GUEST"; exit 1; }
OUT="$TEST_TMPDIR/serial.log"
timeout 300 "$QEMU" -accel tcg -m 64M -nographic -no-reboot -monitor none -display none \
  -kernel "$GUEST" -device isa-debug-exit,iobase=0x501 -serial "file:$OUT" </dev/null
rc=$?
cat "$OUT"
# isa-debug-exit: status = (value << 1) | 1; the guest writes 0 when every read was right.
if [[ $rc -ne 1 ]]; then echo "FAIL: QEMU exit status $rc (want 1: guest wrote 0)"; exit 1; fi
for phase in dirty seq random hot; do
  grep -q "phase=$phase" "$OUT" || { echo "FAIL: no $phase phase in the serial log"; exit 1; }
done
grep -q "FLT done cpus=1 bad=0" "$OUT" || { echo "FAIL: guest did not finish cleanly"; exit 1; }
echo "PASS: guest booted under $("$QEMU" --version | head -1)"
