#!/bin/bash
# The RDMA suite: boots Debian's 6.1 kernel under QEMU (TCG) with soft-RoCE (rdma_rxe), the host's
# root mounted read-only over 9p so the Bazel-built binaries and their shared libraries run
# unchanged inside, creates rxe0 on the guest's eth0 and runs there:
#   1. //tests/rdma:rdma_transport_test — RDMA unit + e2e tests (whole post-copy migrations over
#      rxe through the engine, every page compared with the source; failed completions, CRC
#      mismatches, reconnects);
#   2. an e2e migration with the CLI: faultline source --transport=rdma + faultline dest
#      --transport=rdma (every page verified by CRC32C against the source);
#   3. //bench/rdma:rdma_vs_tcp_benchmark — urgent 4 KiB fault latency and bulk throughput, RDMA and
#      TCP in the same VM run.
# Prints one summary line: "RDMA suite: PASS (...)", "RDMA suite: FAIL (...)" or "... SKIP (why)".
#
# Usage (as root, from anywhere in the repo):  tests/rdma/run_rdma_tests.sh
# Needs: qemu-system-x86_64, network access to a Debian mirror on the first run (apt-get
# download linux-image-6.1.0-*-amd64), busybox-static and kmod (installed with apt if missing).
# Cached in ~/.cache/faultline/rdma/<key>/ (vmlinux, initrd), keyed by the kernel package, the
# busybox binary and this script. Results of the last run: ~/.cache/faultline/rdma/last-run/.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${HOME}/.cache/faultline/rdma"
TIMEOUT="${RDMA_VM_TIMEOUT:-1500}"
mkdir -p "$CACHE/debs"
log() { echo "[rdma] $*" >&2; }

