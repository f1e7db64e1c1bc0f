#include "tests/testing/hugepages.h"

#include <fstream>

namespace faultline {
namespace {

constexpr char kNr[] = "/proc/sys/vm/nr_hugepages";
constexpr char kFree[] = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

int64_t ReadNum(const char* path) {
  std::ifstream f(path);
  int64_t v = -1;
  f >> v;
  return f ? v : -1;
}

bool WriteNum(const char* path, int64_t v) {
  std::ofstream f(path);
  f << v;
  f.close();
  return !f.fail();
}

}  // namespace

ScopedHugePages::ScopedHugePages(uint64_t n) {
  int64_t free_pages = ReadNum(kFree), total = ReadNum(kNr);
  if (free_pages < 0 || total < 0) {
    why_not_ = "this kernel has no 2 MiB hugetlb pages (no " + std::string(kFree) + ")";
    return;
  }
  if (static_cast<uint64_t>(free_pages) >= n) {
    ok_ = true;
    return;
  }
  const int64_t want = total + static_cast<int64_t>(n) - free_pages;
  if (!WriteNum(kNr, want)) {
    why_not_ = "cannot raise vm.nr_hugepages to " + std::to_string(want) +
               " (needs root) [setup]: tools/test.sh reserves them before the tests";
    return;
  }
  restore_ = total;
  if (ReadNum(kFree) < static_cast<int64_t>(n)) {
    why_not_ = "the kernel could not find " + std::to_string(n) +
               " free 2 MiB pages (memory fragmented?) [setup]: tools/test.sh reserves them before "
               "the tests";
    return;
  }
  ok_ = true;
}

ScopedHugePages::~ScopedHugePages() {
  if (restore_ >= 0) WriteNum(kNr, restore_);
}

}  // namespace faultline
