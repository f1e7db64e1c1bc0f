#!/bin/bash
# The main job: builds faultline and runs the demo migration (see README).
#
# With /dev/kvm: `faultline demo` — the reference VMM's KVM guest, every role its own process.
# Without (some machines of this kind have none, or FAULTLINE_HIDE_KVM=1): the same guest under
# QEMU TCG, the patched QEMU (qemu-integration/qemu, built once into ~/.cache/faultline/qemu)
# as source and destination VMM, faultline as the destination's pager; the same report.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "demo: userfaultfd and KVM need root; re-run with sudo" >&2; exit 1; }
bazel build -c opt //cli:faultline //qemu-integration/guest:faultline-guest >/dev/null 2>&1 ||
  bazel build -c opt //cli:faultline //qemu-integration/guest:faultline-guest
BIN=$(bazel info -c opt bazel-bin 2>/dev/null)
if [[ -w /dev/kvm && -z ${FAULTLINE_HIDE_KVM:-} ]]; then
  # A real KVM guest migrated through faultline.
  "$BIN/cli/faultline" demo --size=1G --stats_json=/tmp/faultline-demo.json "$@"
  echo "report: /tmp/faultline-demo.json"
  exit 0
fi
echo "demo: no usable /dev/kvm here: the guest runs under QEMU TCG instead, the patched QEMU as"
echo "      both VMMs and faultline as the destination's pager"
QEMU_DIR=${FAULTLINE_CACHE:-$HOME/.cache/faultline}/qemu
if ! ls "$QEMU_DIR"/7.2-*/build/qemu-system-x86_64 >/dev/null 2>&1; then
  echo "demo: building the patched QEMU once into $QEMU_DIR (about 10-20 min on 2 cores;"
  echo "      later runs reuse it)"
fi
t=$(date +%s)
QEMU=$(qemu-integration/qemu/build_qemu.sh | tail -1)
echo "demo: QEMU ready ($(( $(date +%s) - t )) s): $QEMU"
WORK=$(mktemp -d /tmp/faultline-demo.XXXXXX)
cp "$BIN/cli/faultline" "$BIN/qemu-integration/guest/faultline-guest" "$WORK/"
FW=()
for d in /usr/share/seabios /usr/share/qemu; do [[ -d $d ]] && FW+=(--firmware "$d"); done
python3 qemu-integration/qemu/qemu_migration.py --qemu="$QEMU" --faultline="$WORK/faultline" \
  --guest="$WORK/faultline-guest" --accel=tcg --size_mib="${DEMO_SIZE_MIB:-1024}" \
  --workdir="$WORK" --report "${FW[@]}" | tee "$WORK/report.txt" |
  sed -n '/^== faultline demo/,$p; /^FAIL/p'
grep -q "^PASS" "$WORK/report.txt"
echo "logs and report: $WORK"
