// VmThrottle: slows a VM's guest down the way QEMU's auto-converge does — for every `slice`
// its vCPUs run, they are paused for percent / (100 - percent) slices — so that warm-up's
// rounds can catch up with a guest that rewrites its memory faster than it moves
// (transport/dirty_tracker.h, Throttle(); VmDirtyTracker in dirty_log.h). It pauses the whole
// VM (Vm::Pause/Resume), not one vCPU at a time: the reference VMM's vCPUs run one guest.
//
// A thread of its own runs the pauses while a percent is set. Set(0) — and the destructor —
// end that thread and return only once the VM runs again: nothing else may pause or resume
// the VM while a percent is set.
//
// Thread-safety: every method from any thread.
#ifndef FAULTLINE_QEMU_INTEGRATION_VMM_VM_THROTTLE_H_
#define FAULTLINE_QEMU_INTEGRATION_VMM_VM_THROTTLE_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace faultline {

class VmThrottle {
 public:
  // `pause` and `resume` stop and restart every vCPU (Vm::Pause, Vm::Resume; a test swaps them).
  VmThrottle(std::function<absl::Status()> pause, std::function<absl::Status()> resume,
             absl::Duration slice = absl::Milliseconds(10));
  ~VmThrottle();
  VmThrottle(const VmThrottle&) = delete;
  VmThrottle& operator=(const VmThrottle&) = delete;

  // 0: run free (ends the pauses; the VM runs when this returns); 1..99: that share of the
  // guest's time is taken away. A failed pause or resume ends the throttling: this and every
  // later call return that error (the VM is left running if it can be resumed at all).
  absl::Status Set(uint32_t percent);

  uint32_t percent() const;
  uint64_t pauses() const;             // pauses so far
  absl::Duration paused_time() const;  // their total length

 private:
  void Loop();

  const std::function<absl::Status()> pause_;
  const std::function<absl::Status()> resume_;
  const absl::Duration slice_;
  std::mutex set_mu_;  // one Set() at a time (it may join the thread)
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint32_t percent_ = 0;   // guarded by mu_
  bool stop_ = false;      // guarded by mu_: tells the thread to end
  absl::Status error_;     // guarded by mu_: the first failed pause/resume
  uint64_t pauses_ = 0;    // guarded by mu_
  absl::Duration paused_;  // guarded by mu_
  std::thread thread_;     // set_mu_: started by Set(>0), joined by Set(0) and the destructor
};

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_VMM_VM_THROTTLE_H_
