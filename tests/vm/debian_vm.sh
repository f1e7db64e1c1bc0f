#!/bin/bash
# A small VM for suites that need what this host may lack: soft-RoCE (rdma_rxe) for the RDMA
# suite, a working /dev/kvm for the KVM suites on a host without one. Sourced, not run.
#
# The VM: Debian's own 6.1 kernel (linux-image-6.1.0-*-amd64, downloaded with apt and
# extracted, never installed) under QEMU TCG with `-cpu max` — which emulates SVM, so kvm_amd
# loads inside and /dev/kvm works there — and a busybox initramfs that mounts the host's root
# read-only over 9p and chroots into it, so the Bazel-built binaries and their shared
# libraries run unchanged. Inside: /tmp is the VM's own tmpfs, the checkout is mounted at its
# own path (so a checkout under /tmp works too), and the host directory RESULTS is
# /tmp/results, read-write.
#
#   . tests/vm/debian_vm.sh
#   vm_image || exit 2                      # sets VM_KERNEL, VM_INITRD (cached); says why not
#   vm_run SCRIPT RESULTS TIMEOUT_S [qemu args...]   # runs `bash SCRIPT` in the VM's chroot
#
# Cached in ${FAULTLINE_CACHE:-~/.cache/faultline}/vm/<key>/, keyed by the kernel package, the
# busybox binary and this file. Needs root (apt, 9p of /), qemu-system-x86_64, network access
# to a Debian mirror the first time.

VM_CACHE="${FAULTLINE_CACHE:-$HOME/.cache/faultline}/vm"
VM_SELF="${BASH_SOURCE[0]}"
VM_WHY=""
vm_log() { echo "[vm] $*" >&2; }

# Two kernels, chosen by VM_FLAVOUR before vm_image:
#   6.1   Debian 12's own linux-image-6.1 (apt-get download): soft-RoCE for the RDMA suite.
#   6.18  Debian's 6.18.15 from trixie-backports (pinned file and hash, from any Debian mirror):
#         a kernel with guest_memfd (MMAP) and a nested SVM that runs 2-vCPU guests, for the KVM
#         suite. Its vmlinuz is zstd-compressed: booted as it is.
VM_FLAVOUR=${VM_FLAVOUR:-6.1}
VM_618_DEB=linux-image-6.18.15+deb13-amd64_6.18.15-1~bpo13+1_amd64.deb
VM_618_SHA256=d38a7af6260782a47cd615ad717347a528b45f076245b4deabb3f1ecf8459186
# Modules loaded in the VM, in this order (with their dependencies): crc32_generic first (rxe
# asks for it at run time), virtio networking and 9p, soft-RoCE, KVM for AMD (SVM: what TCG's
# `-cpu max` offers).
if [[ $VM_FLAVOUR == 6.18 ]]; then
  VM_MODULES="virtio_pci virtio_net 9p 9pnet_virtio overlay kvm_amd"
else
  VM_MODULES="crc32_generic virtio_pci virtio_net 9p 9pnet_virtio rdma_rxe rdma_ucm ib_uverbs overlay kvm_amd"
fi

