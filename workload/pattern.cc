#include "workload/pattern.h"

#include <cstring>

namespace faultline {
namespace {

inline uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

bool PatternPageIsZero(const PatternSpec& spec, uint64_t page) {
  return SplitMix(spec.seed * 31 + page) % 100 < spec.zero_percent;
}

void FillPatternPage(const PatternSpec& spec, uint64_t page, uint8_t* dst) {
  if (PatternPageIsZero(spec, page)) {
    memset(dst, 0, 4096);
    return;
  }
  uint64_t s = SplitMix(spec.seed ^ (page * 0x100000001b3ull));
  auto* w = reinterpret_cast<uint64_t*>(dst);
  for (int i = 0; i < 512; ++i) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    w[i] = s;
  }
  w[0] = page;  // the page number itself: a misplaced page is obvious in a dump
}

void FillPattern(const PatternSpec& spec, uint8_t* mem, uint64_t size, uint64_t first_page) {
  for (uint64_t off = 0; off < size; off += 4096) {
    FillPatternPage(spec, first_page + off / 4096, mem + off);
  }
}

}  // namespace faultline
