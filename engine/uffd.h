// Userfaultfd: a thin RAII wrapper over one userfaultfd. The only code in faultline that
// issues UFFDIO_* ioctls. Placement calls report the kernel's races as status codes so the
// caller can apply postcopy's rules:
//   AlreadyExists (EEXIST)  the page is already mapped: somebody placed it; it is present.
//   Unavailable   (EAGAIN)  the mm is changing (a UFFD_EVENT_REMOVE/UNMAP is queued and not
//                           yet read): read events, then retry.
//   NotFound      (ENOENT)  the range is no longer registered/mapped (after UNMAP).
// Multi-page calls stop at the first failing page and report how many bytes were done.
#ifndef FAULTLINE_ENGINE_UFFD_H_
#define FAULTLINE_ENGINE_UFFD_H_

#include <linux/userfaultfd.h>

// From the guest_memfd series in kernel/patches (not in any released kernel yet): shared
// guest_memfd mappings accept MISSING and MINOR registration.
#ifndef UFFD_FEATURE_GUEST_MEMFD
#define UFFD_FEATURE_GUEST_MEMFD (1 << 17)
#endif

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace faultline {

class Userfaultfd {
 public:
  // Features faultline asks for; what a kernel lacks is named in the result of Open().
  static constexpr uint64_t kWantedFeatures =
      UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |
      UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_MINOR_SHMEM |
      UFFD_FEATURE_MINOR_HUGETLBFS;

  struct OpenResult;
  // Opens a userfaultfd (/dev/userfaultfd, else the syscall), non-blocking, and negotiates the
  // API with the wanted features this kernel has. `missing` lists the wanted ones it lacks.
  static absl::StatusOr<Userfaultfd> Open(uint64_t wanted = kWantedFeatures,
                                          std::string* missing = nullptr);
  // Wraps a userfaultfd whose API was already negotiated by its owner (a VMM hand-off).
  static Userfaultfd Adopt(UniqueFd fd, uint64_t features);
  // The features this kernel offers (probed on a throwaway fd).
  static absl::StatusOr<uint64_t> ProbeFeatures();
  static std::string FeatureNames(uint64_t features);

  Userfaultfd(Userfaultfd&&) = default;
  Userfaultfd& operator=(Userfaultfd&&) = default;

  int fd() const { return fd_.get(); }
  uint64_t features() const { return features_; }
  bool has(uint64_t feature) const { return (features_ & feature) == feature; }

  // Registers [addr, addr+len) in MISSING and/or MINOR mode; *ioctls receives the ioctls the
  // kernel allows on the range.
  absl::Status Register(void* addr, size_t len, bool missing, bool minor,
                        uint64_t* ioctls = nullptr);
  absl::Status Unregister(void* addr, size_t len);

  // Placement. `done` (optional) receives the bytes placed before a failure.
  absl::Status Copy(void* dst, const void* src, size_t len, bool wake, size_t* done = nullptr);
  absl::Status ZeroPage(void* dst, size_t len, bool wake, size_t* done = nullptr);
  absl::Status Continue(void* dst, size_t len, bool wake, size_t* done = nullptr);
  absl::Status Wake(void* addr, size_t len);

  // Reads up to n pending messages; returns 0 when none is queued (the fd is non-blocking).
  absl::StatusOr<int> Read(struct uffd_msg* msgs, int n);

 private:
  Userfaultfd(UniqueFd fd, uint64_t features) : fd_(std::move(fd)), features_(features) {}
  UniqueFd fd_;
  uint64_t features_ = 0;
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_UFFD_H_