vm_image() {
  command -v qemu-system-x86_64 >/dev/null ||
    { VM_WHY="qemu-system-x86_64 missing [setup]: tools/setup.sh installs qemu-system-x86"; return 1; }
  if ! [ -x /bin/busybox ] || ! file -L /bin/busybox 2>/dev/null | grep -q "statically linked"; then
    vm_log "installing busybox-static"
    apt-get install -y busybox-static >/dev/null 2>&1 ||
      { VM_WHY="busybox-static cannot be installed [setup]"; return 1; }
  fi
  if ! command -v depmod >/dev/null && ! [ -x /usr/sbin/depmod ] && ! [ -x /sbin/depmod ]; then
    vm_log "installing kmod"
    apt-get install -y kmod >/dev/null 2>&1 || { VM_WHY="kmod cannot be installed [setup]"; return 1; }
  fi
  mkdir -p "$VM_CACHE/debs"
  local deb=""
  if [[ $VM_FLAVOUR == 6.18 ]]; then
    deb="$VM_CACHE/debs/$VM_618_DEB"
    if ! [ -f "$deb" ]; then
      vm_log "downloading Debian's 6.18 kernel package (trixie-backports)"
      curl -fsS -o "$deb.tmp" "http://deb.debian.org/debian/pool/main/l/linux-signed-amd64/$VM_618_DEB" &&
        echo "$VM_618_SHA256  $deb.tmp" | sha256sum -c --quiet && mv "$deb.tmp" "$deb" ||
        { rm -f "$deb.tmp"; VM_WHY="cannot download Debian's $VM_618_DEB (no Debian mirror?)"; return 1; }
    fi
  else
    deb="$(ls -1 "$VM_CACHE"/debs/linux-image-6.1.0-*-amd64_*.deb 2>/dev/null | grep -v -- '-dbg\|unsigned' | sort -V | tail -1 || true)"
  fi
  if [ -z "$deb" ]; then
    vm_log "downloading Debian's 6.1 kernel package"
    local pkg
    pkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6/{print $2; exit}')"
    (cd "$VM_CACHE/debs" && apt-get download "$pkg" >&2) ||
      { VM_WHY="cannot download Debian's linux-image-6.1 package ($pkg): no Debian mirror?"; return 1; }
    deb="$(ls -1 "$VM_CACHE"/debs/linux-image-6.1.0-*-amd64_*.deb | grep -v -- '-dbg\|unsigned' | sort -V | tail -1)"
  fi
  local key art
  key="$( (basename "$deb"; echo "$VM_FLAVOUR $VM_MODULES"; sha256sum /bin/busybox "$VM_SELF" | cut -c1-64) | sha256sum | cut -c1-16)"
  art="$VM_CACHE/img-$VM_FLAVOUR-$key"
  VM_KERNEL="$art/vmlinux"
  VM_INITRD="$art/initrd.gz"
  if [ -f "$VM_INITRD" ] && [ -f "$VM_KERNEL" ]; then return 0; fi
  (
    set -e
    # depmod and modprobe live in /usr/sbin. Only in this subshell: a PATH changed for the
    # caller would change the environment of its Bazel builds after this (run_kvm_tests.sh,
    # run_rdma_tests.sh), and with it every C++ action's key — a full rebuild of each part.
    export PATH="$PATH:/usr/sbin:/sbin"
    exec 9>"$VM_CACHE/.lock"
    flock 9
    [ -f "$VM_INITRD" ] && [ -f "$VM_KERNEL" ] && exit 0
    vm_log "building the VM image in $art"
    rm -rf "$art.tmp" && mkdir -p "$art.tmp/x" "$art.tmp/root"
    dpkg-deb -x "$deb" "$art.tmp/x"
    # Newer packages install into /usr/lib/modules (merged /usr).
    [ -d "$art.tmp/x/lib/modules" ] || ln -s usr/lib "$art.tmp/x/lib"
    local kver
    kver="$(ls "$art.tmp/x/lib/modules")"
    depmod -b "$art.tmp/x" "$kver"
    # The uncompressed vmlinux boots via PVH, much faster under TCG than vmlinuz; a kernel
    # compressed otherwise than with xz is booted as it is.
    python3 - "$art.tmp/x/boot/vmlinuz-$kver" "$art.tmp/vmlinux" <<'PY'
import lzma, shutil, sys
data = open(sys.argv[1], 'rb').read()
i = data.find(b'\xfd7zXZ\x00')
if i < 0:
    shutil.copy(sys.argv[1], sys.argv[2])
else:
    open(sys.argv[2], 'wb').write(lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[i:]))
PY
    local r="$art.tmp/root" order="" m f b
    mkdir -p "$r"/{bin,dev,proc,sys,host,mods}
    cp /bin/busybox "$r/bin/busybox"
    for t in sh mount umount insmod mkdir ln cat echo sleep poweroff chroot mknod sed; do ln -s busybox "$r/bin/$t"; done
    for m in $VM_MODULES; do
      for f in $(modprobe -d "$art.tmp/x" -S "$kver" --show-depends "$m" | awk '/^insmod/{print $2}'); do
        b="$(basename "$f" .xz)"
        case " $order " in
          *" $b "*) ;;
          *) order="$order $b"
             case $f in *.xz) xz -dc "$f" > "$r/mods/$b" ;; *) cp "$f" "$r/mods/$b" ;; esac ;;
        esac
      done
    done
    echo "$order" > "$r/mods/order"
    cat > "$r/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do
  case $m in kvm?amd.ko) insmod /mods/$m nested=1 ;; *) insmod /mods/$m ;; esac 2>/dev/null ||
    echo "insmod $m failed"
