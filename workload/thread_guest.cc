#include "workload/thread_guest.h"

#include <time.h>

#include "absl/strings/str_cat.h"
#include "base/clock.h"
#include "absl/strings/str_split.h"

namespace faultline {
namespace {

uint64_t Next(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

}  // namespace

const char* AccessPatternName(AccessPattern p) {
  switch (p) {
    case AccessPattern::kSequential: return "seq";
    case AccessPattern::kRandom: return "random";
    case AccessPattern::kHotSet: return "hot";
  }
  return "?";
}

absl::StatusOr<std::vector<AccessPattern>> ParsePatterns(const std::string& s) {
  std::vector<AccessPattern> out;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    if (p == "seq" || p == "sequential") out.push_back(AccessPattern::kSequential);
    else if (p == "random" || p == "rand") out.push_back(AccessPattern::kRandom);
    else if (p == "hot" || p == "hotset") out.push_back(AccessPattern::kHotSet);
    else return absl::InvalidArgumentError(absl::StrCat("unknown access pattern '", p,
                                                        "' (seq, random, hot)"));
  }
  return out;
}

ThreadGuest::ThreadGuest(const uint8_t* base, uint64_t size, uint32_t page_size,
                         const GuestOptions& opts)
    : base_(base), pages_(size / page_size), page_size_(page_size), opts_(opts) {
  uint64_t seed = opts.seed;
  for (AccessPattern p : opts.threads) {
    threads_.emplace_back([this, p, seed] { Run(p, seed); });
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
  }
}

ThreadGuest::~ThreadGuest() {
  Stop();
  Join();
}

void ThreadGuest::Stop() { stop_.store(true); }

void ThreadGuest::Join() {
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

LatencyHistogram ThreadGuest::SlowTouches() const {
  std::lock_guard<std::mutex> l(mu_);
  return slow_;
}

void ThreadGuest::Run(AccessPattern p, uint64_t seed) {
  uint64_t s = seed | 1;
  LatencyHistogram local;
  uint64_t acc = 0;
  const uint64_t hot_pages = std::max<uint64_t>(1, pages_ * opts_.hot_percent / 100);
  const uint64_t hot_base = Next(s) % pages_;
  uint64_t n = 0;
  for (; n < opts_.touches_per_thread && !stop_.load(std::memory_order_relaxed); ++n) {
    uint64_t page;
    switch (p) {
      case AccessPattern::kSequential:
        page = (n * 7) % pages_;  // a stride keeps it sequential-ish but sparse on big guests
        page = n < pages_ ? n : page;
        break;
      case AccessPattern::kRandom:
        page = Next(s) % pages_;
        break;
      case AccessPattern::kHotSet:
      default:
        page = (Next(s) % 100 < 90) ? (hot_base + Next(s) % hot_pages) % pages_
                                    : Next(s) % pages_;
        break;
    }
    const uint64_t off = page * page_size_ + (Next(s) % (page_size_ / 8)) * 8;
    const uint64_t t0 = MonotonicNowNs();
    acc ^= *reinterpret_cast<const volatile uint64_t*>(base_ + off);
    const uint64_t dt = MonotonicNowNs() - t0;
    if (dt > opts_.slow_touch_ns) local.Record(dt);
  }
  touches_.fetch_add(n);
  sink_.fetch_xor(acc);
  std::lock_guard<std::mutex> l(mu_);
  slow_.Merge(local);
}

}  // namespace faultline
