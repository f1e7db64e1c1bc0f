// VmDirtyTracker: warm-up's dirty tracking for the reference VMM (transport/dirty_tracker.h),
// from KVM's dirty log. Create() turns on KVM_MEM_LOG_DIRTY_PAGES for the guest RAM's memslot
// (slot 0, GPA 0: vm.h) before the page server reads a page; each Collect() takes and clears
// the log (KVM_GET_DIRTY_LOG: KVM write-protects the pages again, and flushes what the vCPUs'
// PML buffers hold, so a write that completed before the call is in it).
//
// KVM logs only what vCPUs write. The VMM's own writes into guest RAM (the mailbox, a device
// model) must be reported with MarkDirty(). The final Collect() first runs `stop_guest` (which
// pauses the VM for good and may write guest RAM, reporting it with MarkDirty), then takes the
// log a last time.
//
// Throttle() pauses the whole VM for a share of its time (vm_throttle.h, QEMU's auto-converge
// rule); the final Collect() lifts it before `stop_guest` runs (which may need running vCPUs),
// and so does the destructor.
// Thread-safety: Collect()/Throttle()/Switched() from the page server (one at a time);
// MarkDirty() from any thread.
#ifndef FAULTLINE_QEMU_INTEGRATION_VMM_DIRTY_LOG_H_
#define FAULTLINE_QEMU_INTEGRATION_VMM_DIRTY_LOG_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "qemu-integration/vmm/vm.h"
#include "qemu-integration/vmm/vm_throttle.h"
#include "transport/dirty_tracker.h"

namespace faultline {

class VmDirtyTracker : public DirtyTracker {
 public:
  // `vm` must outlive the tracker; region 0 of the page server is the VM's RAM.
  static absl::StatusOr<std::unique_ptr<VmDirtyTracker>> Create(
      Vm* vm, std::function<absl::Status()> stop_guest, std::function<void()> switched);

  absl::Status Collect(bool final, std::vector<PageRange>* out) override;
  absl::Status Throttle(uint32_t percent) override;
  void Switched() override;
  void MarkDirty(uint64_t gpa, uint64_t len);

  uint64_t collections() const { return collections_; }
  const VmThrottle& throttle() const { return throttle_; }

 private:
  VmDirtyTracker(Vm* vm, std::function<absl::Status()> stop_guest, std::function<void()> switched)
      : vm_(vm),
        stop_guest_(std::move(stop_guest)),
        switched_(std::move(switched)),
        throttle_([vm] { return vm->Pause(); }, [vm] { return vm->Resume(); }) {}
  absl::Status SetLogging(bool on);

  Vm* vm_;
  std::function<absl::Status()> stop_guest_;
  std::function<void()> switched_;
  std::vector<uint64_t> bitmap_;  // Collect() only: KVM_GET_DIRTY_LOG's buffer
  bool stopped_ = false;          // Collect() only
  uint64_t collections_ = 0;      // Collect() only
  std::mutex mu_;
  std::vector<uint64_t> marked_;  // guarded by mu_: MarkDirty's pages, a bitset
  VmThrottle throttle_;           // last: ends (VM running) before the rest goes
};

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_VMM_DIRTY_LOG_H_
