#!/bin/bash
# Installs what faultline needs on a fresh Debian 12 machine (apt packages only). Idempotent.
set -euo pipefail
PKGS=(bazel-bootstrap g++ pkg-config libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
      libibverbs-dev librdmacm-dev libvirt-dev nlohmann-json3-dev libxxhash-dev libssl-dev openssl
      clang-14 libclang-rt-14-dev gnuplot-nox qemu-system-x86 libxml2-dev
      libmicrohttpd-dev prometheus  # the host daemon's /metrics, and the scrape test
      libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu  # the libvirt suite
      flex bison bc libelf-dev dwarves cpio git curl xz-utils)  # the last line: kernel/ suite
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: all packages present"
