// DirtyTracker: the source's record of which guest pages were written, for warm-up — the
// destination pulls pages while the guest still runs on the source, and asks in rounds which
// of them changed since (transport/dirty_rounds.h keeps the rounds; the implementations know
// the guest: KVM's dirty log in the reference VMM, qemu-integration/vmm/dirty_log.h; write-
// protect tracking of a mapping, dirty/wp_tracker.h).
//
// The one rule that makes warm-up correct: tracking starts before the page server reads any
// page, and every write to guest memory after that is in some later Collect(). A page read
// while it is being written is then in the next set, and the destination fetches it again.
#ifndef FAULTLINE_TRANSPORT_DIRTY_TRACKER_H_
#define FAULTLINE_TRANSPORT_DIRTY_TRACKER_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "transport/protocol.h"

namespace faultline {

class DirtyTracker {
 public:
  virtual ~DirtyTracker() = default;
  // Appends to *out every page written since the previous Collect() (the first: since
  // tracking began), as ranges of the page server's regions (region index in its table), and
  // starts a new record. `final`: first stop every writer for good (the guest is paused on
  // the source), then collect — the result is then the last set there will be.
  // Called from one thread at a time.
  virtual absl::Status Collect(bool final, std::vector<PageRange>* out) = 0;
  // Blocks until tracking has begun (the page server reads no page before), or `deadline`
  // (DeadlineExceeded). Trackers whose tracking begins with them return at once. Any thread.
  virtual absl::Status WaitTracking(absl::Time deadline) { return absl::OkStatus(); }
  // Slows the guest down until called again: `percent` (1–99) of its vCPUs' time is taken
  // away, so that it writes less per round (QEMU's auto-converge); 0 lets it run at full
  // speed. Trackers whose guest cannot be slowed return Unimplemented. Called from one thread
  // at a time, never after a final Collect().
  virtual absl::Status Throttle(uint32_t percent) {
    return absl::UnimplementedError("this source cannot slow its guest down");
  }
  // The destination has dropped every page of the final set: the guest may run there now.
  // Called at most once, after a final Collect().
  virtual void Switched() {}
};

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_DIRTY_TRACKER_H_
