// Engine: the destination side of a post-copy migration. It owns the userfaultfd of the
// guest's memory, catches every fault on a page that has not arrived, asks the source for it
// urgently, pulls everything else in the background, places each page exactly once and wakes
// the faulting threads. Run() returns when every page is present.
//
// The Engine only wires its parts together. One fault, file by file:
//   fault_loop.cc   uffd event read → FaultLoop::OnFault decides → urgent request to the source
//   (transport/)    the source answers on the urgent connection; its receive thread checks the
//                   bytes and calls Deliver()
//   lander.cc       claim the page, write it where its kind needs it, map it (UFFDIO_CONTINUE /
//                   COPY / ZEROPAGE): the vCPU wakes
//   fault_stats.cc  latency from event read to wake, per faulting thread
// Around it: background_pull.cc (everything no fault asked for, on its own thread),
// reconnector.cc (a broken connection), region_table.cc (regions, page-state maps, placers).
//
// Threads: the caller of Run() runs the fault loop; the transport's receive threads run the
// Lander; the pull and the reconnector have a thread each. What they share: the page-state
// maps (atomics), the stats and counters (atomics or their own lock), the StopSignal.
#ifndef FAULTLINE_ENGINE_ENGINE_H_
#define FAULTLINE_ENGINE_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/thread_slice.h"
#include "engine/background_pull.h"
#include "engine/fault_loop.h"
#include "engine/fault_stats.h"
#include "engine/lander.h"
#include "engine/page_state.h"
#include "engine/placer.h"
#include "engine/reconnector.h"
#include "engine/region.h"
#include "engine/region_table.h"
#include "engine/state_file.h"
#include "engine/stop_signal.h"
#include "engine/uffd.h"
#include "engine/warmup.h"
#include "transport/page_source.h"