done
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro hostroot /host || echo "9p hostroot failed"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/shm /host/dev/pts
mount -t tmpfs -o size=1g shm /host/dev/shm
mount -t tmpfs -o size=1400m tmp /host/tmp
ln -s /proc/self/fd /host/dev/fd 2>/dev/null
REPO=$(arg fl_repo)
if [ -n "$REPO" ]; then
  mkdir -p "/host$REPO" 2>/dev/null
  mount -t 9p -o trans=virtio,version=9p2000.L,ro repo "/host$REPO" || echo "9p repo failed"
fi
mkdir -p /host/tmp/results
mount -t 9p -o trans=virtio,version=9p2000.L results /host/tmp/results || echo "9p results failed"
chroot /host /bin/bash "$(arg fl_script)" > /host/tmp/results/guest.log 2>&1
echo "guest script exit $?"
poweroff -f
INIT
    chmod +x "$r/init"
    (cd "$r" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$art.tmp/initrd.gz"
    mkdir -p "$art" && mv "$art.tmp/vmlinux" "$art.tmp/initrd.gz" "$art/" && rm -rf "$art.tmp"
  ) || { VM_WHY="building the VM image failed"; return 1; }
  # Images of this flavour built from older inputs are not needed any more.
  find "$VM_CACHE" -maxdepth 1 -mindepth 1 -type d -name "img-$VM_FLAVOUR-*" \
    ! -name "img-$VM_FLAVOUR-$key" -exec rm -rf {} + 2>/dev/null
  return 0
}

# vm_run SCRIPT RESULTS TIMEOUT [qemu args...]: boots the VM, runs `bash SCRIPT` chrooted into
# the host's root with RESULTS as /tmp/results; the script's output goes to RESULTS/guest.log,
# the console to RESULTS/console.log. Returns QEMU's exit status (124: timed out).
# VM_APPEND: more kernel command line (ending in a space); VM_ACCEL: QEMU's -accel (tcg).
vm_run() {
  local script=$1 results=$2 timeout=$3
  shift 3
  local repo
  repo="$(cd "$(dirname "$VM_SELF")/../.." && pwd)"
  mkdir -p "$results"
  timeout "$timeout" qemu-system-x86_64 -accel "${VM_ACCEL:-tcg}" -cpu max -m "${VM_MEM:-3072}" -smp 2 \
    -nographic -no-reboot -kernel "$VM_KERNEL" -initrd "$VM_INITRD" \
    -append "console=ttyS0 ${VM_QUIET-quiet} panic=-1 tsc_early_khz=2000000 tsc=reliable hugepages=${VM_HUGEPAGES:-0} ${VM_APPEND:-}fl_script=$script fl_repo=$repo" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs local,path="$repo",mount_tag=repo,security_model=none,readonly=on,multidevs=remap \
    -virtfs local,path="$results",mount_tag=results,security_model=none \
    "$@" > "$results/console.log" 2>&1 </dev/null
}
