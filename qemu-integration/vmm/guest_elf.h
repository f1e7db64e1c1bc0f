// Where the guest ELF built by //qemu-integration/guest:faultline-guest is at run time.
#ifndef FAULTLINE_QEMU_INTEGRATION_VMM_GUEST_ELF_H_
#define FAULTLINE_QEMU_INTEGRATION_VMM_GUEST_ELF_H_

#include <string>

namespace faultline {

// The first of: $FAULTLINE_GUEST_ELF; the runfiles copy ($TEST_SRCDIR or $RUNFILES_DIR, then
// <this binary>.runfiles, then the working directory as `bazel run`/`bazel test` set it);
// bazel-bin in the working directory. Empty when none exists.
std::string FindGuestElf();

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_VMM_GUEST_ELF_H_
