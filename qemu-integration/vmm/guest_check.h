// Host-side checks of guest memory written by faultline-guest.
#ifndef FAULTLINE_QEMU_INTEGRATION_VMM_GUEST_CHECK_H_
#define FAULTLINE_QEMU_INTEGRATION_VMM_GUEST_CHECK_H_

#include <cstdint>

#include "absl/status/statusor.h"

namespace faultline {

// Checks the dirty phase's pattern over guest-physical [start, end) of `ram`: every page's
// first word is flt_page_value(seed, gpa >> 12) and the rest of the page is zero. Returns the
// number of pages checked, or DataLoss naming the first bad page and how many were bad.
// `churned`: word 1 may hold anything (FLT_MODE_CHURN's generation counter).
absl::StatusOr<uint64_t> VerifyDirtyPattern(const uint8_t* ram, uint64_t ram_size, uint64_t seed,
                                            uint64_t start, uint64_t end, bool churned = false);

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_VMM_GUEST_CHECK_H_
