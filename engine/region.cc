#include "engine/region.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <linux/memfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "base/kvm_device.h"

// Debian 12's linux/kvm.h predates guest_memfd: the 6.18 UAPI bits we need.
#ifndef KVM_CREATE_GUEST_MEMFD
struct kvm_create_guest_memfd {
  __u64 size;
  __u64 flags;
  __u64 reserved[6];
};
#define KVM_CREATE_GUEST_MEMFD _IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)
#endif
#ifndef GUEST_MEMFD_FLAG_MMAP
#define GUEST_MEMFD_FLAG_MMAP (1ULL << 0)
#define GUEST_MEMFD_FLAG_INIT_SHARED (1ULL << 1)
#endif

namespace faultline {

absl::StatusOr<UniqueFd> CreateKvmVm() {
  UniqueFd kvm(OpenKvmDevice());
  if (!kvm.valid()) return ErrnoStatus("open /dev/kvm (guest_memfd needs KVM)");
  int vm = ioctl(kvm.get(), KVM_CREATE_VM, 0);
  if (vm < 0) return ErrnoStatus("KVM_CREATE_VM");
  return UniqueFd(vm);
}

absl::StatusOr<UniqueFd> CreateGuestMemfd(int vm_fd, uint64_t size) {
  struct kvm_create_guest_memfd g = {};
  g.size = size;
  g.flags = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
  const int fd = ioctl(vm_fd, KVM_CREATE_GUEST_MEMFD, &g);
  if (fd >= 0) return UniqueFd(fd);
  const int err = errno;
  if (err == ENOTTY || err == EINVAL) {
    // ENOTTY: this KVM has no guest_memfd at all (KVM_CAP_GUEST_MEMFD is 0 — e.g. kvm_pvm);
    // EINVAL: it has one, but not mappable by the host (the MMAP flags came with 6.18).
    return absl::UnimplementedError(absl::StrCat(
        "this KVM cannot make a host-mappable guest_memfd (KVM_CREATE_GUEST_MEMFD with "
        "MMAP|INIT_SHARED: ",
        err == ENOTTY ? "no guest_memfd in this KVM" : "flags not supported, needs Linux 6.18+",
        ")"));
  }
  return ErrnoStatus("KVM_CREATE_GUEST_MEMFD (MMAP|INIT_SHARED)", err);
}

static absl::StatusOr<uint8_t*> MapShared(int fd, uint64_t size, uint64_t offset,
                                          const char* what) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) {
    if (errno == ENOMEM && std::string(what) == "hugetlb") {
      return absl::ResourceExhaustedError(absl::StrCat(
          "mmap hugetlb region of ", size >> 20,
          " MiB: not enough free 2 MiB huge pages; reserve them with "
          "`echo N > /proc/sys/vm/nr_hugepages` (N = pages needed, twice for a local run)"));
    }
    return ErrnoStatus(absl::StrCat("mmap ", what));
  }
  return static_cast<uint8_t*>(p);
}

absl::StatusOr<std::unique_ptr<GuestRegion>> GuestRegion::Create(const std::string& name,
                                                                 RegionKind kind, uint64_t size) {
  std::unique_ptr<GuestRegion> r(new GuestRegion());
  r->name_ = name;
  r->kind_ = kind;
  r->size_ = size;
  r->page_size_ = MemoryKindPageSize(kind);
  if (size == 0 || size % r->page_size_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "region '", name, "' size ", size, " is not a multiple of its page size ", r->page_size_));
  }
  switch (kind) {
    case RegionKind::kAnonymous: {
      void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) return ErrnoStatus("mmap anonymous region");
      // Post-copy places 4 KiB pages: THP would turn one fault into a 2 MiB zero fill.
      madvise(p, size, MADV_NOHUGEPAGE);
      r->base_ = static_cast<uint8_t*>(p);
      r->owns_base_ = true;
      return r;
    }
    case RegionKind::kMemfd:
    case RegionKind::kHugetlb: {
      unsigned flags = MFD_CLOEXEC;
      if (kind == RegionKind::kHugetlb) flags |= MFD_HUGETLB | MFD_HUGE_2MB;
      r->fd_.reset(memfd_create(name.c_str(), flags));
      if (!r->fd_.valid()) return ErrnoStatus("memfd_create");
      if (ftruncate(r->fd_.get(), static_cast<off_t>(size)) < 0) {
        return ErrnoStatus("ftruncate memfd");
      }
      const char* what = kind == RegionKind::kHugetlb ? "hugetlb" : "memfd";
      absl::StatusOr<uint8_t*> base = MapShared(r->fd_.get(), size, 0, what);
      if (!base.ok()) return base.status();
      r->base_ = *base;
      r->owns_base_ = true;
      if (kind == RegionKind::kMemfd) {
        absl::StatusOr<uint8_t*> alias = MapShared(r->fd_.get(), size, 0, "memfd alias");
        if (!alias.ok()) return alias.status();
        r->alias_ = *alias;
      }
      return r;
    }
    case RegionKind::kGuestMemfd: {
      absl::StatusOr<UniqueFd> vm = CreateKvmVm();
      if (!vm.ok()) return vm.status();
      absl::StatusOr<UniqueFd> g = CreateGuestMemfd(vm->get(), size);
      if (!g.ok()) return g.status();
      r->vm_fd_ = std::move(*vm);
      r->fd_ = std::move(*g);
      absl::StatusOr<uint8_t*> base = MapShared(r->fd_.get(), size, 0, "guest_memfd");
      if (!base.ok()) return base.status();
      r->base_ = *base;
      r->owns_base_ = true;
      // No alias: a vCPU reaches guest_memfd pages without going through any mapping, so a
      // page written through an alias would be visible to it half-filled. UFFDIO_COPY fills
      // the folio before it enters the guest_memfd (kernel/ series).
      return r;
    }
  }
  return absl::InvalidArgumentError("bad region kind");
}

absl::StatusOr<std::unique_ptr<GuestRegion>> GuestRegion::Adopt(const std::string& name,
                                                                RegionKind kind, uint8_t* base,
                                                                uint64_t size, uint32_t page_size,
                                                                UniqueFd fd, uint64_t offset,
                                                                bool minor_registered) {
  std::unique_ptr<GuestRegion> r(new GuestRegion());
  r->name_ = name;
  r->kind_ = kind;
  r->base_ = base;
  r->size_ = size;
  r->page_size_ = page_size;
  r->fd_ = std::move(fd);
  r->fd_offset_ = offset;
  if (page_size == 0 || size % page_size) {
    return absl::InvalidArgumentError(absl::StrCat("region '", name, "': bad size/page size"));
  }
  if (kind == RegionKind::kMemfd && minor_registered) {
    if (!r->fd_.valid()) {
      return absl::InvalidArgumentError(
          absl::StrCat("region '", name, "' of kind ", RegionKindName(kind), " needs its fd"));
    }
    absl::StatusOr<uint8_t*> alias = MapShared(r->fd_.get(), size, offset, "alias");
    if (!alias.ok()) return alias.status();
    r->alias_ = *alias;
  }
  return r;
}

GuestRegion::~GuestRegion() {
  if (alias_) munmap(alias_, size_);
  if (owns_base_ && base_) munmap(base_, size_);
}

}  // namespace faultline
