#include "qemu-integration/vmm/dirty_log.h"

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"

namespace faultline {

constexpr uint64_t kPage = 4096;

absl::StatusOr<std::unique_ptr<VmDirtyTracker>> VmDirtyTracker::Create(
    Vm* vm, std::function<absl::Status()> stop_guest, std::function<void()> switched) {
  if (vm->ram().kind() == RamBacking::kGuestMemfd) {
    return absl::UnimplementedError(
        "dirty logging of guest_memfd RAM: warm-up needs the source's RAM on memfd or anonymous "
        "memory");
  }
  std::unique_ptr<VmDirtyTracker> t(
      new VmDirtyTracker(vm, std::move(stop_guest), std::move(switched)));
  const uint64_t pages = vm->ram().size() / kPage;
  t->bitmap_.assign((pages + 63) / 64, 0);
  t->marked_.assign((pages + 63) / 64, 0);
  if (absl::Status s = t->SetLogging(true); !s.ok()) return s;
  return t;
}

absl::Status VmDirtyTracker::SetLogging(bool on) {
  // Slot 0 again with only its flags changed (KVM_MR_FLAGS_ONLY): KVM keeps the mappings and
  // write-protects every page, so the first write to each is logged.
  struct kvm_userspace_memory_region m = {};
  m.slot = 0;
  m.flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0;
  m.guest_phys_addr = 0;
  m.memory_size = vm_->ram().size();
  m.userspace_addr = reinterpret_cast<uint64_t>(vm_->ram().host_base());
  if (ioctl(vm_->kvm().vm_fd(), KVM_SET_USER_MEMORY_REGION, &m) < 0) {
    return ErrnoStatus(
        absl::StrCat("KVM_SET_USER_MEMORY_REGION (dirty logging ", on ? "on" : "off", ")"));
  }
  return absl::OkStatus();
}

void VmDirtyTracker::MarkDirty(uint64_t gpa, uint64_t len) {
  std::lock_guard<std::mutex> l(mu_);
  const uint64_t end = std::min<uint64_t>(gpa + len, vm_->ram().size());
  for (uint64_t p = gpa / kPage; p * kPage < end; ++p) {
    marked_[p / 64] |= uint64_t{1} << (p % 64);
  }
}

absl::Status VmDirtyTracker::Collect(bool final, std::vector<PageRange>* out) {
  if (final && !stopped_) {
    // A throttle pause must not hold the vCPUs that `stop_guest` waits for.
    if (absl::Status s = throttle_.Set(0); !s.ok()) return s;
    if (absl::Status s = stop_guest_(); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("stopping the guest: ", s.message()));
    }
    stopped_ = true;
  }
  ++collections_;
  std::fill(bitmap_.begin(), bitmap_.end(), 0);
  struct kvm_dirty_log log = {};
  log.slot = 0;
  log.dirty_bitmap = bitmap_.data();
  if (ioctl(vm_->kvm().vm_fd(), KVM_GET_DIRTY_LOG, &log) < 0) {
    return ErrnoStatus("KVM_GET_DIRTY_LOG");
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    for (size_t i = 0; i < bitmap_.size(); ++i) {
      bitmap_[i] |= marked_[i];
      marked_[i] = 0;
    }
  }
  const uint64_t pages = vm_->ram().size() / kPage;
  uint64_t p = 0;
  while (p < pages) {
    const uint64_t word = bitmap_[p / 64] >> (p % 64);
    if (word == 0) {
      p = (p / 64 + 1) * 64;
      continue;
    }
    p += static_cast<uint64_t>(__builtin_ctzll(word));
    const uint64_t first = p;
    while (p < pages && (bitmap_[p / 64] >> (p % 64)) & 1) ++p;
    out->push_back({0, static_cast<uint32_t>(p - first), first});
  }
  return absl::OkStatus();
}

absl::Status VmDirtyTracker::Throttle(uint32_t percent) {
  if (stopped_) return absl::FailedPreconditionError("the guest is stopped for good");
  return throttle_.Set(percent);
}

void VmDirtyTracker::Switched() {
  if (switched_) switched_();  // first: the destination is waiting to resume the guest
  (void)SetLogging(false);
}

}  // namespace faultline
