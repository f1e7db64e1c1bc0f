#include "qemu-integration/vmm/guest_elf.h"

#include <limits.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

namespace faultline {

std::string FindGuestElf() {
  constexpr char kRel[] = "faultline/qemu-integration/guest/faultline-guest";
  std::vector<std::string> candidates;
  if (const char* p = getenv("FAULTLINE_GUEST_ELF")) candidates.push_back(p);
  for (const char* env : {"TEST_SRCDIR", "RUNFILES_DIR"}) {
    if (const char* p = getenv(env)) candidates.push_back(std::string(p) + "/" + kRel);
  }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) candidates.push_back(std::string(exe, n) + ".runfiles/" + kRel);
  candidates.push_back("qemu-integration/guest/faultline-guest");
  candidates.push_back("bazel-bin/qemu-integration/guest/faultline-guest");
  for (const std::string& c : candidates) {
    if (access(c.c_str(), R_OK) == 0) return c;
  }
  return "";
}

}  // namespace faultline
