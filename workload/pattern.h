// Deterministic guest-memory content for migrations in tests, the bench and the local run:
// every page is either all zeros (a chosen fraction, as a real guest's free memory) or
// pseudo-random words derived from (seed, page number), so any page can be checked alone.
#ifndef FAULTLINE_WORKLOAD_PATTERN_H_
#define FAULTLINE_WORKLOAD_PATTERN_H_

#include <cstdint>

namespace faultline {

struct PatternSpec {
  uint64_t seed = 1;
  uint32_t zero_percent = 25;  // pages that are all zeros
};

bool PatternPageIsZero(const PatternSpec& spec, uint64_t page);
// Fills page `page` (4 KiB units) at `dst`.
void FillPatternPage(const PatternSpec& spec, uint64_t page, uint8_t* dst);
// Fills [mem, mem+size) (a multiple of 4 KiB); page numbers start at `first_page`.
void FillPattern(const PatternSpec& spec, uint8_t* mem, uint64_t size, uint64_t first_page = 0);

}  // namespace faultline

#endif  // FAULTLINE_WORKLOAD_PATTERN_H_
