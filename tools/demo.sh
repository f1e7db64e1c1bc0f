#!/bin/bash
# The main job: builds faultline and runs the demo migration (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bazel build -c opt //cli:faultline >/dev/null 2>&1 || bazel build -c opt //cli:faultline
BIN=bazel-bin/cli/faultline
[[ $(id -u) -eq 0 ]] || { echo "demo: userfaultfd and KVM need root; re-run with sudo" >&2; exit 1; }
# hugetlb needs 2 x 512 huge pages for a 1 GiB local run; reserve them if we can.
want=1100; cur=$(cat /proc/sys/vm/nr_hugepages)
if (( cur < want )); then echo "$want" > /proc/sys/vm/nr_hugepages || true; fi
"$BIN" local --kind=all --size=1G --stats_json=/tmp/faultline-demo.json "$@"
echo "report: /tmp/faultline-demo.json"
