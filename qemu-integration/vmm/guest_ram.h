// GuestRam: the host mapping that backs guest-physical [0, size) of a VM.
//
//   kind         memory                                   fd
//   anonymous    MAP_PRIVATE | MAP_ANONYMOUS (no THP)      -1
//   memfd        MAP_SHARED of a memfd                     the memfd (map it again elsewhere)
//   guest_memfd  MAP_SHARED of KVM_CREATE_GUEST_MEMFD      the guest_memfd (belongs to one VM)
//                (MMAP | INIT_SHARED): the memslot uses
//                KVM_SET_USER_MEMORY_REGION2
//
// host_base() is a plain mapping the caller may register with a userfaultfd before any vCPU
// runs. A migration destination maps the source's memfd again (MapMemfd) or hands over a
// mapping it made itself (Adopt).
#ifndef FAULTLINE_QEMU_INTEGRATION_VMM_GUEST_RAM_H_
#define FAULTLINE_QEMU_INTEGRATION_VMM_GUEST_RAM_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/memory_kind.h"
#include "base/unique_fd.h"

namespace faultline {

// What backs guest RAM: a MemoryKind (base/memory_kind.h), the vocabulary the engine and the
// hand-off use too. This VMM backs RAM with anon, memfd or guest_memfd; not hugetlb.
using RamBacking = MemoryKind;

inline const char* RamBackingName(RamBacking b) { return MemoryKindName(b); }
// OK for the kinds this VMM can back guest RAM with; for hugetlb, an error that says so.
absl::Status CheckRamBacking(RamBacking b);
// "anon", "memfd", "guest_memfd" (and ParseMemoryKind's aliases); "hugetlb" is refused with
// CheckRamBacking's error.
absl::StatusOr<RamBacking> ParseRamBacking(const std::string& s);

class GuestRam {
 public:
  static absl::StatusOr<std::unique_ptr<GuestRam>> CreateAnonymous(uint64_t size);
  static absl::StatusOr<std::unique_ptr<GuestRam>> CreateMemfd(
      uint64_t size, const std::string& name = "faultline-guest-ram");
  // A guest_memfd of the VM `vm_fd` (flags MMAP | INIT_SHARED), mapped here.
  static absl::StatusOr<std::unique_ptr<GuestRam>> CreateGuestMemfd(int vm_fd, uint64_t size);
  // Maps an existing memfd again, MAP_SHARED (the fd is duplicated).
  static absl::StatusOr<std::unique_ptr<GuestRam>> MapMemfd(int memfd, uint64_t size);
  // Wraps a mapping the caller made and keeps owning (not unmapped here); `fd` may be empty.
  static std::unique_ptr<GuestRam> Adopt(RamBacking kind, uint8_t* host_base, uint64_t size,
                                         UniqueFd fd);
  ~GuestRam();
  GuestRam(const GuestRam&) = delete;
  GuestRam& operator=(const GuestRam&) = delete;

  RamBacking kind() const { return kind_; }
  uint8_t* host_base() const { return base_; }
  uint64_t size() const { return size_; }
  int fd() const { return fd_.get(); }

 private:
  GuestRam(RamBacking kind, uint8_t* base, uint64_t size, UniqueFd fd, bool owns)
      : kind_(kind), base_(base), size_(size), fd_(std::move(fd)), owns_mapping_(owns) {}

  RamBacking kind_;
  uint8_t* base_;
  uint64_t size_;
  UniqueFd fd_;
  bool owns_mapping_;
};

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_VMM_GUEST_RAM_H_
