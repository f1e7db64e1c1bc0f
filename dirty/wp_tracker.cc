#include "dirty/wp_tracker.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"

// Debian 12's UAPI headers are 6.1-era; PAGEMAP_SCAN and WP_ASYNC came in 6.7.
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef PAGEMAP_SCAN
#define PAGE_IS_WRITTEN (1 << 1)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
struct page_region {
  __u64 start, end, categories;
};
struct pm_scan_arg {
  __u64 size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted,
      category_mask, category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

namespace faultline {

absl::StatusOr<std::unique_ptr<WpDirtyTracker>> WpDirtyTracker::Create(
    std::vector<Range> ranges, std::function<void()> stop_writers, std::function<void()> switched,
    std::function<void(uint32_t)> throttle) {
  std::unique_ptr<WpDirtyTracker> t(new WpDirtyTracker());
  t->ranges_ = std::move(ranges);
  t->stop_writers_ = std::move(stop_writers);
  t->switched_ = std::move(switched);
  t->throttle_ = std::move(throttle);
  // User-mode-only is enough (and needs no privilege): WP_ASYNC resolves write faults inside
  // the kernel's fault path, for user and kernel accesses alike, and never raises an event.
  t->uffd_.reset(
      static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)));
  if (!t->uffd_.valid()) {
    UniqueFd dev(open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
    if (dev.valid()) t->uffd_.reset(ioctl(dev.get(), USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK));
  }
  if (!t->uffd_.valid()) return ErrnoStatus("userfaultfd (write tracking)");
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features =
      UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
  if (ioctl(t->uffd_.get(), UFFDIO_API, &api) != 0) {
    return absl::UnimplementedError(
        absl::StrCat("this kernel cannot track writes for warm-up: UFFDIO_API with WP_ASYNC, "
                     "WP_UNPOPULATED and WP_HUGETLBFS_SHMEM failed (",
                     strerror(errno), "); Linux 6.7 or later has them"));
  }
  t->pagemap_.reset(open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  if (!t->pagemap_.valid()) return ErrnoStatus("open /proc/self/pagemap");
  for (const Range& r : t->ranges_) {
    struct uffdio_register reg = {};
    reg.range.start = reinterpret_cast<uint64_t>(r.base);
    reg.range.len = r.size;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (ioctl(t->uffd_.get(), UFFDIO_REGISTER, &reg) != 0) {
      return ErrnoStatus("UFFDIO_REGISTER write-protect (write tracking)");
    }
  }
  // Tracking starts now: protect everything and forget what was written before.
  std::vector<PageRange> ignored;
  for (uint32_t i = 0; i < t->ranges_.size(); ++i) {
    if (absl::Status s = t->Scan(i, &ignored); !s.ok()) return s;
  }
  return t;
}

WpDirtyTracker::~WpDirtyTracker() = default;  // closing the uffd unregisters everything

absl::Status WpDirtyTracker::Scan(uint32_t region, std::vector<PageRange>* out) {
  const Range& r = ranges_[region];
  const uint64_t base = reinterpret_cast<uint64_t>(r.base);
  std::vector<struct page_region> vec(1024);
  uint64_t start = base;
  while (start < base + r.size) {
    struct pm_scan_arg a = {};
    a.size = sizeof(a);
    a.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
    a.start = start;
    a.end = base + r.size;
    a.vec = reinterpret_cast<uint64_t>(vec.data());
    a.vec_len = vec.size();
    a.category_mask = PAGE_IS_WRITTEN;
    a.return_mask = PAGE_IS_WRITTEN;
    const long n = ioctl(pagemap_.get(), PAGEMAP_SCAN, &a);
    if (n < 0) return ErrnoStatus("PAGEMAP_SCAN (write tracking)");
    for (long i = 0; i < n; ++i) {
      const uint64_t first = (vec[i].start - base) / r.page_size;
      const uint64_t end = (vec[i].end - base + r.page_size - 1) / r.page_size;
      if (!out->empty() && out->back().region == region &&
          out->back().first + out->back().count == first) {
        out->back().count += static_cast<uint32_t>(end - first);
      } else {
        out->push_back({region, static_cast<uint32_t>(end - first), first});
      }
    }
    // The vector filled up before the range's end: go on from where the walk stopped.
    if (a.walk_end <= start) return absl::InternalError("PAGEMAP_SCAN made no progress");
    start = a.walk_end;
  }
  return absl::OkStatus();
}

absl::Status WpDirtyTracker::Collect(bool final, std::vector<PageRange>* out) {
  if (final && !stopped_) {
    if (stop_writers_) stop_writers_();
    stopped_ = true;
  }
  for (uint32_t i = 0; i < ranges_.size(); ++i) {
    if (absl::Status s = Scan(i, out); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status WpDirtyTracker::Throttle(uint32_t percent) {
  if (!throttle_) return DirtyTracker::Throttle(percent);
  throttle_(percent);
  return absl::OkStatus();
}

}  // namespace faultline
