// VmmDirtyTracker: a source VMM's own dirty log as the page server's DirtyTracker, for warm-up
// of a QEMU guest (the source side of the x-postcopy-external-pager series, patch 7: QEMU
// tracks the writes to the RAM blocks it leaves to the pager, in its migration dirty log).
// Management connects to this tracker's Unix socket and hands that connection to the source
// QEMU (getfd + x-postcopy-external-pager-fd on the source), before `migrate`. Then, framed as
// the hand-off (u32 LE length + JSON):
//
//   QEMU -> us   hello {version: 1, role: "source", regions: [{name, length, page_size}]
//                [, throttle: true]} sent once tracking has begun (migration set-up);
//                WaitTracking() returns then
//   us -> QEMU   ack {ok[, error]}   (the blocks must be the page server's regions, in order)
//   us -> QEMU   collect {final}    Collect(): QEMU answers dirty {region, ranges: [[first,
//                                   count]...]} (any number), then collected {final}
//   us -> QEMU   switched           Switched(): the destination dropped the final set
//   us -> QEMU   throttle {percent} Throttle() (QEMUs whose hello says throttle: true):
//                                   QEMU answers throttled {percent} — the vCPU throttle of
//                                   auto-converge, lifted at the switchover and whenever the
//                                   migration ends
//
// A final collect also tells QEMU that warm-up is done: QEMU switches over (stops the guest)
// whenever it is asked to, or at once if it already was, and only then answers — Collect(true)
// waits for that, as long as the QEMU connection lasts. QEMU sends its post-copy package (the
// destination's guest runs) only after Switched().
//
// Thread-safety: WaitTracking() from any thread; Collect(), Throttle() and Switched() from one
// thread at a time (DirtyRounds holds its mutex around them).
#ifndef FAULTLINE_QEMU_INTEGRATION_HANDOFF_VMM_DIRTY_TRACKER_H_
#define FAULTLINE_QEMU_INTEGRATION_HANDOFF_VMM_DIRTY_TRACKER_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "transport/dirty_tracker.h"
#include "transport/page_source.h"

namespace faultline {
namespace handoff_internal {
class StreamReader;
}

class VmmDirtyTracker : public DirtyTracker {
 public:
  // Listens on the Unix socket `path` (replaced if it exists). `regions`: the page server's.
  static absl::StatusOr<std::unique_ptr<VmmDirtyTracker>> Listen(const std::string& path,
                                                                 std::vector<RegionInfo> regions);
  ~VmmDirtyTracker() override;

  absl::Status WaitTracking(absl::Time deadline) override;
  absl::Status Collect(bool final, std::vector<PageRange>* out) override;
  absl::Status Throttle(uint32_t percent) override;
  void Switched() override;

  // Why the latest VMM connection was refused (empty: none was).
  std::string last_refusal() const;

 private:
  VmmDirtyTracker(UniqueFd listen, UniqueFd stop, std::vector<RegionInfo> regions);
  // Accept thread: takes the first VMM whose hello matches the regions.
  void AcceptLoop();
  // Reads and checks a hello, answers ack; *throttle: the hello offers throttling.
  absl::Status Greet(int fd, bool* throttle);

  const std::vector<RegionInfo> regions_;
  UniqueFd listen_, stop_;  // stop_: an eventfd that ends AcceptLoop
  std::thread accept_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  UniqueFd vmm_;               // guarded by mu_ until tracking_; then the Collect thread's
  bool tracking_ = false;      // guarded by mu_
  bool can_throttle_ = false;  // guarded by mu_ until tracking_; then read-only
  std::string refusal_;        // guarded by mu_
  bool final_done_ = false;    // Collect thread only
  std::unique_ptr<handoff_internal::StreamReader> reader_;  // of vmm_; Collect thread only
};

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_HANDOFF_VMM_DIRTY_TRACKER_H_
