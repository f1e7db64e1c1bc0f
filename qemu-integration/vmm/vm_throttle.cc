#include "qemu-integration/vmm/vm_throttle.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "base/writer_throttle.h"

namespace faultline {

VmThrottle::VmThrottle(std::function<absl::Status()> pause, std::function<absl::Status()> resume,
                       absl::Duration slice)
    : pause_(std::move(pause)), resume_(std::move(resume)), slice_(slice) {}

VmThrottle::~VmThrottle() { (void)Set(0); }

absl::Status VmThrottle::Set(uint32_t percent) {
  std::lock_guard<std::mutex> s(set_mu_);
  std::unique_lock<std::mutex> l(mu_);
  percent_ = error_.ok() ? ClampThrottle(percent) : 0;
  if (percent_ == 0) {
    // The thread resumes the VM before it ends (it pauses and resumes in pairs).
    if (thread_.joinable()) {
      stop_ = true;
      cv_.notify_all();
      l.unlock();
      thread_.join();
      l.lock();
      stop_ = false;
    }
    return error_;
  }
  cv_.notify_all();  // a new percent applies from the next pause (a lower one ends this one)
  if (!thread_.joinable()) thread_ = std::thread(&VmThrottle::Loop, this);
  return absl::OkStatus();
}

void VmThrottle::Loop() {
  std::unique_lock<std::mutex> l(mu_);
  while (!stop_) {
    // One slice running.
    cv_.wait_for(l, absl::ToChronoNanoseconds(slice_), [&] { return stop_; });
    if (stop_) break;
    const uint32_t p = percent_;
    l.unlock();
    absl::Status s = pause_();
    const absl::Time paused_at = absl::Now();
    l.lock();
    if (!s.ok()) {
      error_ = absl::Status(s.code(), absl::StrCat("throttling the guest: pause: ", s.message()));
      percent_ = 0;
      break;
    }
    ++pauses_;
    // percent / (100 - percent) slices paused; Set(0) or a lower percent ends the pause now.
    const absl::Duration pause =
        absl::Nanoseconds(ThrottleSleepNs(absl::ToInt64Nanoseconds(slice_), p));
    cv_.wait_for(l, absl::ToChronoNanoseconds(pause), [&] { return stop_ || percent_ < p; });
    l.unlock();
    s = resume_();
    l.lock();
    paused_ += absl::Now() - paused_at;
    if (!s.ok()) {
      error_ = absl::Status(s.code(), absl::StrCat("throttling the guest: resume: ", s.message()));
      percent_ = 0;
      break;
    }
  }
}

uint32_t VmThrottle::percent() const {
  std::lock_guard<std::mutex> l(mu_);
  return percent_;
}

uint64_t VmThrottle::pauses() const {
  std::lock_guard<std::mutex> l(mu_);
  return pauses_;
}

absl::Duration VmThrottle::paused_time() const {
  std::lock_guard<std::mutex> l(mu_);
  return paused_;
}

}  // namespace faultline
