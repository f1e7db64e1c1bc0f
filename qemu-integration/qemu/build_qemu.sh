#!/usr/bin/env bash
# Builds a minimal x86_64-softmmu QEMU with the x-postcopy-external-pager series applied, and
# prints the path of qemu-system-x86_64 as the last line of its output.
#
#   qemu-integration/qemu/build_qemu.sh [--tests]        # QEMU 7.2 (Debian bookworm source)
#
# The build lives in ~/.cache/faultline/qemu/<hash>/ where <hash> covers the patch series and the
# configure flags: a second run with the same series only prints the path; a changed series
# builds afresh (the old one stays until removed). --tests also builds QEMU's migration-test
# qtest (tests/qtest/migration-test) in the same build directory.
#
# Needs root for apt (a deb-src entry, `apt-get source qemu`, a few -dev packages) the first time.
# Debian's source package (7.2+dfsg) has the Debian patches applied by dpkg-source; the series
# goes on top with `git am`. Nothing here writes into the repository.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SERIES_DIR=$HERE/patches-7.2
WITH_TESTS=0
for a in "$@"; do
  case "$a" in
    --tests) WITH_TESTS=1 ;;
    *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
  esac
done

CACHE=${FAULTLINE_CACHE:-$HOME/.cache/faultline}/qemu
CONFIGURE_FLAGS=(--target-list=x86_64-softmmu --disable-docs --disable-werror
                 --without-default-features --enable-kvm --enable-tcg)
shopt -s nullglob
PATCHES=()
for p in "$SERIES_DIR"/*.patch; do
  [[ $p == *cover-letter* ]] || PATCHES+=("$p")  # the cover letter is no patch (nor in the hash)
done
(( ${#PATCHES[@]} > 0 )) || { echo "no patches in $SERIES_DIR" >&2; exit 1; }
HASH=$( { cat "${PATCHES[@]}"; echo "${CONFIGURE_FLAGS[*]}"; } | sha256sum | cut -c1-16)
OUT=$CACHE/7.2-$HASH
BIN=$OUT/build/qemu-system-x86_64

log() { echo "build_qemu: $*" >&2; }

if [[ -f $OUT/.done && -x $BIN ]]; then
  if (( WITH_TESTS )) && [[ ! -x $OUT/build/tests/qtest/migration-test ]]; then
    log "building migration-test in $OUT/build"
    ninja -C "$OUT/build" -j"$(nproc)" tests/qtest/migration-test >&2
  fi
  log "cached: series $HASH"
  echo "$BIN"
  exit 0
fi

# 1. Debian's source package (downloaded once into $CACHE/src).
need_pkgs=()
for p in dpkg-dev ninja-build meson pkg-config libglib2.0-dev libpixman-1-dev python3-venv \
         flex bison libfdt-dev ccache git; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if (( ${#need_pkgs[@]} )); then
  log "installing ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2
fi
mkdir -p "$CACHE/src"
DSC=("$CACHE"/src/qemu_7.2*.dsc)
if (( ${#DSC[@]} == 0 )); then
  if ! grep -rqs "deb-src" /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null ||
     ! apt-cache showsrc qemu 2>/dev/null | grep -q '^Version: 1:7.2'; then
    log "adding a deb-src entry for bookworm"
    cat > /etc/apt/sources.list.d/faultline-debian-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt-get update -q >&2
  fi
  # The newest 7.2 (other suites, e.g. backports, may offer newer QEMUs).
  ver=$(apt-cache showsrc qemu | sed -n 's/^Version: \(1:7\.2.*\)/\1/p' | sort -V | tail -1)
  [[ -n $ver ]] || { echo "apt knows no qemu 7.2 source" >&2; exit 1; }
  (cd "$CACHE/src" && apt-get source -q --download-only "qemu=$ver" >&2)
  DSC=("$CACHE"/src/qemu_7.2*.dsc)
  (( ${#DSC[@]} > 0 )) || { echo "apt-get source qemu did not bring a 7.2 source" >&2; exit 1; }
fi

# 2. Pristine tree (Debian patches applied) as a git repository, then the series.
# Built in place (meson records absolute paths); .done marks a finished build.
rm -rf "$OUT"
mkdir -p "$OUT"
log "unpacking $(basename "${DSC[-1]}")"
dpkg-source -q -x --no-check "${DSC[-1]}" "$OUT/src" >&2
(
  cd "$OUT/src"
  export GIT_AUTHOR_NAME=faultline GIT_AUTHOR_EMAIL=faultline@localhost
  export GIT_COMMITTER_NAME=faultline GIT_COMMITTER_EMAIL=faultline@localhost
  git init -q
  git add -A . >/dev/null
  git commit -qm "QEMU $(cat VERSION) from $(basename "${DSC[-1]}" .dsc)"
  git am -q "${PATCHES[@]}"
) >&2

# 3. Configure and build (meson/ninja; ccache when present).
mkdir -p "$OUT/build"
cc_flags=()
if [[ -x /usr/lib/ccache/cc ]]; then
  export CCACHE_DIR=${CCACHE_DIR:-${FAULTLINE_CACHE:-$HOME/.cache/faultline}/ccache}
  # Relative paths in the hash: a rebuild of a changed series reuses unchanged objects.
  export CCACHE_BASEDIR=$OUT CCACHE_NOHASHDIR=1
  cc_flags=(--cc=/usr/lib/ccache/cc --cxx=/usr/lib/ccache/c++)
fi
log "configuring (${CONFIGURE_FLAGS[*]})"
(cd "$OUT/build" && ../src/configure "${cc_flags[@]}" "${CONFIGURE_FLAGS[@]}" >configure.log 2>&1) ||
  { tail -20 "$OUT/build/configure.log" >&2; exit 1; }
targets=(qemu-system-x86_64)
(( WITH_TESTS )) && targets+=(tests/qtest/migration-test)
log "building ${targets[*]} (ninja -j$(nproc); 10-20 min on 2 cores)"
start=$(date +%s)
nice ninja -C "$OUT/build" -j"$(nproc)" "${targets[@]}" >"$OUT/build/ninja.log" 2>&1 ||
  { tail -30 "$OUT/build/ninja.log" >&2; exit 1; }
log "built in $(( $(date +%s) - start )) s: $BIN"
touch "$OUT/.done"
echo "$BIN"
