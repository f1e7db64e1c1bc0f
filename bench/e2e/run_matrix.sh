#!/usr/bin/env bash
# The post-copy comparison matrix in one command: builds faultline and its guest (-c opt),
# finds the QEMUs (qemu-integration/qemu/build_qemu.sh: cached after their first build — stock
# and patched 11.1.1, the newest release reachable here, and patched 7.2; Debian's
# qemu-system-x86_64 is the stock 7.2), then runs compare_postcopy.py — QEMU's own post-copy
# (7.2 and 11.1.1: plain, preempt, and 11.1.1 also with multifd before the switch), the patched
# QEMUs with faultline as their pager, and `faultline demo` — over RAM sizes, page sizes and
# vCPUs. The 10.2.2 scenarios (qemu10-*, faultline-qemu10) run when --scenarios names them.
#
#   sudo bench/e2e/run_matrix.sh [--quick] [--accel=auto|kvm|tcg] [--out DIR]
#                                [--bulk-channels N] [compare_postcopy.py options…]
#
# --quick: 256 MiB, 4 KiB pages, 1 vCPU (a smoke test: ~1 min with KVM here, 12 s under TCG).
# Without it the full matrix: 1 and 4 GiB, 4 KiB and 2 MiB pages, 1 and 2 vCPUs (~24 min here
# with KVM). --accel: auto (default) runs KVM when /dev/kvm opens and FAULTLINE_HIDE_KVM is not
# set, else TCG (`-accel tcg -cpu max` for every QEMU cell; the reference-VMM cells are then n/a).
# Results: DIR (default bench-out/matrix) gets results.json, results.md, latency.png,
# latency_dist.png. Exit status 1 if any cell failed or did not verify; cells that cannot run
# here are "n/a: <why>" and do not fail. Before the first cell a copy loop pinned to each CPU
# measures how many cores' worth the CPUs give when all are busy at once (results: machine
# cpu_share, printed with the load): ~2.0 on an idle 2-vCPU machine of the dev/CI kind; less
# means the cells share the CPUs with something else.
# --repeat N runs every cell N times, the scenarios interleaved; the best-mode tables and the
# targets then compare each figure's median (these 2-core machines are noisy: one run's downtime
# varies 2x from the next).
# Faultline's bulk channels: --bulk-channels N (default 2 for 4 KiB pages, 1 for 2 MiB pages:
# what a quick check here found fastest, bench/RESULTS.md); --bulk-channels-2m M for the latter.
# Prebuilt binaries instead of building here: FAULTLINE_BIN and FAULTLINE_GUEST (both); QEMUs:
# FAULTLINE_QEMU (patched 7.2), FAULTLINE_QEMU10 (patched 10.2.2), FAULTLINE_QEMU10_STOCK,
# FAULTLINE_QEMU11 (patched 11.1.1), FAULTLINE_QEMU11_STOCK.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=bench-out/matrix
ARGS=()
BULK=(--bulk-channels 2 --bulk-channels-2m 1)
while (( $# )); do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    --bulk-channels|--bulk-channels=*) BULK=(); ARGS+=("$1"); shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [[ $(id -u) != 0 ]]; then
  echo "SKIP: needs root (userfaultfd, huge pages, mount, /dev/kvm when there is one)"; exit 0
fi
if [[ -w /dev/kvm && -z ${FAULTLINE_HIDE_KVM:-} ]]; then
  echo "run_matrix: /dev/kvm is usable (--accel=auto runs KVM)"
else
  echo "run_matrix: no usable /dev/kvm${FAULTLINE_HIDE_KVM:+ (FAULTLINE_HIDE_KVM is set)}:" \
       "the QEMU cells run under TCG, the reference-VMM cells are n/a"
fi

BIN=$(mktemp -d /tmp/faultline-matrix-bin.XXXXXX)
REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')
if [[ -n ${FAULTLINE_BIN:-} && -n ${FAULTLINE_GUEST:-} ]]; then
  cp "$FAULTLINE_BIN" "$BIN/faultline"; cp "$FAULTLINE_GUEST" "$BIN/faultline-guest"
  LABEL="FAULTLINE_BIN=$FAULTLINE_BIN (sha256 $(sha256sum "$FAULTLINE_BIN" | cut -c1-12)); tree at $REV"
else
  LABEL="built -c opt from the working tree at $REV"
  [[ -n $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null) ]] &&
    LABEL+=" + uncommitted changes"
  (cd "$REPO" && bazel build -c opt //cli:faultline //qemu-integration/guest:faultline-guest \
     >"$BIN/bazel.log" 2>&1) || { tail -20 "$BIN/bazel.log"; echo "FAIL: bazel build"; exit 1; }
  # Copies: other builds in this workspace may replace bazel-out's files while the matrix runs.
  cp "$REPO/bazel-out/k8-opt/bin/cli/faultline" \
     "$REPO/bazel-out/k8-opt/bin/qemu-integration/guest/faultline-guest" "$BIN/"
fi
# The QEMUs: given, or compare_postcopy.py asks build_qemu.sh (and reports a failed build as
# the reason its cells are n/a). Debian's 7.2 is qemu-system-x86_64 on PATH.
QEMU_ARGS=()
[[ -n ${FAULTLINE_QEMU:-} ]] && QEMU_ARGS+=(--patched-qemu72 "$FAULTLINE_QEMU")
[[ -n ${FAULTLINE_QEMU10:-} ]] && QEMU_ARGS+=(--patched-qemu10 "$FAULTLINE_QEMU10")
[[ -n ${FAULTLINE_QEMU10_STOCK:-} ]] && QEMU_ARGS+=(--qemu10 "$FAULTLINE_QEMU10_STOCK")
[[ -n ${FAULTLINE_QEMU11:-} ]] && QEMU_ARGS+=(--patched-qemu11 "$FAULTLINE_QEMU11")
[[ -n ${FAULTLINE_QEMU11_STOCK:-} ]] && QEMU_ARGS+=(--qemu11 "$FAULTLINE_QEMU11_STOCK")
exec python3 "$HERE/compare_postcopy.py" --faultline "$BIN/faultline" \
  --guest "$BIN/faultline-guest" --faultline-label "$LABEL" "${QEMU_ARGS[@]}" "${BULK[@]}" \
  --out "$OUT" "${ARGS[@]}"
