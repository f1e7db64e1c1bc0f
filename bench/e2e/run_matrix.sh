#!/usr/bin/env bash
# The post-copy comparison matrix in one command: builds faultline and its guest (-c opt),
# finds the patched QEMU (qemu-integration/qemu/build_qemu.sh: cached after its first build),
# then runs compare_postcopy.py — QEMU's own post-copy (plain, preempt), the patched QEMU with
# faultline as its pager, and `faultline demo` — over RAM sizes, page sizes and vCPUs.
#
#   sudo bench/e2e/run_matrix.sh [--quick] [--out DIR] [compare_postcopy.py options…]
#
# --quick: 256 MiB, 4 KiB pages, 1 vCPU (a smoke test, ~1.5 min). Without it the full matrix
# (1 and 4 GiB, 4 KiB and 2 MiB pages, 1 and 2 vCPUs; ~25 min here). Results: DIR (default
# bench-out/matrix) gets results.json, results.md, latency.png. Exit status 1 if any cell
# failed or did not verify; cells that cannot run here are "n/a: <why>" and do not fail.
# Prebuilt binaries instead of building here: FAULTLINE_BIN and FAULTLINE_GUEST (both), and
# FAULTLINE_QEMU for the patched QEMU (e.g. when the working tree holds a series in progress).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=bench-out/matrix
ARGS=()
while (( $# )); do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --out=*) OUT=${1#*=}; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [[ $(id -u) != 0 ]]; then
  echo "SKIP: needs root (userfaultfd, /dev/kvm, huge pages, mount)"; exit 0
fi
[[ -w /dev/kvm ]] || { echo "SKIP: /dev/kvm is not usable"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || {
  echo "SKIP: no qemu-system-x86_64 (apt-get install qemu-system-x86)"; exit 0; }

BIN=$(mktemp -d /tmp/faultline-matrix-bin.XXXXXX)
if [[ -n ${FAULTLINE_BIN:-} && -n ${FAULTLINE_GUEST:-} ]]; then
  cp "$FAULTLINE_BIN" "$BIN/faultline"; cp "$FAULTLINE_GUEST" "$BIN/faultline-guest"
else
  (cd "$REPO" && bazel build -c opt //cli:faultline //qemu-integration/guest:faultline-guest \
     >"$BIN/bazel.log" 2>&1) || { tail -20 "$BIN/bazel.log"; echo "FAIL: bazel build"; exit 1; }
  # Copies: other builds in this workspace may replace bazel-out's files while the matrix runs.
  cp "$REPO/bazel-out/k8-opt/bin/cli/faultline" \
     "$REPO/bazel-out/k8-opt/bin/qemu-integration/guest/faultline-guest" "$BIN/"
fi
QEMU=${FAULTLINE_QEMU:-}
if [[ -z $QEMU ]]; then
  QEMU=$("$REPO/qemu-integration/qemu/build_qemu.sh" | tail -1) || QEMU=
fi
QEMU_ARGS=()
# (without one, compare_postcopy.py reports the faultline-qemu cells with build_qemu.sh's error)
[[ -n $QEMU && -x $QEMU ]] && QEMU_ARGS=(--patched-qemu "$QEMU")
exec python3 "$HERE/compare_postcopy.py" --faultline "$BIN/faultline" \
  --guest "$BIN/faultline-guest" "${QEMU_ARGS[@]}" --out "$OUT" "${ARGS[@]}"
