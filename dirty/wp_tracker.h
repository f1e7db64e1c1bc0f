// WpDirtyTracker: warm-up's dirty tracking (transport/dirty_tracker.h) for memory this process
// writes through its own mappings — the thread guests of `faultline local`, tests and benches
// — on any kernel of 6.7 or later, KVM or not. Each range is registered with a userfaultfd in
// write-protect mode with UFFD_FEATURE_WP_ASYNC (the kernel resolves write-protect faults by
// itself, marking the page written, no event to read) and WP_UNPOPULATED (never-touched pages
// are protected too); Collect() is one PAGEMAP_SCAN per range that returns the written pages
// and write-protects them again, atomically per page table (PM_SCAN_WP_MATCHING).
//
// Only writes through the registered mappings of this process are seen: not pwrite() into the
// file, nor another mapping of it, nor another process's writes.
// Thread-safety: Collect() from one thread at a time; writers on any thread, any time.
#ifndef FAULTLINE_DIRTY_WP_TRACKER_H_
#define FAULTLINE_DIRTY_WP_TRACKER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "transport/dirty_tracker.h"

namespace faultline {

class WpDirtyTracker : public DirtyTracker {
 public:
  struct Range {
    uint8_t* base = nullptr;  // page-aligned mapping in this process
    uint64_t size = 0;
    uint32_t page_size = 4096;  // the page server region's page size
  };
  // Range i is the page server's region i. `stop_writers` (final Collect) stops every writer
  // for good and returns only when none can write any more (join it; a flag alone leaves a
  // writer past its check free to write after the final scan); `switched` (optional) runs on
  // Switched(); `throttle` (optional) slows the writers down (Throttle(); without it,
  // Unimplemented).
  static absl::StatusOr<std::unique_ptr<WpDirtyTracker>> Create(
      std::vector<Range> ranges, std::function<void()> stop_writers,
      std::function<void()> switched = nullptr,
      std::function<void(uint32_t percent)> throttle = nullptr);
  ~WpDirtyTracker() override;

  absl::Status Collect(bool final, std::vector<PageRange>* out) override;
  void Switched() override {
    if (switched_) switched_();
  }
  absl::Status Throttle(uint32_t percent) override;

 private:
  WpDirtyTracker() = default;
  absl::Status Scan(uint32_t region, std::vector<PageRange>* out);

  std::vector<Range> ranges_;
  std::function<void()> stop_writers_, switched_;
  std::function<void(uint32_t)> throttle_;
  UniqueFd uffd_, pagemap_;
  bool stopped_ = false;
};

}  // namespace faultline

#endif  // FAULTLINE_DIRTY_WP_TRACKER_H_
