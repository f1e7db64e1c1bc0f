#include "engine/uffd.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/errno_status.h"

namespace faultline {
namespace {

absl::StatusOr<UniqueFd> OpenRaw() {
  UniqueFd dev(open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
  if (dev.valid()) {
    int fd = ioctl(dev.get(), USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) return UniqueFd(fd);
  }
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0) {
    int err = errno;
    if (err == EPERM) {
      return absl::PermissionDeniedError(
          "userfaultfd: permission denied. Run as root, give the user access to "
          "/dev/userfaultfd, or set vm.unprivileged_userfaultfd=1");
    }
    if (err == ENOSYS) {
      return absl::UnimplementedError(
          "userfaultfd: this kernel is built without "
          "CONFIG_USERFAULTFD");
    }
    return ErrnoStatus("userfaultfd", err);
  }
  return UniqueFd(fd);
}

// Maps a placement ioctl failure to the status codes documented in uffd.h.
absl::Status PlacementError(const char* op, int err, void* dst) {
  std::string where = absl::StrCat(op, " at ", absl::Hex(reinterpret_cast<uintptr_t>(dst)));
  switch (err) {
    case EEXIST: return absl::AlreadyExistsError(absl::StrCat(where, ": page already mapped"));
    case EAGAIN:
      return absl::UnavailableError(absl::StrCat(where, ": mm changing (event pending), retry"));
    case ENOENT: return absl::NotFoundError(absl::StrCat(where, ": range no longer registered"));
    default: return ErrnoStatus(where, err);
  }
}

}  // namespace

std::string Userfaultfd::FeatureNames(uint64_t f) {
  static const struct {
    uint64_t bit;
    const char* name;
  } kNames[] = {
      {UFFD_FEATURE_THREAD_ID, "THREAD_ID"},
      {UFFD_FEATURE_EVENT_REMOVE, "EVENT_REMOVE"},
      {UFFD_FEATURE_EVENT_UNMAP, "EVENT_UNMAP"},
      {UFFD_FEATURE_MISSING_SHMEM, "MISSING_SHMEM"},
      {UFFD_FEATURE_MISSING_HUGETLBFS, "MISSING_HUGETLBFS"},
      {UFFD_FEATURE_MINOR_SHMEM, "MINOR_SHMEM"},
      {UFFD_FEATURE_MINOR_HUGETLBFS, "MINOR_HUGETLBFS"},
      {UFFD_FEATURE_EVENT_FORK, "EVENT_FORK"},
      {UFFD_FEATURE_EVENT_REMAP, "EVENT_REMAP"},
      {UFFD_FEATURE_SIGBUS, "SIGBUS"},
  };
  std::vector<std::string> names;
  for (const auto& n : kNames) {
    if (f & n.bit) names.push_back(n.name);
  }
  return names.empty() ? "none" : absl::StrJoin(names, ",");
}

absl::StatusOr<uint64_t> Userfaultfd::ProbeFeatures() {
  absl::StatusOr<UniqueFd> fd = OpenRaw();
  if (!fd.ok()) return fd.status();
  struct uffdio_api api = {};
  api.api = UFFD_API;
  if (ioctl(fd->get(), UFFDIO_API, &api) < 0) return ErrnoStatus("UFFDIO_API (probe)");
  return api.features;
}

absl::Status Userfaultfd::ProbeGuestMemfd(void* addr, size_t len) {
  absl::StatusOr<Userfaultfd> uffd = Open(0);
  if (!uffd.ok()) return uffd.status();
  uint64_t ioctls = 0;
  if (absl::Status s = uffd->Register(addr, len, true, false, &ioctls); !s.ok()) return s;
  (void)uffd->Unregister(addr, len);
  if (!(ioctls & (uint64_t{1} << _UFFDIO_COPY))) {
    return absl::UnimplementedError("UFFDIO_COPY is not offered on guest_memfd");
  }
  return absl::OkStatus();
}

absl::StatusOr<Userfaultfd> Userfaultfd::Open(uint64_t wanted, std::string* missing) {
  absl::StatusOr<uint64_t> have = ProbeFeatures();
  if (!have.ok()) return have.status();
  if (missing) *missing = (wanted & ~*have) ? FeatureNames(wanted & ~*have) : "";
  absl::StatusOr<UniqueFd> fd = OpenRaw();
  if (!fd.ok()) return fd.status();
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = wanted & *have;
  if (ioctl(fd->get(), UFFDIO_API, &api) < 0) return ErrnoStatus("UFFDIO_API");
  return Userfaultfd(std::move(*fd), api.features);
}

Userfaultfd Userfaultfd::Adopt(UniqueFd fd, uint64_t features) {
  int fl = fcntl(fd.get(), F_GETFL);
  if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(fd.get(), F_SETFL, fl | O_NONBLOCK);
  return Userfaultfd(std::move(fd), features);
}

absl::Status Userfaultfd::Register(void* addr, size_t len, bool missing, bool minor,
                                   uint64_t* ioctls) {
  struct uffdio_register reg = {};
  reg.range.start = reinterpret_cast<uintptr_t>(addr);
  reg.range.len = len;
  reg.mode =
      (missing ? UFFDIO_REGISTER_MODE_MISSING : 0) | (minor ? UFFDIO_REGISTER_MODE_MINOR : 0);
  if (ioctl(fd_.get(), UFFDIO_REGISTER, &reg) < 0) {
    return ErrnoStatus(absl::StrCat("UFFDIO_REGISTER (", missing ? "MISSING" : "",
                                    missing && minor ? "|" : "", minor ? "MINOR" : "", ")"));
  }
  if (ioctls) *ioctls = reg.ioctls;
  return absl::OkStatus();
}

absl::Status Userfaultfd::Unregister(void* addr, size_t len) {
  struct uffdio_range r = {reinterpret_cast<uintptr_t>(addr), len};
  if (ioctl(fd_.get(), UFFDIO_UNREGISTER, &r) < 0) return ErrnoStatus("UFFDIO_UNREGISTER");
  return absl::OkStatus();
}

absl::Status Userfaultfd::Copy(void* dst, const void* src, size_t len, bool wake, size_t* done) {
  struct uffdio_copy c = {};
  c.dst = reinterpret_cast<uintptr_t>(dst);
  c.src = reinterpret_cast<uintptr_t>(src);
  c.len = len;
  c.mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE;
  int rc = ioctl(fd_.get(), UFFDIO_COPY, &c);
  int err = errno;
  if (done) *done = c.copy > 0 ? static_cast<size_t>(c.copy) : 0;
  if (rc < 0) return PlacementError("UFFDIO_COPY", err, dst);
  return absl::OkStatus();
}

absl::Status Userfaultfd::ZeroPage(void* dst, size_t len, bool wake, size_t* done) {
  struct uffdio_zeropage z = {};
  z.range.start = reinterpret_cast<uintptr_t>(dst);
  z.range.len = len;
  z.mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE;
  int rc = ioctl(fd_.get(), UFFDIO_ZEROPAGE, &z);
  int err = errno;
  if (done) *done = z.zeropage > 0 ? static_cast<size_t>(z.zeropage) : 0;
  if (rc < 0) return PlacementError("UFFDIO_ZEROPAGE", err, dst);
  return absl::OkStatus();
}

absl::Status Userfaultfd::Continue(void* dst, size_t len, bool wake, size_t* done) {
  struct uffdio_continue c = {};
  c.range.start = reinterpret_cast<uintptr_t>(dst);
  c.range.len = len;
  c.mode = wake ? 0 : UFFDIO_CONTINUE_MODE_DONTWAKE;
  int rc = ioctl(fd_.get(), UFFDIO_CONTINUE, &c);
  int err = errno;
  if (done) *done = c.mapped > 0 ? static_cast<size_t>(c.mapped) : 0;
  if (rc < 0) return PlacementError("UFFDIO_CONTINUE", err, dst);
  return absl::OkStatus();
}

absl::Status Userfaultfd::Wake(void* addr, size_t len) {
  struct uffdio_range r = {reinterpret_cast<uintptr_t>(addr), len};
  if (ioctl(fd_.get(), UFFDIO_WAKE, &r) < 0) return ErrnoStatus("UFFDIO_WAKE");
  return absl::OkStatus();
}

absl::StatusOr<int> Userfaultfd::Read(struct uffd_msg* msgs, int n) {
  ssize_t r = read(fd_.get(), msgs, sizeof(*msgs) * n);
  if (r < 0) {
    if (errno == EAGAIN || errno == EINTR) return 0;
    return ErrnoStatus("read(userfaultfd)");
  }
  return static_cast<int>(r / sizeof(*msgs));
}

}  // namespace faultline
