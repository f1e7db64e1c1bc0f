#include "engine/fault_stats.h"

#include "base/clock.h"

namespace faultline {

uint64_t FaultStats::NowNs() { return MonotonicNowNs(); }

const char* FaultKindName(FaultKind k) {
  switch (k) {
    case FaultKind::kFetched: return "fetched";
    case FaultKind::kFetchedOverBulk: return "fetched_over_bulk";
    case FaultKind::kJoinedUrgent: return "joined_urgent";
    case FaultKind::kJoinedPlacing: return "joined_placing";
    case FaultKind::kImmediate: return "immediate";
    case FaultKind::kRaced: return "raced";
  }
  return "?";
}

void FaultStats::FaultPending(uint64_t key, uint32_t tid, uint64_t t_ns) {
  std::lock_guard<std::mutex> l(mu_);
  pending_[key].push_back({t_ns, tid, FaultKind::kRaced});
  pending_count_.fetch_add(1, std::memory_order_acq_rel);
}

void FaultStats::Classify(uint64_t key, uint32_t tid, FaultKind kind) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = pending_.find(key);
  if (it == pending_.end()) return;  // resolved meanwhile: stays kRaced
  for (Pending& p : it->second) {
    if (p.tid == tid && p.kind == FaultKind::kRaced) {
      p.kind = kind;
      return;
    }
  }
}

void FaultStats::ResolveLocked(uint64_t key, uint64_t now) {
  auto it = pending_.find(key);
  if (it == pending_.end()) return;
  for (const Pending& p : it->second) {
    uint64_t ns = now > p.t_ns ? now - p.t_ns : 0;
    overall_.Record(ns);
    per_thread_[p.tid].Record(ns);
    by_kind_[static_cast<int>(p.kind)].Record(ns);
  }
  pending_count_.fetch_sub(it->second.size(), std::memory_order_acq_rel);
  pending_.erase(it);
}

void FaultStats::Resolved(uint64_t key) {
  if (!HasPending()) return;
  uint64_t now = NowNs();
  std::lock_guard<std::mutex> l(mu_);
  ResolveLocked(key, now);
}

void FaultStats::ResolvedRange(uint64_t first_key, uint64_t count) {
  if (!HasPending()) return;
  uint64_t now = NowNs();
  std::lock_guard<std::mutex> l(mu_);
  if (pending_.size() < count) {
    std::vector<uint64_t> keys;
    for (const auto& [k, v] : pending_) {
      if (k >= first_key && k < first_key + count) keys.push_back(k);
    }
    for (uint64_t k : keys) ResolveLocked(k, now);
  } else {
    for (uint64_t k = first_key; k < first_key + count; ++k) ResolveLocked(k, now);
  }
}

bool FaultStats::IsPending(uint64_t key) {
  if (!HasPending()) return false;
  std::lock_guard<std::mutex> l(mu_);
  return pending_.contains(key);
}

LatencyHistogram FaultStats::Overall() const {
  std::lock_guard<std::mutex> l(mu_);
  return overall_;
}

std::array<LatencyHistogram, kFaultKinds> FaultStats::ByKind() const {
  std::lock_guard<std::mutex> l(mu_);
  return by_kind_;
}

std::map<uint32_t, LatencyHistogram> FaultStats::PerThread() const {
  std::lock_guard<std::mutex> l(mu_);
  return per_thread_;
}

}  // namespace faultline
