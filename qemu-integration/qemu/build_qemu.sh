#!/usr/bin/env bash
# Builds a minimal x86_64-softmmu QEMU with the x-postcopy-external-pager series applied (or,
# with --stock, QEMU as released), and prints the path of qemu-system-x86_64 as the last line of
# its output.
#
#   qemu-integration/qemu/build_qemu.sh [--version=7.2|10.2|11.1] [--stock] [--tests]
#
# 7.2 (default; what Debian 12 and its libvirt use): Debian bookworm's source package (7.2+dfsg;
# dpkg-source applies the Debian patches), series `patches-7.2/`.
# 10.2: QEMU 10.2.2 from Debian's orig tarball (10.2.2+ds, downloaded from deb.debian.org's
# pool, sha256 pinned below; the .dsc's Debian patches are not used), series `patches-10.2/`,
# configured with meson 1.7 and python3-pycotap from bookworm-backports unpacked into the cache
# (QEMU 10 needs meson >= 1.5; nothing of it is installed). Two build fixes for the +ds tarball,
# not part of the series: pc-bios/meson.build skips the edk2 blobs (not in the tarball) and
# the dtb subdirectory (no dtc here; x86_64 needs no device trees).
# 11.1: QEMU 11.1.1 the same way (11.1.1+ds orig tarball; series `patches-11.1/`). Debian's
# current .dsc lists 11.1.2/11.1.3, whose tarballs the pool here does not serve; 11.1.1's is
# served, and its sha256 below is the one of the file fetched on 2026-12-06 (no .dsc to check
# it against).
# --stock: the same source and flags without the series (the stock QEMU to compare against),
# cached separately as <version>-stock-<hash>.
#
# The build lives in ~/.cache/faultline/qemu/<version>[-stock]-<hash>/ where <hash> covers the
# patch series and the configure flags (10.2: also the tarball's sha256 and the build fixes): a
# second run with the same inputs only prints the path; a changed series builds afresh (the old
# one stays until removed). --tests also builds QEMU's migration-test qtest
# (tests/qtest/migration-test) in the same build directory. ccache is used when installed.
#
# Needs root for apt (deb-src entries, `apt-get source qemu`, a few -dev packages, the meson
# .debs) the first time. The series goes on the pristine tree (a fresh git repository) with
# `git am -3`. Nothing here writes into the repository.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VERSION=7.2
WITH_TESTS=0
STOCK=0
usage="usage: $0 [--version=7.2|10.2|11.1] [--stock] [--tests]"
for a in "$@"; do
  case "$a" in
    --tests) WITH_TESTS=1 ;;
    --stock) STOCK=1 ;;
    --version=7.2|--version=10.2|--version=11.1) VERSION=${a#*=} ;;
    --version=10.0) echo "$0: the 10.0 series is retired; use --version=10.2" >&2; exit 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
SERIES_DIR=$HERE/patches-$VERSION

# QEMU 10.2.2: Debian's orig tarball (the sha256 is the one in qemu_10.2.2+ds-1.dsc).
QEMU_10_2_URL=http://deb.debian.org/debian/pool/main/q/qemu/qemu_10.2.2+ds.orig.tar.xz
QEMU_10_2_SHA256=be05230fe47a6937cd29f28f562932c8125f9c93c2a82c625198f7a4aa601dfb
# QEMU 11.1.1: Debian's orig tarball (sha256 of the file as fetched; see the top).
QEMU_11_1_URL=http://deb.debian.org/debian/pool/main/q/qemu/qemu_11.1.1+ds.orig.tar.xz
QEMU_11_1_SHA256=0b1376e75dbe3e2fea4e408f8669f88a723f419f36a5b7d74cc6a4cfe07e4f5e

CACHE=${FAULTLINE_CACHE:-$HOME/.cache/faultline}/qemu
CONFIGURE_FLAGS=(--target-list=x86_64-softmmu --disable-docs --disable-werror
                 --without-default-features --enable-kvm --enable-tcg)
SOURCE_ID=()  # what else identifies the source tree (7.2: nothing, to keep its cache key)
if [[ $VERSION == 10.2 || $VERSION == 11.1 ]]; then
  if [[ $VERSION == 10.2 ]]; then
    TAR_URL=$QEMU_10_2_URL TAR_SHA256=$QEMU_10_2_SHA256 TAR_DIR=qemu-10.2.2
  else
    TAR_URL=$QEMU_11_1_URL TAR_SHA256=$QEMU_11_1_SHA256 TAR_DIR=qemu-11.1.1
  fi
  CONFIGURE_FLAGS+=(--python=/usr/bin/python3 --disable-download -Dinstall_blobs=false)
  SOURCE_ID=("$TAR_SHA256" "pc-bios: no edk2 unpack, no dtb")
  [[ $VERSION == 10.2 ]] || SOURCE_ID+=("pythondeps: no qemu.qmp")
  MESON_ROOT=$CACHE/meson-bpo/root
  MESON_PY=$MESON_ROOT/usr/lib/python3/dist-packages
  # configure and ninja (which re-runs meson when a meson.build changes) both need it.
  export PYTHONPATH=$MESON_PY${PYTHONPATH:+:$PYTHONPATH}
  export PATH=$MESON_ROOT/usr/bin:$PATH
