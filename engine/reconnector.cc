#include "engine/reconnector.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace faultline {

bool Reconnector::Request(const SourceError& why) {
  if (deadline_ <= absl::ZeroDuration() || source_ == nullptr) return false;
  std::lock_guard<std::mutex> l(mu_);
  if (busy_) {
    pending_ = true;  // a connection failed while reconnecting: once more afterwards
    return true;
  }
  busy_ = true;
  if (thread_.joinable()) thread_.join();  // the previous reconnection has finished
  // The thread gets its own Status, not a reference-counted copy of the caller's: the caller
  // may drop its copy on another thread while this one runs.
  thread_ = std::thread([this, code = why.status.code(), msg = std::string(why.status.message())] {
    Loop(absl::Status(code, msg));
  });
  return true;
}

void Reconnector::Join() {
  std::thread t;
  {
    std::lock_guard<std::mutex> l(mu_);
    t.swap(thread_);
  }
  if (t.joinable()) t.join();
}

void Reconnector::Loop(absl::Status why) {
  while (Reconnect(why)) {
    std::lock_guard<std::mutex> l(mu_);
    if (!pending_) break;
    pending_ = false;
  }
  std::lock_guard<std::mutex> l(mu_);
  busy_ = false;
}

bool Reconnector::Reconnect(const absl::Status& why) {
  pull_->Pause();
  {
    // Failures reported so far were of the connections this reconnection replaces.
    std::lock_guard<std::mutex> l(mu_);
    pending_ = false;
  }
  // Joins the receive threads (their Failed() calls land in Request()), then connects again
  // with backoff.
  absl::Status s = source_->Reconnect(absl::Now() + deadline_);
  if (!s.ok()) {
    fail_(absl::Status(
        s.code(),
        absl::StrCat("lost the source (", why.message(), ") and could not reconnect within ",
                     absl::FormatDuration(deadline_), ": ", s.message(),
                     ". The guest is left waiting on its faults, not crashed; ",
                     table_->remaining(), " pages are still owed")));
    return false;
  }
  counters_->reconnects.fetch_add(1, std::memory_order_relaxed);
  Reissue();
  return true;
}

void Reconnector::Reissue() {
  // Bulk batches in flight died with the old connection: their pages are absent again.
  for (size_t ri = 0; ri < table_->size(); ++ri) {
    PageStateMap& st = (*table_)[ri].state;
    for (uint64_t p = 0; p < st.pages(); ++p) {
      if (st.Get(p) == PageState::kBulkRequested) st.Unrequest(p);
    }
  }
  pull_->Resume();
  // Urgent requests in flight: a fault waits on each. Ask again.
  for (size_t ri = 0; ri < table_->size(); ++ri) {
    PageStateMap& st = (*table_)[ri].state;
    for (uint64_t p = 0; p < st.pages(); ++p) {
      if (st.Get(p) != PageState::kUrgentRequested) continue;
      counters_->resent_requests.fetch_add(1, std::memory_order_relaxed);
      // A failure here means the new connection broke too: its receive thread reports it and
      // the next reconnection asks again.
      (void)source_->RequestUrgent(static_cast<uint32_t>(ri), p);
    }
  }
}

}  // namespace faultline
