#include "transport/dirty_rounds.h"

#include "absl/strings/str_cat.h"

namespace faultline {

DirtyRounds::DirtyRounds(DirtyTracker* tracker, std::vector<RegionInfo> regions)
    : tracker_(tracker), regions_(std::move(regions)) {
  for (const RegionInfo& r : regions_) unconfirmed_.emplace_back((r.pages() + 63) / 64, 0);
}

void DirtyRounds::Set(uint32_t region, uint64_t first, uint64_t count) {
  std::vector<uint64_t>& bits = unconfirmed_[region];
  for (uint64_t p = first; p < first + count; ++p) bits[p / 64] |= uint64_t{1} << (p % 64);
}

absl::StatusOr<std::vector<DirtyFrame>> DirtyRounds::Sync(bool final, uint32_t throttle) {
  std::lock_guard<std::mutex> l(mu_);
  if (switched_) {
    // The guest runs at the destination already (an engine restarted after the switch asks):
    // nothing may be dropped there any more. An empty final round ends its warm-up.
    DirtyFrame f;
    f.round = ++round_;
    f.flags = kDirtyFinal;
    return std::vector<DirtyFrame>{f};
  }
  // The throttle first: it governs the writes of the round that begins with this collection.
  // A failure to throttle is no failure of warm-up (the guest only writes faster than asked);
  // the destination learns it from kDirtyNoThrottle and stops asking for more.
  if (!final && !no_throttle_ && throttle != throttle_) {
    if (tracker_->Throttle(throttle).ok()) {
      throttle_ = throttle;
    } else {
      no_throttle_ = true;
      if (throttle_ != 0 && tracker_->Throttle(0).ok()) throttle_ = 0;
    }
  }
  std::vector<PageRange> written;
  if (absl::Status s = tracker_->Collect(final, &written); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("dirty tracking: ", s.message()));
  }
  for (const PageRange& r : written) {
    if (absl::Status s = CheckDirtyRange(r, regions_); !s.ok()) {
      return absl::InternalError(absl::StrCat("the dirty tracker reported ", s.message()));
    }
    Set(r.region, r.first, r.count);
  }
  ++round_;
  if (final && final_round_ == 0) final_round_ = round_;
  // Every unconfirmed page, as runs, in frames of at most kMaxDirtyRanges ranges.
  std::vector<DirtyFrame> frames(1);
  for (uint32_t region = 0; region < unconfirmed_.size(); ++region) {
    const std::vector<uint64_t>& bits = unconfirmed_[region];
    const uint64_t pages = regions_[region].pages();
    uint64_t p = 0;
    while (p < pages) {
      const uint64_t word = bits[p / 64] >> (p % 64);
      if (word == 0) {
        p = (p / 64 + 1) * 64;
        continue;
      }
      p += static_cast<uint64_t>(__builtin_ctzll(word));
      const uint64_t first = p;
      while (p < pages && (bits[p / 64] >> (p % 64)) & 1) ++p;
      if (frames.back().ranges.size() == kMaxDirtyRanges) frames.emplace_back();
      // A run never exceeds the region (< 2^32 pages: regions are < 16 TiB of 4 KiB pages).
      frames.back().ranges.push_back({region, static_cast<uint32_t>(p - first), first});
    }
  }
  for (size_t i = 0; i < frames.size(); ++i) {
    frames[i].round = round_;
    frames[i].flags = (final ? kDirtyFinal : 0) | (i + 1 < frames.size() ? kDirtyMore : 0) |
                      (!final && throttle != 0 && no_throttle_ ? kDirtyNoThrottle : 0);
  }
  return frames;
}

void DirtyRounds::ReleaseThrottle() {
  std::lock_guard<std::mutex> l(mu_);
  if (throttle_ != 0 && tracker_->Throttle(0).ok()) throttle_ = 0;
}

void DirtyRounds::Applied(uint64_t round) {
  bool switched_now = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    // An older round's confirmation says nothing about pages sent since.
    if (round != round_) return;
    for (std::vector<uint64_t>& bits : unconfirmed_) std::fill(bits.begin(), bits.end(), 0);
    // The final round, or any round after it (a restarted engine asks again): the guest is
    // paused on the source, so nothing is left to send.
    if (final_round_ != 0 && !switched_) {
      switched_ = switched_now = true;
    }
  }
  if (switched_now) tracker_->Switched();
}

uint64_t DirtyRounds::round() const {
  std::lock_guard<std::mutex> l(mu_);
  return round_;
}

bool DirtyRounds::switched() const {
  std::lock_guard<std::mutex> l(mu_);
  return switched_;
}

uint64_t DirtyRounds::unconfirmed_pages() const {
  std::lock_guard<std::mutex> l(mu_);
  uint64_t n = 0;
  for (const std::vector<uint64_t>& bits : unconfirmed_) {
    for (uint64_t w : bits) n += static_cast<uint64_t>(__builtin_popcountll(w));
  }
  return n;
}

}  // namespace faultline
