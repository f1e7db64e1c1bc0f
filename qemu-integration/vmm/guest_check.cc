#include "qemu-integration/vmm/guest_check.h"

#include <cstring>

#include "absl/strings/str_format.h"
#include "qemu-integration/guest/guest_abi.h"

namespace faultline {

absl::StatusOr<uint64_t> VerifyDirtyPattern(const uint8_t* ram, uint64_t ram_size, uint64_t seed,
                                            uint64_t start, uint64_t end, bool churned) {
  if (start % 4096 || end % 4096 || start > end || end > ram_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bad range [0x%x, 0x%x) for %u bytes of guest RAM", start, end, ram_size));
  }
  uint64_t bad = 0, first_bad = 0, got = 0, want = 0;
  for (uint64_t gpa = start; gpa < end; gpa += 4096) {
    const uint8_t* page = ram + gpa;
    uint64_t w;
    memcpy(&w, page, 8);
    uint64_t expect = flt_page_value(seed, gpa >> 12);
    bool ok = w == expect;
    for (size_t off = churned ? 16 : 8; ok && off < 4096; off += 8) {
      uint64_t z;
      memcpy(&z, page + off, 8);
      ok = z == 0;
    }
    if (!ok && bad++ == 0) {
      first_bad = gpa;
      got = w;
      want = expect;
    }
  }
  if (bad != 0) {
    return absl::DataLossError(absl::StrFormat(
        "%u of %u pages lack the dirty pattern; first at gpa 0x%x: word 0x%x, want 0x%x "
        "(and zeros after it)",
        bad, (end - start) / 4096, first_bad, got, want));
  }
  return (end - start) / 4096;
}

}  // namespace faultline
