// UffdOps: the userfaultfd operations the engine uses, behind an interface so tests can swap
// the kernel for a scripted fake (engine/testing/fake_uffd.h) that answers EEXIST, EAGAIN and
// ENOENT and queues REMOVE events on demand. The real one is Userfaultfd (engine/uffd.h), the
// only code in faultline that issues UFFDIO_* ioctls.
//
// Placement calls report the kernel's races as status codes (the caller, engine/placer.h,
// turns them into typed outcomes):
//   AlreadyExists (EEXIST)  the page is already mapped: somebody placed it; it is present.
//   Unavailable   (EAGAIN)  the mm is changing (a UFFD_EVENT_REMOVE/UNMAP is queued and not
//                           yet read): read events, then retry.
//   NotFound      (ENOENT)  the range is no longer registered/mapped (after UNMAP).
// Multi-page calls stop at the first failing page and report how many bytes were done.
// Thread-safety: every call may be made from any thread (the kernel serialises what it must).
#ifndef FAULTLINE_ENGINE_UFFD_OPS_H_
#define FAULTLINE_ENGINE_UFFD_OPS_H_

#include <linux/userfaultfd.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace faultline {

class UffdOps {
 public:
  virtual ~UffdOps() = default;

  // The fd to poll() for events (POLLIN when Read() has something).
  virtual int fd() const = 0;
  virtual uint64_t features() const = 0;
  bool has(uint64_t feature) const { return (features() & feature) == feature; }

  // Registers [addr, addr+len) in MISSING and/or MINOR mode; *ioctls receives the ioctls the
  // kernel allows on the range.
  virtual absl::Status Register(void* addr, size_t len, bool missing, bool minor,
                                uint64_t* ioctls = nullptr) = 0;
  virtual absl::Status Unregister(void* addr, size_t len) = 0;

  // Placement. `done` (optional) receives the bytes placed before a failure. wake=false is
  // DONTWAKE: the caller wakes the range later (Wake()).
  virtual absl::Status Copy(void* dst, const void* src, size_t len, bool wake,
                            size_t* done = nullptr) = 0;
  virtual absl::Status ZeroPage(void* dst, size_t len, bool wake, size_t* done = nullptr) = 0;
  virtual absl::Status Continue(void* dst, size_t len, bool wake, size_t* done = nullptr) = 0;
  virtual absl::Status Wake(void* addr, size_t len) = 0;

  // Reads up to n pending messages; 0 when none is queued (never blocks).
  virtual absl::StatusOr<int> Read(struct uffd_msg* msgs, int n) = 0;
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_UFFD_OPS_H_