fi
shopt -s nullglob
PATCHES=()
if (( ! STOCK )); then
  for p in "$SERIES_DIR"/*.patch; do
    [[ $p == *cover-letter* ]] || PATCHES+=("$p")  # the cover letter is no patch (nor in the hash)
  done
  (( ${#PATCHES[@]} > 0 )) || { echo "no patches in $SERIES_DIR" >&2; exit 1; }
  HASH=$( { cat "${PATCHES[@]}"; echo "${CONFIGURE_FLAGS[*]}"
            for s in "${SOURCE_ID[@]}"; do echo "$s"; done; } | sha256sum | cut -c1-16)
  NAME=$VERSION-$HASH
else
  HASH=$( { echo stock; echo "${CONFIGURE_FLAGS[*]}"
            for s in "${SOURCE_ID[@]}"; do echo "$s"; done; } | sha256sum | cut -c1-16)
  NAME=$VERSION-stock-$HASH
fi
OUT=$CACHE/$NAME
BIN=$OUT/build/qemu-system-x86_64
WHAT="$VERSION $( ((STOCK)) && echo stock || echo series) $HASH"

log() { echo "build_qemu: $*" >&2; }

# One build per series at a time: a second build_qemu.sh of the same series (another test
# suite, a helper) waits for the first and then uses its result instead of wiping its tree.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock-$NAME"
if ! flock -n 9; then
  log "another build of this series is running: waiting for it"
  flock 9
fi

# ccache when present (also for the migration-test build of a cached tree).
cc_flags=()
if [[ -x /usr/lib/ccache/cc ]]; then
  export CCACHE_DIR=${CCACHE_DIR:-${FAULTLINE_CACHE:-$HOME/.cache/faultline}/ccache}
  # Relative paths in the hash: a rebuild of a changed series reuses unchanged objects.
  export CCACHE_BASEDIR=$OUT CCACHE_NOHASHDIR=1
  cc_flags=(--cc=/usr/lib/ccache/cc --cxx=/usr/lib/ccache/c++)
fi

if [[ -f $OUT/.done && -x $BIN ]]; then
  if (( WITH_TESTS )) && [[ ! -x $OUT/build/tests/qtest/migration-test ]]; then
    log "building migration-test in $OUT/build"
    nice ninja -C "$OUT/build" -j"$(nproc)" tests/qtest/migration-test >&2
  fi
  log "cached: $WHAT"
  echo "$BIN"
  exit 0
fi

need_pkgs=()
for p in dpkg-dev ninja-build meson pkg-config libglib2.0-dev libpixman-1-dev python3-venv \
         flex bison libfdt-dev ccache git xz-utils curl; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if (( ${#need_pkgs[@]} )); then
  log "installing ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2
fi

# deb-src entries (bookworm, updates, backports, security), once.
ensure_deb_src() {
  if ! apt-cache showsrc qemu 2>/dev/null | grep -q "^Version: 1:$1"; then
    log "adding deb-src entries for bookworm"
    printf '%s\n' "Types: deb-src" "URIs: http://deb.debian.org/debian" \
      "Suites: bookworm bookworm-updates bookworm-backports" "Components: main" \
      "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" "" \
      "Types: deb-src" "URIs: http://deb.debian.org/debian-security" \
      "Suites: bookworm-security" "Components: main" \
      "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
      > /etc/apt/sources.list.d/faultline-debian-src.sources
    apt-get update -q >&2
  fi
}

git_init_and_am() {  # in the unpacked tree: pristine commit, then the series (if any)
  export GIT_AUTHOR_NAME=faultline GIT_AUTHOR_EMAIL=faultline@localhost
  export GIT_COMMITTER_NAME=faultline GIT_COMMITTER_EMAIL=faultline@localhost
  git init -q
  git add -A . >/dev/null
  git commit -qm "QEMU $(cat VERSION) from $1"
  if (( ${#PATCHES[@]} )); then
    git am -3 -q "${PATCHES[@]}"
  fi
}

# meson 1.7 + python3-pycotap from bookworm-backports, unpacked into the cache (QEMU >= 10).
ensure_meson_bpo() {
  [[ -d $MESON_PY/mesonbuild ]] && return 0
  log "fetching meson and python3-pycotap from bookworm-backports (unpacked, not installed)"
  mkdir -p "$CACHE/meson-bpo"
  printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" \
    "Suites: bookworm-backports" "Components: main" \
    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
    > /etc/apt/sources.list.d/faultline-bpo-tmp.sources
  apt-get update -q >&2
  (cd "$CACHE/meson-bpo" &&
   apt-get download -q meson/bookworm-backports python3-pycotap/bookworm-backports >&2) || true
  rm -f /etc/apt/sources.list.d/faultline-bpo-tmp.sources
  apt-get update -q >&2
  for d in "$CACHE"/meson-bpo/*.deb; do dpkg -x "$d" "$MESON_ROOT"; done
  [[ -d $MESON_PY/mesonbuild && -x $MESON_ROOT/usr/bin/meson ]] ||
    { echo "no meson >= 1.5 for QEMU 10 (bookworm-backports' meson .deb)" >&2; exit 1; }
}

# 1. The source, downloaded once; 2. a pristine tree as a git repository, then the series.
# Built in place (meson records absolute paths); .done marks a finished build.
if [[ $VERSION == 7.2 ]]; then
  mkdir -p "$CACHE/src"
  DSC=("$CACHE"/src/qemu_7.2*.dsc)
  if (( ${#DSC[@]} == 0 )); then
    ensure_deb_src 7.2
    # The newest 7.2 (backports offers newer QEMUs).
    ver=$(apt-cache showsrc qemu | sed -n 's/^Version: \(1:7\.2.*\)/\1/p' | sort -V | tail -1)
    [[ -n $ver ]] || { echo "apt knows no qemu 7.2 source" >&2; exit 1; }
    (cd "$CACHE/src" && apt-get source -q --download-only "qemu=$ver" >&2)
    DSC=("$CACHE"/src/qemu_7.2*.dsc)
    (( ${#DSC[@]} > 0 )) || { echo "apt-get source qemu did not bring a 7.2 source" >&2; exit 1; }
  fi
  rm -rf "$OUT"
  mkdir -p "$OUT"
  log "unpacking $(basename "${DSC[-1]}")"
  dpkg-source -q -x --no-check "${DSC[-1]}" "$OUT/src" >&2
  (cd "$OUT/src" && git_init_and_am "$(basename "${DSC[-1]}" .dsc)") >&2
else
  mkdir -p "$CACHE/src$VERSION"
  TARBALL=$CACHE/src$VERSION/$(basename "$TAR_URL")
  if [[ ! -f $TARBALL ]] || ! echo "$TAR_SHA256  $TARBALL" | sha256sum -c --quiet - 2>/dev/null
  then
    log "downloading $TAR_URL"
    curl -fsSL --retry 3 -o "$TARBALL.part" "$TAR_URL" ||
      { echo "could not download $TAR_URL" >&2; exit 1; }
    echo "$TAR_SHA256  $TARBALL.part" | sha256sum -c --quiet - ||
      { echo "$TARBALL: sha256 is not the pinned $TAR_SHA256" >&2; exit 1; }
    mv "$TARBALL.part" "$TARBALL"
  fi
  ensure_meson_bpo
  rm -rf "$OUT"
  mkdir -p "$OUT"
  log "unpacking $(basename "$TARBALL")"
  tar -C "$OUT" --no-same-owner -xf "$TARBALL"
  mv "$OUT/$TAR_DIR" "$OUT/src"
  (
    cd "$OUT/src"
    git_init_and_am "$(basename "$TARBALL")"
    # Build fixes for the +ds tarball, not part of the series (nor committed): it has no edk2
    # blobs to unpack, and the device trees under pc-bios/dtb need dtc (x86_64 uses none).
    sed -i -e "s/^if unpack_edk2_blobs\$/if unpack_edk2_blobs and fs.exists('edk2-aarch64-code.fd.bz2')/" \
      -e "s/^subdir('dtb')\$/# subdir('dtb')  # faultline build: no dtc/" pc-bios/meson.build
    grep -q "fs.exists('edk2-aarch64-code.fd.bz2')" pc-bios/meson.build &&
      grep -q "^# subdir('dtb')" pc-bios/meson.build ||
      { echo "pc-bios/meson.build did not take the build fixes" >&2; exit 1; }
    if [[ $VERSION == 11.1 ]]; then
      # 11.1's configure always installs its Python "tooling" group, which now needs the
      # external qemu.qmp package (for test scripts; the binaries do not use it); the +ds
      # tarball has no wheels and PyPI is not used: leave it and the in-tree package that
      # requires it out of the group.
      sed -i -e '/^"qemu.qmp" = /d' -e '/^"qemu" = { path = "python\/" }/d' pythondeps.toml
      ! grep -q '^"qemu' pythondeps.toml ||
        { echo "pythondeps.toml did not take the build fix" >&2; exit 1; }
    fi
  ) >&2
fi

# 3. Configure and build (meson/ninja; ccache when present).
mkdir -p "$OUT/build"
log "configuring (${CONFIGURE_FLAGS[*]})"
(cd "$OUT/build" && ../src/configure "${cc_flags[@]}" "${CONFIGURE_FLAGS[@]}" >configure.log 2>&1) ||
  { tail -20 "$OUT/build/configure.log" >&2; exit 1; }
targets=(qemu-system-x86_64)
(( WITH_TESTS )) && targets+=(tests/qtest/migration-test)
log "building ${targets[*]} (ninja -j$(nproc); 5-30 min on 2 cores)"
start=$(date +%s)
nice ninja -C "$OUT/build" -j"$(nproc)" "${targets[@]}" >"$OUT/build/ninja.log" 2>&1 ||
  { tail -30 "$OUT/build/ninja.log" >&2; exit 1; }
log "built in $(( $(date +%s) - start )) s: $BIN"
touch "$OUT/.done"
echo "$BIN"
