#include "engine/warmup.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/fault_stats.h"

namespace faultline {

absl::Status WarmUp::CheckRegions(const RegionTable& table) {
  for (size_t i = 0; i < table.size(); ++i) {
    const GuestRegion& r = *table[i].region;
    if (r.fd() < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "warm-up needs guest RAM in a file (memfd, hugetlbfs or guest_memfd): region '", r.name(),
          "' is anonymous memory, and pages the source rewrites after sending them "
          "cannot be dropped from it outside the VMM"));
    }
  }
  return absl::OkStatus();
}

void WarmUp::Start(PageSource* source, std::function<void()> switching,
                   std::function<void()> switched) {
  source_ = source;
  on_switching_ = std::move(switching);
  on_switched_ = std::move(switched);
  thread_ = std::thread([this] { Loop(); });
}

void WarmUp::Join() {
  { std::lock_guard<std::mutex> l(mu_); }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void WarmUp::Dirty(DirtySet set) {
  if (switched()) {
    // A late answer to a final request asked twice (the guest has been stopped on the source
    // since the first, so it holds nothing the applied final set did not): pages here may
    // already be the guest's own writes, so nothing is dropped — only the source is told.
    if (set.final) (void)source_->ConfirmDirty(set.round);
    return;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    answers_.push_back(std::move(set));
  }
  cv_.notify_all();
}

std::vector<WarmUpRound> WarmUp::rounds() const {
  std::lock_guard<std::mutex> l(mu_);
  return rounds_;
}

bool WarmUp::WaitAllPresent(absl::Time until) {
  while (table_->remaining() != 0) {
    if (stop_->stopped() || absl::Now() >= until) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

void WarmUp::Loop() {
  const absl::Time deadline = absl::Now() + opts_.deadline;
  uint64_t prev = UINT64_MAX, last = UINT64_MAX;
  uint32_t throttle = 0;
  bool no_throttle = false;  // the source said it cannot slow its guest
  uint32_t raised = 0;       // rounds that raised the throttle: not counted against max_rounds
  for (uint32_t k = 0;; ++k) {
    WarmUpRound r;
    const uint64_t t0 = FaultStats::NowNs();
    const bool all = WaitAllPresent(deadline);
    if (stop_->stopped()) return;
    r.pulled_ns = FaultStats::NowNs() - t0;
    if (k == 0 && all && r.pulled_ns > 0) {
      // Every page pulled once: the rate the final stop-and-copy is estimated with.
      pull_bytes_per_ns_ = static_cast<double>(table_->total_bytes()) / r.pulled_ns;
    }
    const bool small = k > 0 && last <= opts_.converge_pages;
    // The guest writes about as fast as we pull: more rounds alone would not help.
    const bool stuck =
        k > 0 && static_cast<double>(last) > opts_.shrink * static_cast<double>(prev);
    bool final = !all || k >= opts_.max_rounds + raised || small;
    if (!final && stuck) {
      if (!no_throttle && throttle < opts_.throttle_max) {
        // Slow the guest down (more) and go on.
        throttle = std::min(opts_.throttle_max, throttle == 0 ? opts_.throttle_initial
                                                              : throttle + opts_.throttle_step);
        ++raised;
      } else {
        final = true;
      }
    }
    if (absl::Status s = Round(final, final ? 0 : throttle, &r); !s.ok()) {
      if (!stop_->stopped()) stop_->Stop(s);
      return;
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      rounds_.push_back(r);
    }
    if (r.no_throttle) {
      no_throttle = true;
      throttle = 0;
    }
    if (r.final) {
      switched_at_ns_.store(FaultStats::NowNs());
      switched_.store(true, std::memory_order_release);
      if (on_switched_) on_switched_();
      return;
    }
    prev = last;
    last = r.pages;
  }
}

absl::Status WarmUp::Round(bool final, uint32_t throttle, WarmUpRound* r) {
  const uint64_t t0 = FaultStats::NowNs();
  {
    std::lock_guard<std::mutex> l(mu_);
    answers_.clear();  // late answers to an earlier round: that round's pages come again
  }
  DirtySet set;
  bool have = false;
  while (!have) {
    if (absl::Status s = source_->RequestDirty(final, throttle); !s.ok()) {
      // The connection is gone; the engine reconnects (or fails). Ask again after a while.
      if (absl::IsUnimplemented(s) || absl::IsFailedPrecondition(s)) return s;
    }
    std::unique_lock<std::mutex> l(mu_);
    const absl::Time until = absl::Now() + opts_.answer_timeout;
    while (!stop_->stopped() && absl::Now() < until) {
      // A final request is answered by a final set (an earlier round's late answer is not
      // one); the source may also end warm-up on its own (it has switched already: a
      // restarted engine asking).
      while (!answers_.empty() && final && !answers_.front().final) answers_.pop_front();
      if (!answers_.empty()) break;
      cv_.wait_for(l, std::chrono::milliseconds(20));
    }
    if (stop_->stopped())
      return stop_->reason().ok() ? absl::CancelledError("stopped") : stop_->reason();
    if (!answers_.empty()) {
      // Each answer holds every page of the ones before it that is not confirmed: the newest
      // is enough.
      set = std::move(answers_.back());
      answers_.clear();
      have = true;
    }
  }
  const uint64_t t_answer = FaultStats::NowNs();
  absl::StatusOr<uint64_t> evicted = Apply(set);
  if (!evicted.ok()) return evicted.status();
  r->answer_ns = t_answer - t0;
  r->drop_ns = FaultStats::NowNs() - t_answer;
  if (set.final) {
    // Stop-and-copy: the source's guest is stopped until we confirm, so what is absent now
    // (the final set, and anything never pulled) is final too. Fetch it first if it is cheap.
    const double bytes =
        static_cast<double>(table_->remaining()) * static_cast<double>(table_->max_page_size());
    if (bytes > 0 && opts_.final_copy > absl::ZeroDuration() && pull_bytes_per_ns_ > 0 &&
        bytes / pull_bytes_per_ns_ <= absl::ToDoubleNanoseconds(opts_.final_copy)) {
      const uint64_t t = FaultStats::NowNs();
      pull_->Kick();
      r->final_copied = WaitAllPresent(absl::Now() + 4 * opts_.final_copy);
      r->final_copy_ns = FaultStats::NowNs() - t;
      if (stop_->stopped())
        return stop_->reason().ok() ? absl::CancelledError("stopped") : stop_->reason();
    }
  }
  if (set.final && on_switching_) on_switching_();
  if (absl::Status s = source_->ConfirmDirty(set.round); !s.ok() && final) {
    // The source must learn that the final set is applied before it lets the guest run here;
    // a confirmation lost with the connection is sent again by a restarted engine's round.
    return absl::Status(s.code(),
                        absl::StrCat("confirming the final warm-up round: ", s.message()));
  }
  pull_->Kick();
  r->round = set.round;
  r->final = set.final;
  r->no_throttle = set.no_throttle;
  r->throttle = set.no_throttle ? 0 : throttle;
  r->pages = set.pages();
  r->evicted = *evicted;
  r->apply_ns = FaultStats::NowNs() - t0;
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> WarmUp::Apply(const DirtySet& set) {
  // Bytes first, state second: a present page's bytes are punched out while its state still
  // says present, then it becomes absent. An engine that dies in between leaves a page marked
  // present with nothing behind it — but this round is then unconfirmed, so the source sends
  // it again, and the next engine (which always applies a round before the guest may run)
  // evicts it properly. The other order would leave kPlacing for a dead engine's successor,
  // which for COPY kinds cannot tell "being evicted, maybe still mapped with old bytes" from
  // "placed, maybe written by the guest since".
  uint64_t evicted = 0;
  for (const DirtyRange& range : set.ranges) {
    RegionTable::Entry& e = (*table_)[range.region];
    uint64_t run_first = 0, run_count = 0;
    auto flush = [&]() -> absl::Status {
      if (run_count == 0) return absl::OkStatus();
      absl::Status s = e.placer.Drop(run_first, run_count);
      if (s.ok()) {
        for (uint64_t p = run_first; p < run_first + run_count; ++p) evicted += e.state.Evict(p);
      }
      run_count = 0;
      return s;
    };
    for (uint64_t p = range.first; p < range.first + range.count; ++p) {
      while (true) {
        const PageState st = e.state.Get(p);
        if (st == PageState::kPresent) {
          if (run_count == 0) run_first = p;
          ++run_count;
          break;
        }
        if (absl::Status s = flush(); !s.ok()) return s;
        if (st == PageState::kAbsent || st == PageState::kDiscarded) break;
        // Requested or being placed: a copy that may predate this round is on its way. Let
        // it land, then evict it (if it was fresh, it is fetched once more: harmless).
        if (stop_->stopped()) return absl::CancelledError("stopped");
        absl::SleepFor(absl::Microseconds(50));
      }
    }
    if (absl::Status s = flush(); !s.ok()) return s;
  }
  return evicted;
}

}  // namespace faultline
