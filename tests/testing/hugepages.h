// ScopedHugePages: makes sure `n` free 2 MiB huge pages exist for a test, raising
// vm.nr_hugepages (root only) and putting the old value back afterwards.
#ifndef FAULTLINE_TESTS_TESTING_HUGEPAGES_H_
#define FAULTLINE_TESTS_TESTING_HUGEPAGES_H_

#include <cstdint>
#include <string>

namespace faultline {

class ScopedHugePages {
 public:
  explicit ScopedHugePages(uint64_t n);
  ~ScopedHugePages();
  bool ok() const { return ok_; }
  const std::string& why_not() const { return why_not_; }

 private:
  bool ok_ = false;
  std::string why_not_;
  int64_t restore_ = -1;
};

}  // namespace faultline

#endif  // FAULTLINE_TESTS_TESTING_HUGEPAGES_H_