# Exit codes: 0 pass, 1 fail, 2 skipped (a prerequisite is missing; the line says which).
command -v qemu-system-x86_64 >/dev/null || { echo "RDMA suite: SKIP (qemu-system-x86_64 missing: apt-get install qemu-system-x86)"; exit 2; }
# The VM sees the host's / over 9p but mounts its own tmpfs on /tmp, which hides a checkout
# (and its bazel-bin) under /tmp. TODO: share the checkout as its own 9p mount instead.
case "$REPO/" in
  /tmp/*) echo "RDMA suite: SKIP (the checkout is under /tmp ($REPO), which the VM's own /tmp hides; run it from a checkout elsewhere)"; exit 2 ;;
esac
if ! [ -x /bin/busybox ] || ! file -L /bin/busybox 2>/dev/null | grep -q "statically linked"; then
  log "installing busybox-static"
  apt-get install -y busybox-static >/dev/null
fi

if ! command -v depmod >/dev/null && ! [ -x /usr/sbin/depmod ] && ! [ -x /sbin/depmod ]; then
  log "installing kmod (depmod, modprobe --show-depends for the guest's module order)"
  apt-get install -y kmod >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- 1. the kernel (Debian's linux-image-6.1 .debs, extracted, never installed) ---------------
DEB="$(ls -1 "$CACHE"/debs/linux-image-6.1.0-*-amd64_*.deb 2>/dev/null | grep -v -- '-dbg\|unsigned' | sort -V | tail -1 || true)"
if [ -z "$DEB" ]; then
  log "downloading Debian's 6.1 kernel"
  (cd "$CACHE/debs" &&
    PKG="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6/{print $2; exit}')" &&
    apt-get download linux-image-amd64 "$PKG" >&2) ||
    { echo "RDMA suite: SKIP (cannot download Debian's linux-image-6.1 package: no mirror?)"; exit 2; }
  DEB="$(ls -1 "$CACHE"/debs/linux-image-6.1.0-*-amd64_*.deb | grep -v -- '-dbg\|unsigned' | sort -V | tail -1)"
fi
KEY="$( (basename "$DEB"; sha256sum /bin/busybox "$0" | cut -c1-64) | sha256sum | cut -c1-16)"
ART="$CACHE/$KEY"
if ! [ -f "$ART/initrd.gz" ] || ! [ -f "$ART/vmlinux" ]; then
  log "building the VM image in $ART"
  rm -rf "$ART.tmp" && mkdir -p "$ART.tmp/x" "$ART.tmp/root"
  dpkg-deb -x "$DEB" "$ART.tmp/x"
  KVER="$(ls "$ART.tmp/x/lib/modules")"
  depmod -b "$ART.tmp/x" "$KVER"
  # Uncompressed vmlinux boots via PVH much faster under TCG than vmlinuz.
  python3 - "$ART.tmp/x/boot/vmlinuz-$KVER" "$ART.tmp/vmlinux" <<'PY'
import lzma, sys
data = open(sys.argv[1], 'rb').read()
i = data.find(b'\xfd7zXZ\x00')
d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
open(sys.argv[2], 'wb').write(d.decompress(data[i:]))
PY
  R="$ART.tmp/root"
  mkdir -p "$R"/{bin,dev,proc,sys,host,mods,results}
  cp /bin/busybox "$R/bin/busybox"
  for t in sh mount umount insmod mkdir ln cat echo sleep poweroff chroot mknod; do ln -s busybox "$R/bin/$t"; done
  ORDER=""
  for m in crc32_generic virtio_pci virtio_net 9p 9pnet_virtio rdma_rxe rdma_ucm ib_uverbs overlay; do
    for f in $(modprobe -d "$ART.tmp/x" -S "$KVER" --show-depends "$m" | awk '/^insmod/{print $2}'); do
      b="$(basename "$f")"
      case " $ORDER " in *" $b "*) ;; *) ORDER="$ORDER $b"; cp "$f" "$R/mods/$b" ;; esac
    done
  done
  echo "$ORDER" > "$R/mods/order"
  cat > "$R/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m 2>/dev/null || echo "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro hostroot /host || echo "9p hostroot failed"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs -o size=1400m tmp /host/tmp
mkdir -p /host/tmp/results
mount -t 9p -o trans=virtio,version=9p2000.L results /host/tmp/results || echo "9p results failed"
ln -s /proc/self/fd /host/dev/fd 2>/dev/null
SCRIPT="$(cat /proc/cmdline | sed -n 's/.*fl_script=\([^ ]*\).*/\1/p')"
chroot /host /bin/bash "$SCRIPT" > /host/tmp/results/guest.log 2>&1
echo "guest script exit $?"
poweroff -f
INIT
  chmod +x "$R/init"
  (cd "$R" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$ART.tmp/initrd.gz"
  mv "$ART.tmp/vmlinux" "$ART.tmp/initrd.gz" "$ART.tmp/root/mods/order" "$ART.tmp/" 2>/dev/null || true
  mkdir -p "$ART" && mv "$ART.tmp/vmlinux" "$ART.tmp/initrd.gz" "$ART/" && rm -rf "$ART.tmp"
fi
# Images of older inputs (another kernel package or script) are not needed any more.
find "$CACHE" -maxdepth 1 -mindepth 1 -type d -regextype posix-extended \
  -regex ".*/[0-9a-f]{16}(\.tmp)?" ! -name "$KEY" -exec rm -rf {} +

# --- 2. the binaries (run from the host's root inside the guest) ------------------------------
cd "$REPO"
log "building the binaries"
TARGETS="//tests/rdma:rdma_transport_test //cli:faultline //bench/rdma:rdma_vs_tcp_benchmark"
# Its own output base (no wait on the Bazel lock of other work; no bazel-* symlinks touched).
OB="${RDMA_BAZEL_OUTPUT_BASE:-$CACHE/bazel}"
# RDMA_BAZEL_FLAGS: e.g. "--config=tsan" to run the sanitizer builds inside the VM.
FLAGS="${RDMA_BAZEL_FLAGS:--c opt}"
bazel --output_base="$OB" build $FLAGS --symlink_prefix=/ $TARGETS >&2
BIN="$(bazel --output_base="$OB" info $FLAGS bazel-bin 2>/dev/null)"
RESULTS="$CACHE/last-run"
rm -rf "$RESULTS" && mkdir -p "$RESULTS"
cat > "$RESULTS/env" <<ENV
BIN=$BIN
REPO=$REPO
ONLY=${RDMA_SUITE_ONLY:-}
GTEST_FILTER=${RDMA_GTEST_FILTER:-}
GDB_ON_FAIL=${RDMA_GDB_ON_FAIL:-}
ENV

# --- 3. boot and run ------------------------------------------------------------------------
log "booting the VM (TCG; the suite takes a few minutes)"
START=$(date +%s)
set +e
timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 2048 -smp 2 -nographic -no-reboot \
  -kernel "$ART/vmlinux" -initrd "$ART/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1 fl_script=$REPO/tests/rdma/guest_suite.sh fl_env=/tmp/results/env" \
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$RESULTS",mount_tag=results,security_model=none \
  > "$RESULTS/console.log" 2>&1
QRC=$?
set -e
ELAPSED=$(( $(date +%s) - START ))
cat "$RESULTS/guest.log" >&2 2>/dev/null || true
if [ -f "$RESULTS/summary" ]; then
  echo "$(cat "$RESULTS/summary") [VM ${ELAPSED}s]"
  grep -q "^RDMA suite: PASS" "$RESULTS/summary"
else
  echo "RDMA suite: FAIL (no result from the VM; qemu exit $QRC; see $RESULTS/console.log) [VM ${ELAPSED}s]"
  exit 1
fi