namespace faultline {

struct EngineOptions {
  uint32_t bulk_batch_bytes = 1u << 20;  // bytes per background request
  uint32_t bulk_window = 4;              // background requests in flight per bulk lane
  // With several bulk lanes: for this long after a fault only the first takes new requests
  // (BackgroundPull::Options::solo_after_fault_ns). Zero: every lane always — right where
  // cores are plenty; on 2 cores 2 ms halved the mean fault and cost total time
  // (bench/RESULTS.md).
  absl::Duration bulk_solo_after_fault = absl::ZeroDuration();
  // With several bulk lanes: only the first for this long after the pull begins, while a VMM's
  // switch-over faults (BackgroundPull::Options::solo_at_start_ns). Zero: none.
  absl::Duration bulk_solo_at_start = absl::Milliseconds(20);
  // No bulk request at all for this long after the pull begins, or until GuestRunning()
  // (BackgroundPull::Options::hold_at_start_ns). Zero: none.
  absl::Duration bulk_hold_at_start = absl::ZeroDuration();
  bool busy_poll = false;  // the fault loop spins on the uffd instead of poll()
  // The fault-loop thread's scheduler slice (base/thread_slice.h): a short one lets the thread
  // preempt bulk work when a fault wakes it instead of waiting out the running thread's slice.
  // The transport's urgent threads take theirs from TcpSourceOptions::urgent_slice and
  // PageServer::SetUrgentSlice. Zero: the kernel's default.
  absl::Duration fault_slice = kDefaultFaultSlice;
  // The fault-loop thread's nice value while it is the fault loop (base/bulk_threads.h:
  // BulkThreads::fault_path_nice() of the bulk stream's) where that is a higher priority than its
  // caller's; the caller's again after. Never lowered. 0: unchanged.
  int fault_nice = 0;
  absl::Duration tick = absl::Milliseconds(20);
  // False when the VMM registered the ranges itself (a hand-off); the engine then leaves the
  // registration to its owner too.
  bool register_ranges = true;
  // Send DONE to the source when every page is present. False when the caller still needs
  // the source afterwards (e.g. to verify against it) and sends DONE itself.
  bool finish_source = true;
  // Pull pages nobody faulted on. False: only faults fetch pages until StartBackgroundPull()
  // (tests and the fault-latency benchmark use this).
  bool background_pull = true;
  // Hold the background pull back for this long after Run() starts, so the first faults have
  // the link to themselves (tests use it to make vCPU faults certain).
  absl::Duration pull_start_delay = absl::ZeroDuration();
  // When the connection to the source breaks (not a protocol or auth error), keep the guest
  // waiting on its faults and reconnect with backoff for up to this long, then re-send every
  // request that was in flight. Zero: fail at once.
  absl::Duration reconnect_deadline = absl::Seconds(30);
  // Pre-copy before post-copy: pull while the guest still runs on the source, in rounds, and
  // let it run here only after the final round (engine/warmup.h). Run() then does both.
  WarmUpOptions warmup;
};

class Engine : public PageSink, private UrgentRequester {
 public:
  // Registers every region with `uffd` (unless the VMM did) — from then on, guest accesses to
  // absent pages wait for Run(). Fails clearly where the kernel lacks support for a kind.
  // With `state` (which must outlive the engine), the page-state map lives in that file; if
  // the file was adopted — a previous engine died mid-migration on the same uffd — the engine
  // continues from what it left (see "Restart" in engine.cc). A fresh (not adopted) engine
  // drops whatever a memfd/hugetlbfs region's file already holds: no page may be present
  // before its bytes came from the source.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::vector<GuestRegion*> regions,
                                                        Userfaultfd uffd,
                                                        const EngineOptions& opts = {},
                                                        StateFile* state = nullptr);
  // The same over any UffdOps (tests: a scripted fake).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::vector<GuestRegion*> regions,
                                                        std::unique_ptr<UffdOps> uffd,
                                                        const EngineOptions& opts = {},
                                                        StateFile* state = nullptr);
  ~Engine() override;

  // Checks the source's region table against ours, then serves faults and pulls pages until
  // every page is present (OK, the source is told DONE, ranges unregistered) or the transport
  // fails or Cancel() is called (the error; faulted threads stay blocked, never SIGBUS).
  absl::Status Run(PageSource* source);
  // Whether a source's region table matches this engine's regions (Run() checks it too).
  absl::Status CheckSourceTable(const std::vector<RegionInfo>& table) const {
    return table_->CheckSource(table);
  }
  void Cancel();               // thread-safe
  void StartBackgroundPull();  // thread-safe; see EngineOptions::background_pull
  // The VMM's guest runs here now: the hold at the start (EngineOptions::bulk_hold_at_start)
  // ends. Thread-safe.
  void GuestRunning();
  // Whether Cancel() was called or Run() has ended (thread-safe): a caller waiting before Run()
  // (cli/handoff_run.cc, for the VMM's "listen") stops waiting.
  bool stopped() const { return stop_.stopped(); }

  uint64_t total_pages() const { return table_->total_pages(); }
  uint64_t remaining_pages() const { return table_->remaining(); }
  uint64_t total_bytes() const { return table_->total_bytes(); }
  const EngineCounters& counters() const { return counters_; }
  const PlacerCounters& placer_counters() const { return placer_counters_; }
  const FaultStats& fault_stats() const { return stats_; }
  // The engine's own memory: page-state maps (never guest memory).
  size_t footprint_bytes() const;
  PageState StateOf(uint32_t region, uint64_t page) const {
    return (*table_)[region].state.Get(page);
  }
  // Whether this engine continues a dead one's migration, and what it found: what
  // AdoptAfterRestart() said, with the landed pages that turned out to be holes (and were
  // fetched again) moved from `landed` to `refetch`, so every page is counted once.
  bool adopted() const { return adopted_; }
  AdoptedStates adopted_states() const {
    AdoptedStates a = adopted_states_;
    const uint64_t holes = counters_.landed_refetched.load(std::memory_order_acquire);
    a.landed -= holes;
    a.refetch += holes;
    return a;
  }
  // Pages a fresh engine found already in a region's file and dropped (see Create()).
  uint64_t stale_pages_dropped() const { return stale_pages_dropped_; }

  // PageSink: called on the transport's receive threads.
  void Deliver(const PageRun& run) override;
  void Rejected(uint32_t region, uint64_t page, Urgency urgency) override;
  void BulkDone(uint32_t lane) override;
  void Dirty(DirtySet set) override;
  void Failed(const SourceError& why) override;

  // Warm-up: null without it.
  const WarmUp* warmup() const { return warmup_on() ? warmup_.get() : nullptr; }
  // Faults read before the switch (nothing should fault then: the guest runs at the source).
  uint64_t faults_before_switch() const { return faults_at_switch_.load(); }

 private:
  Engine(std::unique_ptr<UffdOps> uffd, const EngineOptions& opts);
  absl::Status RegisterAll();
  void UnregisterAll();
  absl::Status DropStalePages();  // a fresh engine: nothing may be present yet
  absl::Status Adopt();           // after a restart, before Run()
  void WakeAllAfterRestart();     // Run(), adopted only
  void Fail(const absl::Status& s) { stop_.Stop(s); }
  void CheckComplete() {
    // Warm-up: every page present is not the end until the final round was applied.
    if (table_->remaining() == 0 && !warming_.load(std::memory_order_acquire)) {
      stop_.Stop(absl::OkStatus());
    }
  }
  void Switched();  // warm-up thread: the final round is applied and confirmed
  void OnTick();    // fault-loop thread
  // UrgentRequester (fault-loop thread).
  void RequestUrgent(uint32_t region, uint64_t page) override;

  std::unique_ptr<UffdOps> uffd_;
  EngineOptions opts_;
  PlacerCounters placer_counters_;
  EngineCounters counters_;
  FaultStats stats_;
  StopSignal stop_;
  // Built by Create() in this order, over the table.
  std::unique_ptr<RegionTable> table_;
  std::unique_ptr<Lander> lander_;
  std::unique_ptr<BackgroundPull> pull_;
  std::unique_ptr<Reconnector> reconnector_;
  std::unique_ptr<FaultLoop> loop_;
  std::unique_ptr<WarmUp> warmup_;
  // Whether warm-up runs: set with warmup_, cleared by Run() for a frozen source. warmup_ itself
  // is never reset before the destructor, so warmup() may be read from any thread.
  std::atomic<bool> warmup_on_{false};
  bool warmup_on() const { return warmup_on_.load(std::memory_order_acquire); }
  std::atomic<bool> warming_{false};
  std::atomic<uint64_t> faults_at_switch_{0};
  PageSource* source_ = nullptr;
  bool registered_ = false;
  std::atomic<bool> running_{false};  // between the source's Start() and Stop()
  uint64_t pull_start_at_ns_ = 0;     // fault-loop thread only
  bool adopted_ = false;
  AdoptedStates adopted_states_;
  uint64_t stale_pages_dropped_ = 0;
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_ENGINE_H_
