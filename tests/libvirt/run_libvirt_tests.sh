#!/usr/bin/env bash
# The libvirt suite: `faultline migrate` against two real, private libvirtd daemons on this
# machine (libvirtd_instance.sh), the domain's emulator the QEMU with faultline's series
# (qemu-integration/qemu/build_qemu.sh; cached), the guest the faultline guest on KVM — or, on a
# host without /dev/kvm (or with FAULTLINE_HIDE_KVM=1), under TCG (domain type 'qemu'). The cases
# and what each asserts: libvirt_migration_test.py. Ends with "libvirt tests: P passed, F failed"
# or "libvirt suite: SKIP (why)".
#
# Usage (as root):  tests/libvirt/run_libvirt_tests.sh [--cases=pager,plain,...] [--size_mib=256]
#                   [--qemu_version=7.2|10.2|11.1]
# FAULTLINE_BIN / FAULTLINE_GUEST: use these binaries instead of building them with Bazel.
# Exit codes: 0 pass, 1 fail, 2 skipped.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
skip() { echo "libvirt suite: SKIP ($*)"; exit 2; }

[[ $(id -u) == 0 ]] || skip "needs root: two libvirtd daemons in their own mount namespaces"
command -v libvirtd >/dev/null && command -v virsh >/dev/null ||
  skip "no libvirtd/virsh [setup]: apt-get install libvirt-daemon-system libvirt-clients (tools/setup.sh does)"
ACCEL=kvm
if [[ -n ${FAULTLINE_HIDE_KVM:-} || ! -w /dev/kvm ]]; then
  ACCEL=tcg
  echo "libvirt suite: no usable /dev/kvm here: the domains run under TCG (type 'qemu')" >&2
fi
[[ -f /usr/share/seabios/bios-256k.bin ]] || skip "no SeaBIOS [setup]: apt-get install seabios qemu-system-data"
command -v unshare >/dev/null || skip "no unshare (util-linux)"

# --qemu_version=10.2 or 11.1: the domains run that QEMU with its series (warm-up runs; not in
# CI — a cold build costs ~4-15 min more); default 7.2 (Debian's QEMU with the 7.2 series).
QVER=7.2
for arg in "$@"; do [[ $arg == --qemu_version=* ]] && QVER=${arg#*=}; done
QEMU=$("$REPO/qemu-integration/qemu/build_qemu.sh" --version="$QVER" | tail -1) || { echo "libvirt tests: 0 passed, 1 failed (QEMU build)"; exit 1; }
WORK=$(mktemp -d /var/tmp/faultline-libvirt.XXXXXX)
if [[ -n ${FAULTLINE_BIN:-} && -n ${FAULTLINE_GUEST:-} ]]; then
  cp "$FAULTLINE_BIN" "$WORK/faultline" && cp "$FAULTLINE_GUEST" "$WORK/faultline-guest"
else
  (cd "$REPO" && bazel build -c opt //cli:faultline //qemu-integration/guest:faultline-guest \
     >"$WORK/bazel.log" 2>&1) || { tail -20 "$WORK/bazel.log"; echo "libvirt tests: 0 passed, 1 failed (bazel build)"; exit 1; }
  BIN=$(cd "$REPO" && bazel info -c opt bazel-bin 2>/dev/null)
  cp "$BIN/cli/faultline" "$BIN/qemu-integration/guest/faultline-guest" "$WORK/"
fi
chmod u+w "$WORK/faultline" "$WORK/faultline-guest"
python3 "$HERE/libvirt_migration_test.py" --faultline="$WORK/faultline" \
  --guest="$WORK/faultline-guest" --qemu="$QEMU" --workdir="$WORK" --accel="$ACCEL" "$@"
rc=$?
(( rc == 0 )) && rm -rf "$WORK"
exit $rc
