// StopSignal: how a migration's threads tell the fault loop to end, and why. The first Stop()
// wins: OK means every page is present, an error is the run's failure (a cancelled run is
// CancelledError). Separate from any status a component returns, so that a status is never
// also a control signal. fd() becomes readable on Stop() and on Poke() (run the periodic work
// now), for the fault loop's poll().
// Thread-safety: every method, from any thread.
#ifndef FAULTLINE_ENGINE_STOP_SIGNAL_H_
#define FAULTLINE_ENGINE_STOP_SIGNAL_H_

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

#include "absl/status/status.h"
#include "base/unique_fd.h"

namespace faultline {

class StopSignal {
 public:
  StopSignal() : fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

  bool valid() const { return fd_.valid(); }
  int fd() const { return fd_.get(); }

  void Stop(const absl::Status& why) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stopped_.load()) return;
      reason_ = why;
      stopped_.store(true, std::memory_order_release);
    }
    Poke();
  }
  bool stopped() const { return stopped_.load(std::memory_order_acquire); }
  absl::Status reason() const {
    std::lock_guard<std::mutex> l(mu_);
    return reason_;
  }
  void Poke() {
    uint64_t one = 1;
    (void)!write(fd_.get(), &one, sizeof(one));
  }
  // Consumes pokes (the fault loop, after poll()).
  void Drain() {
    uint64_t v;
    (void)!read(fd_.get(), &v, sizeof(v));
  }

 private:
  UniqueFd fd_;
  mutable std::mutex mu_;
  std::atomic<bool> stopped_{false};
  absl::Status reason_;  // guarded by mu_
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_STOP_SIGNAL_H_
