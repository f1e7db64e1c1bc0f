// Surviving a network blip. When a channel to the source breaks, the guest's faulted threads
// simply keep waiting in the kernel (a userfaultfd fault has no timeout; never SIGBUS), the
// page-state map keeps what is present, and a helper thread reconnects with backoff. Then
// every request that was in flight is sent again: urgent-requested pages urgently,
// bulk-requested pages go back to absent for the background pull. A page that arrives twice
// is placed once (the state map's claim), so nothing is lost or placed twice.
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/engine.h"

namespace faultline {

bool Engine::Reconnectable(const absl::Status& s) const {
  if (opts_.reconnect_deadline <= absl::ZeroDuration() || cancelled_.load() ||
      complete_.load()) {
    return false;
  }
  // Network trouble heals; a peer that speaks garbage or refuses us does not.
  return s.code() == absl::StatusCode::kUnavailable ||
         s.code() == absl::StatusCode::kDeadlineExceeded;
}

void Engine::RequestReconnect(const absl::Status& why) {
  if (reconnecting_.exchange(true)) return;  // one reconnection at a time
  {
    std::lock_guard<std::mutex> l(fail_mu_);
    reconnect_reason_ = why;
  }
  need_reconnect_.store(true);
  Signal();
}

void Engine::StartReconnect() {
  JoinReconnect();
  reconnect_thread_ = std::thread([this] {
    absl::Status s = source_->Reconnect(absl::Now() + opts_.reconnect_deadline);
    if (s.ok()) {
      reconnected_.store(true);
      Signal();
      return;
    }
    absl::Status reason;
    {
      std::lock_guard<std::mutex> l(fail_mu_);
      reason = reconnect_reason_;
    }
    Fail(absl::Status(
        s.code(),
        absl::StrCat("lost the source (", reason.message(), ") and could not reconnect within ",
                     absl::FormatDuration(opts_.reconnect_deadline), ": ", s.message(),
                     ". The guest is left waiting on its faults, not crashed; ",
                     remaining_pages(), " pages are still owed")));
  });
}

void Engine::FinishReconnect() {
  counters_.reconnects.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> l(fail_mu_);
    secondary_failure_ = absl::OkStatus();
    secondary_at_ns_.store(0);
  }
  {
    // Bulk batches in flight died with the old connection: their pages are absent again.
    std::lock_guard<std::mutex> g(pull_mu_);
    bulk_outstanding_ = 0;
    for (auto& rc : regions_) {
      for (uint64_t p = 0; p < rc->state.pages(); ++p) {
        if (rc->state.Get(p) == PageState::kBulkRequested) {
          PageState prev;
          if (rc->state.Claim(p, &prev)) rc->state.Release(p);
        }
      }
    }
  }
  reconnecting_.store(false);
  // Urgent requests in flight: a fault waits on each. Ask again.
  for (uint32_t ri = 0; ri < regions_.size(); ++ri) {
    RegionCtx& rc = *regions_[ri];
    for (uint64_t p = 0; p < rc.state.pages(); ++p) {
      if (rc.state.Get(p) != PageState::kUrgentRequested) continue;
      counters_.resent_requests.fetch_add(1, std::memory_order_relaxed);
      if (absl::Status s = source_->RequestUrgent(ri, p); !s.ok()) {
        FailSecondary(absl::Status(s.code(), absl::StrCat("urgent request: ", s.message())));
        return;
      }
    }
  }
  PullMore();
}

void Engine::JoinReconnect() {
  if (reconnect_thread_.joinable()) reconnect_thread_.join();
}

}  // namespace faultline
