// GuestRegion: one range of destination guest memory and how its pages are placed.
//
//   kind        registered        absent page placed by          page size
//   anonymous   MISSING           UFFDIO_COPY / ZEROPAGE         4 KiB
//   memfd       MISSING | MINOR   pwrite into the memfd (or write  4 KiB
//                                 via the alias) + CONTINUE
//   hugetlb     MISSING           whole-page UFFDIO_COPY         2 MiB
//   guest_memfd MISSING           UFFDIO_COPY / ZEROPAGE         4 KiB
//               needs userfaultfd support for guest_memfd (kernel/ series; detected by
//               UFFDIO_REGISTER, there is no feature bit); without it faultline says so. COPY, not
//               alias + CONTINUE: vCPUs read guest_memfd directly, and only COPY inserts a page
//               into it already filled.
#ifndef FAULTLINE_ENGINE_REGION_H_
#define FAULTLINE_ENGINE_REGION_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/memory_kind.h"
#include "base/unique_fd.h"

namespace faultline {

// A destination region's kind is a MemoryKind (base/memory_kind.h): the same vocabulary as
// the VMM's RAM and the hand-off's region table.
using RegionKind = MemoryKind;

inline const char* RegionKindName(RegionKind k) { return MemoryKindName(k); }
inline absl::StatusOr<RegionKind> ParseRegionKind(const std::string& s) {
  return ParseMemoryKind(s);
}

class GuestRegion {
 public:
  // Creates fresh destination memory of `kind` (no page present yet).
  static absl::StatusOr<std::unique_ptr<GuestRegion>> Create(const std::string& name,
                                                             RegionKind kind, uint64_t size);
  // Wraps memory a VMM owns: `base` is its mapping in this process (the one registered with
  // the uffd), `fd`/`offset` its backing file (memfd, hugetlbfs, guest_memfd), -1 for anonymous.
  // `base` need not be mapped in this process (a VMM's address: only uffd ioctls use it).
  // memfd/guest_memfd ranges registered MINOR too are placed through an alias mapping of the
  // fd made here; registered MISSING only (as stock QEMU does), they are placed by COPY.
  static absl::StatusOr<std::unique_ptr<GuestRegion>> Adopt(const std::string& name,
                                                            RegionKind kind, uint8_t* base,
                                                            uint64_t size, uint32_t page_size,
                                                            UniqueFd fd, uint64_t offset,
                                                            bool minor_registered = true);
  ~GuestRegion();

  const std::string& name() const { return name_; }
  RegionKind kind() const { return kind_; }
  uint8_t* base() const { return base_; }    // the registered mapping (what the guest sees)
  uint8_t* alias() const { return alias_; }  // a second, unregistered mapping, or null
  int fd() const { return fd_.get(); }
  uint64_t fd_offset() const { return fd_offset_; }  // of base() in fd()
  uint64_t size() const { return size_; }
  uint32_t page_size() const { return page_size_; }
  uint64_t pages() const { return size_ / page_size_; }
  uint8_t* page(uint64_t i) const { return base_ + i * page_size_; }
  // Whether pages are placed by writing the page cache (pwrite into fd(), or the alias
  // mapping), then UFFDIO_CONTINUE.
  bool places_via_alias() const { return alias_ != nullptr; }
  bool register_minor() const { return kind_ == RegionKind::kMemfd; }

 private:
  GuestRegion() = default;
  std::string name_;
  RegionKind kind_ = RegionKind::kAnonymous;
  uint8_t* base_ = nullptr;
  uint8_t* alias_ = nullptr;
  bool owns_base_ = false;
  UniqueFd fd_;
  uint64_t fd_offset_ = 0;
  UniqueFd vm_fd_;  // guest_memfd only: the VM that owns it
  uint64_t size_ = 0;
  uint32_t page_size_ = 4096;
};

// guest_memfd: creates a KVM VM and a guest_memfd of `size` (MMAP | INIT_SHARED).
absl::StatusOr<UniqueFd> CreateGuestMemfd(int vm_fd, uint64_t size);
absl::StatusOr<UniqueFd> CreateKvmVm();

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_REGION_H_
