#include "qemu-integration/vmm/guest_ram.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "engine/region.h"

namespace faultline {
namespace {

absl::Status CheckSize(uint64_t size) {
  if (size == 0 || size % 4096 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("guest RAM size ", size, " is not a positive multiple of 4 KiB"));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint8_t*> MapShared(int fd, uint64_t size, const char* what) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return ErrnoStatus(absl::StrCat("mmap ", what));
  return static_cast<uint8_t*>(p);
}

}  // namespace

absl::Status CheckRamBacking(RamBacking b) {
  if (b == MemoryKind::kHugetlb) {
    return absl::InvalidArgumentError(
        "the reference VMM cannot back guest RAM with hugetlb (it maps anon, memfd or "
        "guest_memfd RAM in 4 KiB pages); use memfd");
  }
  return absl::OkStatus();
}

absl::StatusOr<RamBacking> ParseRamBacking(const std::string& s) {
  absl::StatusOr<MemoryKind> k = ParseMemoryKind(s);
  if (!k.ok()) return k.status();
  if (absl::Status c = CheckRamBacking(*k); !c.ok()) return c;
  return *k;
}

absl::StatusOr<std::unique_ptr<GuestRam>> GuestRam::CreateAnonymous(uint64_t size) {
  if (absl::Status s = CheckSize(size); !s.ok()) return s;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap anonymous guest RAM");
  // Post-copy places 4 KiB pages: THP would turn one fault into a 2 MiB zero fill.
  madvise(p, size, MADV_NOHUGEPAGE);
  return std::unique_ptr<GuestRam>(
      new GuestRam(RamBacking::kAnonymous, static_cast<uint8_t*>(p), size, UniqueFd(), true));
}

absl::StatusOr<std::unique_ptr<GuestRam>> GuestRam::CreateMemfd(uint64_t size,
                                                                const std::string& name) {
  if (absl::Status s = CheckSize(size); !s.ok()) return s;
  UniqueFd fd(memfd_create(name.c_str(), MFD_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("memfd_create guest RAM");
  if (ftruncate(fd.get(), static_cast<off_t>(size)) < 0) return ErrnoStatus("ftruncate memfd");
  absl::StatusOr<uint8_t*> p = MapShared(fd.get(), size, "memfd guest RAM");
  if (!p.ok()) return p.status();
  return std::unique_ptr<GuestRam>(new GuestRam(RamBacking::kMemfd, *p, size, std::move(fd), true));
}

absl::StatusOr<std::unique_ptr<GuestRam>> GuestRam::CreateGuestMemfd(int vm_fd, uint64_t size) {
  if (absl::Status s = CheckSize(size); !s.ok()) return s;
  absl::StatusOr<UniqueFd> fd = faultline::CreateGuestMemfd(vm_fd, size);
  if (!fd.ok()) return fd.status();
  absl::StatusOr<uint8_t*> p = MapShared(fd->get(), size, "guest_memfd guest RAM");
  if (!p.ok()) return p.status();
  return std::unique_ptr<GuestRam>(
      new GuestRam(RamBacking::kGuestMemfd, *p, size, std::move(*fd), true));
}

absl::StatusOr<std::unique_ptr<GuestRam>> GuestRam::MapMemfd(int memfd, uint64_t size) {
  if (absl::Status s = CheckSize(size); !s.ok()) return s;
  UniqueFd fd(fcntl(memfd, F_DUPFD_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus("dup memfd");
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return ErrnoStatus("fstat memfd");
  if (static_cast<uint64_t>(st.st_size) < size) {
    return absl::InvalidArgumentError(
        absl::StrCat("memfd holds ", st.st_size, " bytes, less than the ", size, " asked for"));
  }
  absl::StatusOr<uint8_t*> p = MapShared(fd.get(), size, "memfd guest RAM (again)");
  if (!p.ok()) return p.status();
  return std::unique_ptr<GuestRam>(new GuestRam(RamBacking::kMemfd, *p, size, std::move(fd), true));
}

std::unique_ptr<GuestRam> GuestRam::Adopt(RamBacking kind, uint8_t* host_base, uint64_t size,
                                          UniqueFd fd) {
  return std::unique_ptr<GuestRam>(new GuestRam(kind, host_base, size, std::move(fd), false));
}

GuestRam::~GuestRam() {
  if (owns_mapping_ && base_ != nullptr) munmap(base_, size_);
}

}  // namespace faultline
