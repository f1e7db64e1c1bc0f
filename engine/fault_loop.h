// FaultLoop: reads the userfaultfd's events and decides what happens to each fault. The first
// half of one fault's path:
//
//   vCPU touches an absent page ─► kernel queues a uffd event, the vCPU sleeps
//   FaultLoop::Poll()            reads it (this thread is the only reader)
//   FaultLoop::OnFault()         one decision, below: request the page urgently (thread hop:
//                                the source's urgent receive thread delivers it to the Lander,
//                                whose placement wakes the vCPU), or wake / fill at once
//
// Also here: REMOVE/UNMAP events (the guest or VMM dropped pages: discarded), faults that met
// EAGAIN (retried once the events that caused it are read), and after an engine restart the
// pages the dead engine left kLanded (mapped before anything else).
//
// Owned by the thread that runs Engine::Run(); not thread-safe (it needs no lock: the state it
// shares is the page-state map and the stats, both thread-safe).
#ifndef FAULTLINE_ENGINE_FAULT_LOOP_H_
#define FAULTLINE_ENGINE_FAULT_LOOP_H_

#include <linux/userfaultfd.h>

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/fault_stats.h"
#include "engine/region_table.h"
#include "engine/stop_signal.h"
#include "engine/uffd_ops.h"

namespace faultline {

// Where an urgent request goes (the engine: the source's urgent channel, plus a hint to the
// background pull to continue next to the fault). Called on the fault-loop thread.
class UrgentRequester {
 public:
  virtual ~UrgentRequester() = default;
  virtual void RequestUrgent(uint32_t region, uint64_t page) = 0;
};

class FaultLoop {
 public:
  struct Options {
    absl::Duration tick = absl::Milliseconds(20);  // on_tick's period
    bool busy_poll = false;                        // spin on the uffd instead of sleeping in poll()
    // This engine continues a dead one's migration: a fault on a page the map calls present
    // may be a page a lost REMOVE dropped (engine.cc, "Restart"): fill the hole, not just wake.
    bool adopted = false;
  };
  FaultLoop(UffdOps* uffd, RegionTable* table, FaultStats* stats, EngineCounters* counters,
            UrgentRequester* requester, const Options& opts)
      : uffd_(uffd),
        table_(table),
        stats_(stats),
        counters_(counters),
        requester_(requester),
        opts_(opts) {}

  // A page a dead engine left kLanded: mapped (UFFDIO_CONTINUE) by the next Poll().
  void AddLanded(uint32_t region, uint64_t page) { landed_.emplace_back(region, page); }

  // Runs until `stop` is stopped and returns its reason, or an error of its own. `on_tick`
  // runs on this thread every tick and whenever `stop` is poked.
  absl::Status Run(StopSignal* stop, const std::function<void()>& on_tick);

  // Reads and handles every event queued now; never waits. An error ends the run.
  absl::Status Poll();

  enum class Decision {
    kRequested,         // absent or bulk-requested: asked for urgently
    kAlreadyRequested,  // another thread faulted on it first: its answer wakes this one too
    kBeingPlaced,       // a receive thread is placing it: its wake covers this thread
    kWoken,             // already present (placed between the fault and now): woken
    kFilledHole,        // discarded by the guest: zeros, or the page cache as it is
    kRetry,             // EAGAIN: a REMOVE/UNMAP is queued; retried after reading it
    kNotOurs,           // an address outside every region (cannot happen: not registered)
  };
  // What happens to one fault. Public for tests.
  Decision OnFault(const struct uffd_msg& msg, uint64_t now_ns);

  const absl::Status& error() const { return error_; }

 private:
  void OnRemove(uint64_t start, uint64_t end, bool unmap);
  // Maps the pages a dead engine left kLanded; false while some must wait for events (EAGAIN).
  bool ResolveLanded();

  UffdOps* uffd_;
  RegionTable* table_;
  FaultStats* stats_;
  EngineCounters* counters_;
  UrgentRequester* requester_;
  Options opts_;
  std::vector<struct uffd_msg> deferred_;  // faults that met EAGAIN
  std::vector<std::pair<uint32_t, uint64_t>> landed_;
  absl::Status error_;  // the first placement error met here
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_FAULT_LOOP_H_
