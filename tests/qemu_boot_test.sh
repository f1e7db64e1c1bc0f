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

# Two vCPUs: the mailbox (written into the RAM file before boot) asks for 2 CPUs; the boot CPU
# starts the other with INIT/SIPI and both run every phase on their half of the pages.
RAM="$TEST_TMPDIR/ram"
python3 - "$RAM" <<'PY'
import struct, sys
size = 64 << 20
with open(sys.argv[1], 'wb') as f:
    f.truncate(size)
    f.seek(0x5000)  # FLT_MAILBOX_GPA: magic, version, ram_size, seed, touches, slow, mode, rounds, cpus
    f.write(struct.pack('<IIQQQQIII', 0x4D544C46, 1, size, 7, 1024, 0, 0xF, 1, 2))
PY
OUT2="$TEST_TMPDIR/serial2.log"
timeout 300 "$QEMU" -accel tcg -smp 2 -m 64M -nographic -no-reboot -monitor none -display none \
  -object memory-backend-file,id=mem,size=64M,mem-path="$RAM",share=on \
  -machine pc,memory-backend=mem -kernel "$GUEST" -device isa-debug-exit,iobase=0x501 \
  -serial "file:$OUT2" </dev/null
rc=$?
cat "$OUT2"
if [[ $rc -ne 1 ]]; then echo "FAIL: 2 vCPUs: QEMU exit status $rc (want 1: guest wrote 0)"; exit 1; fi
for cpu in 0 1; do
  grep -q "FLT cpu=$cpu phase=hot" "$OUT2" || { echo "FAIL: CPU $cpu did not run its phases"; exit 1; }
done
grep -q "FLT done cpus=2 bad=0" "$OUT2" || { echo "FAIL: 2 vCPUs: guest did not finish cleanly"; exit 1; }
# A line broken into by the other CPU (SeaBIOS leaves "Booting from ROM.." unterminated).
if sed 's/^Booting from ROM\.\.//' "$OUT2" | grep -q -E "FLT .*FLT |.FLT "; then
  echo "FAIL: 2 vCPUs: interleaved serial lines"; exit 1
fi
echo "PASS: guest started its second vCPU under QEMU (INIT/SIPI)"
