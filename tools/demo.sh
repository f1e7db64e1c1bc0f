#!/bin/bash
# The main job: builds faultline and runs the demo migration (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bazel build -c opt //cli:faultline //qemu-integration/guest:faultline-guest >/dev/null 2>&1 || bazel build -c opt //cli:faultline
BIN=bazel-bin/cli/faultline
[[ $(id -u) -eq 0 ]] || { echo "demo: userfaultfd and KVM need root; re-run with sudo" >&2; exit 1; }
# A real KVM guest migrated through faultline (falls back to the thread guest without KVM).
"$BIN" demo --size=1G --stats_json=/tmp/faultline-demo.json "$@"
echo "report: /tmp/faultline-demo.json"
