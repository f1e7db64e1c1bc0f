// Userfaultfd: the real UffdOps (engine/uffd_ops.h) — a thin RAII wrapper over one
// userfaultfd, and the only code in faultline that issues UFFDIO_* ioctls.
#ifndef FAULTLINE_ENGINE_UFFD_H_
#define FAULTLINE_ENGINE_UFFD_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "engine/uffd_ops.h"

namespace faultline {

class Userfaultfd final : public UffdOps {
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
  // Whether this kernel can register userfaultfd MISSING on a guest_memfd mapping and resolve
  // it with UFFDIO_COPY (upstream's vm_uffd_ops for guest_memfd, or the series in kernel/):
  // `addr` is a MAP_SHARED mapping of an INIT_SHARED guest_memfd. No feature bit announces
  // it; without it UFFDIO_REGISTER fails with EINVAL.
  static absl::Status ProbeGuestMemfd(void* addr, size_t len);
  static std::string FeatureNames(uint64_t features);

  Userfaultfd(Userfaultfd&&) = default;
  Userfaultfd& operator=(Userfaultfd&&) = default;

  int fd() const override { return fd_.get(); }
  uint64_t features() const override { return features_; }

  absl::Status Register(void* addr, size_t len, bool missing, bool minor,
                        uint64_t* ioctls = nullptr) override;
  absl::Status Unregister(void* addr, size_t len) override;

  absl::Status Copy(void* dst, const void* src, size_t len, bool wake,
                    size_t* done = nullptr) override;
  absl::Status ZeroPage(void* dst, size_t len, bool wake, size_t* done = nullptr) override;
  absl::Status Continue(void* dst, size_t len, bool wake, size_t* done = nullptr) override;
  absl::Status Wake(void* addr, size_t len) override;

  absl::StatusOr<int> Read(struct uffd_msg* msgs, int n) override;

 private:
  Userfaultfd(UniqueFd fd, uint64_t features) : fd_(std::move(fd)), features_(features) {}
  UniqueFd fd_;
  uint64_t features_ = 0;
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_UFFD_H_
