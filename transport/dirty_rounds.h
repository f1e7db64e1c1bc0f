// DirtyRounds: the source's side of warm-up rounds for one migration (protocol.h: DIRTY_SYNC,
// DIRTY, DIRTY_APPLIED). Each Sync() collects what the DirtyTracker recorded since the last
// round, numbers a new round and answers with every page that is not yet known to be dropped
// at the destination: the new set plus any earlier set the destination has not confirmed
// (DIRTY_APPLIED). So a set lost with a connection, or with an engine that died before it had
// dropped every page, is sent again with the next round — nothing written is ever forgotten.
//
// Thread-safety: every method may be called from any thread (one mutex; Sync() holds it while
// the tracker collects).
#ifndef FAULTLINE_TRANSPORT_DIRTY_ROUNDS_H_
#define FAULTLINE_TRANSPORT_DIRTY_ROUNDS_H_

#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "transport/dirty_tracker.h"
#include "transport/protocol.h"

namespace faultline {

class DirtyRounds {
 public:
  // `tracker` must outlive this; `regions` is the page server's table (the tracker's ranges
  // are checked against it: a tracker naming pages outside it is a bug, reported as Internal).
  DirtyRounds(DirtyTracker* tracker, std::vector<RegionInfo> regions);

  // A DIRTY_SYNC: the round's frames (at least one; every one but the last has kDirtyMore).
  // `throttle` (percent; not for the final round, whose guest is stopped) is passed to the
  // tracker when it differs from the one in force; a tracker that cannot slow its guest (or
  // fails to) leaves the guest at full speed, and every frame from then on that answers a
  // request for a throttle says so (kDirtyNoThrottle).
  absl::StatusOr<std::vector<DirtyFrame>> Sync(bool final, uint32_t throttle = 0);
  // The destination that asked for a throttle is gone (its connection closed): the guest runs
  // at full speed again until a DIRTY_SYNC asks otherwise.
  void ReleaseThrottle();
  // A DIRTY_APPLIED for `round`: if it is the latest round, every page sent so far is dropped
  // at the destination. For the final round, the tracker is told Switched() (once).
  void Applied(uint64_t round);

  // DirtyTracker::WaitTracking (without the mutex).
  absl::Status WaitTracking(absl::Time deadline) { return tracker_->WaitTracking(deadline); }

  uint64_t round() const;
  bool switched() const;
  // Pages sent in rounds not yet confirmed.
  uint64_t unconfirmed_pages() const;

 private:
  void Set(uint32_t region, uint64_t first, uint64_t count);

  DirtyTracker* const tracker_;
  const std::vector<RegionInfo> regions_;
  mutable std::mutex mu_;
  uint64_t round_ = 0;                              // guarded by mu_
  uint64_t final_round_ = 0;                        // guarded by mu_; 0: no final round yet
  bool switched_ = false;                           // guarded by mu_
  uint32_t throttle_ = 0;                           // guarded by mu_: in force at the tracker
  bool no_throttle_ = false;                        // guarded by mu_: the tracker has none
  std::vector<std::vector<uint64_t>> unconfirmed_;  // guarded by mu_: a bitset per region
};

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_DIRTY_ROUNDS_H_
