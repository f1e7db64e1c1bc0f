#!/bin/bash
# Builds the libFuzzer targets with clang-14 (ASan + UBSan + libFuzzer) outside Bazel (whose
# toolchain here is gcc) and runs each for a bounded time on its corpus in tests/fuzz/corpus.
# Usage: tools/fuzz.sh [SECONDS_PER_TARGET]   (default 20). Exit status non-zero on a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
OUT=${FAULTLINE_CACHE:-$HOME/.cache/faultline}/fuzz
mkdir -p "$OUT"
CXX="clang++-14 -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I. -msse4.2"
ABSL="$(pkg-config --libs absl_statusor absl_str_format absl_strings)"
echo "fuzz: building with clang-14 into $OUT"
$CXX -o "$OUT/protocol_fuzz" transport/protocol_fuzz.cc transport/protocol.cc \
  transport/protocol_rdma.cc $ABSL
$CXX -o "$OUT/handoff_fuzz" qemu-integration/handoff/handoff_fuzz.cc \
  qemu-integration/handoff/handoff_parse.cc base/memory_kind.cc $ABSL
rc=0
for t in protocol handoff; do
  corpus="tests/fuzz/corpus/$t"
  work="$OUT/corpus-$t"; mkdir -p "$work"
  echo "fuzz: $t for ${SECS}s (seed corpus: $(ls "$corpus" | wc -l) inputs)"
  if ! "$OUT/${t}_fuzz" -max_total_time="$SECS" -max_len=65536 -print_final_stats=1 \
       -artifact_prefix="$OUT/crash-$t-" "$work" "$corpus" > "$OUT/$t.log" 2>&1; then
    echo "fuzz: $t FAILED — see $OUT/$t.log and $OUT/crash-$t-*"; tail -40 "$OUT/$t.log"; rc=1
  else
    grep -E "stat::number_of_executed_units|cov:" "$OUT/$t.log" | tail -2
  fi
done
exit $rc
