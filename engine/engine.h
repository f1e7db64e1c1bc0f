// Engine: the destination side of a post-copy migration. It owns the userfaultfd of the
// guest's memory, catches every fault on a page that has not arrived, asks the source for it
// urgently, pulls everything else in the background, places each page exactly once and wakes
// the faulting threads. Run() returns when every page is present.
//
// One fault, file by file:
//   fault_loop.cc      uffd event read → PageStateMap::MarkUrgent → PageSource::RequestUrgent
//   (transport/)       the source answers on the urgent channel
//   receiver.cc        Land(): claim the page, pick where its bytes go; Arrived(): place it
//   placer.cc          UFFDIO_COPY / CONTINUE / ZEROPAGE, which wakes the vCPU
//   fault_stats.cc     latency from event read to wake, per faulting thread
//   background_pull.cc what no fault asked for arrives in batches, nearest the last fault first
#ifndef FAULTLINE_ENGINE_ENGINE_H_
#define FAULTLINE_ENGINE_ENGINE_H_

#include <linux/userfaultfd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "engine/fault_stats.h"
#include "engine/page_state.h"
#include "engine/placer.h"
#include "engine/region.h"
#include "engine/state_file.h"
#include "engine/uffd.h"
#include "transport/page_source.h"

namespace faultline {

struct EngineOptions {
  uint32_t bulk_batch_bytes = 1u << 20;  // bytes per background request
  uint32_t bulk_window = 4;              // background requests in flight
  bool busy_poll = false;                // the fault loop spins on the uffd instead of poll()
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
};

class Engine : public PageSink {
 public:
  // Registers every region with `uffd` (unless the VMM did) — from then on, guest accesses to
  // absent pages wait for Run(). Fails clearly where the kernel lacks support for a kind.
  // With `state` (which must outlive the engine), the page-state map lives in that file; if
  // the file was adopted — a previous engine died mid-migration on the same uffd — the engine
  // continues from what it left (see "Restart" in engine.cc).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::vector<GuestRegion*> regions,
                                                        Userfaultfd uffd,
                                                        const EngineOptions& opts = {},
                                                        StateFile* state = nullptr);
  ~Engine() override;

  // Checks the source's region table against ours, then serves faults and pulls pages until
  // every page is present (OK, the source is told DONE, ranges unregistered) or the transport
  // fails or Cancel() is called (the error; faulted threads stay blocked, never SIGBUS).
  absl::Status Run(PageSource* source);
  // Whether a source's region table matches this engine's regions (Run() checks it too).
  absl::Status CheckSourceTable(const std::vector<RegionInfo>& table) const;
  void Cancel();  // thread-safe
  void StartBackgroundPull();  // thread-safe; see EngineOptions::background_pull

  uint64_t total_pages() const { return total_pages_; }
  uint64_t remaining_pages() const;
  uint64_t total_bytes() const { return total_bytes_; }
  const EngineCounters& counters() const { return counters_; }
  const PlacerCounters& placer_counters() const { return placer_counters_; }
  const FaultStats& fault_stats() const { return stats_; }
  // The engine's own memory: page-state maps and landing buffers (never guest memory).
  size_t footprint_bytes() const;
  PageState StateOf(uint32_t region, uint64_t page) const {
    return regions_[region]->state.Get(page);
  }
  // Whether this engine continues a dead one's migration, and what it found.
  bool adopted() const { return adopted_; }
  const AdoptedStates& adopted_states() const { return adopted_states_; }

  // PageSink (called by the transport's receive threads).
  uint8_t* Land(Channel ch, uint32_t region, uint64_t page, uint32_t index) override;
  uint8_t* DirectBase(uint32_t region) override;
  void Arrived(Channel ch, uint32_t region, uint64_t page, uint32_t index,
               Arrival what) override;
  void FrameDone(Channel ch, uint32_t region, uint64_t first, uint32_t count) override;
  void FrameAborted(Channel ch) override;
  void Failed(Channel ch, const absl::Status& why) override;

 private:
  struct RegionCtx {
    RegionCtx(GuestRegion* r, Userfaultfd* u, PlacerCounters* c, uint64_t key)
        : region(r), state(r->pages()), placer(u, r, c), key_base(key) {}
    RegionCtx(GuestRegion* r, Userfaultfd* u, PlacerCounters* c, uint64_t key,
              std::atomic<uint8_t>* storage)
        : region(r), state(r->pages(), storage), placer(u, r, c), key_base(key) {}
    GuestRegion* region;
    PageStateMap state;
    Placer placer;
    uint64_t key_base;  // global page key = key_base + page
  };
  // Per-channel landing of the frame being received (touched only by that channel's thread).
  struct Landing {
    enum Slot : uint8_t { kNone, kClaimed, kReadyData, kReadyZero };
    std::vector<uint8_t> staging;  // COPY kinds: page i of the frame at i * page_size
    std::vector<uint8_t> scratch;  // bytes nobody wants (duplicates)
    std::vector<uint8_t> slots;    // per frame index
    uint32_t region = 0;
    uint64_t first = 0;
    uint32_t flushed = 0;      // bulk: frame indexes below this are placed
    int64_t flush_after = -1;  // bulk: a fault waits on this index: place up to it at once
    // The transport delivers a frame's pages in order: index 0, or a page that does not
    // follow the frame in hand, starts a new frame.
    void StartFrameIfNew(uint32_t r, uint64_t page, uint32_t index) {
      if (index != 0 && region == r && first + index == page) return;
      region = r;
      first = page - index;
      flushed = 0;
      flush_after = -1;
      std::fill(slots.begin(), slots.end(), kNone);
    }
  };

  Engine(Userfaultfd uffd, const EngineOptions& opts);
  absl::Status RegisterAll();
  void UnregisterAll();
  absl::Status Adopt();        // engine.cc: after a restart, before Run()
  void WakeAllAfterRestart();  // engine.cc: Run(), adopted only

  // fault_loop.cc
  absl::Status FaultLoop();
  // Returns false when the fault must be retried after reading more events (EAGAIN).
  bool HandleFault(const struct uffd_msg& msg, uint64_t now_ns);
  void HandleRemove(uint64_t start, uint64_t end, bool unmap);
  void SendUrgent(uint32_t region, uint64_t page);
  int RegionOf(uint64_t addr) const;
  // Maps the pages a dead engine left kLanded (UFFDIO_CONTINUE); false while some must wait
  // for events to be read (EAGAIN).
  bool ResolveLanded();

  // receiver.cc
  // Places `count` pages starting at `first` whose landing is `kind` (kReadyData/kReadyZero).
  absl::Status PlaceRun(RegionCtx& rc, uint8_t kind, uint64_t first, uint32_t count,
                        const uint8_t* src, bool wake);
  void FlushBulk(Landing& l, uint32_t upto);
  void PlaceUrgent(Landing& l, uint32_t index, bool zero);
  void ReleaseUnplaced(Landing& l);
  void HandlePlaceError(RegionCtx& r, uint64_t first, uint32_t count, const absl::Status& s);

  // background_pull.cc
  void PullMore();
  uint32_t BatchPages(uint32_t region) const;

  // reconnect.cc
  bool Reconnectable(const absl::Status& s) const;
  void RequestReconnect(const absl::Status& why);
  void StartReconnect();
  void FinishReconnect();
  void JoinReconnect();

  // engine.cc
  void Fail(const absl::Status& s);
  // A failed request write: the connection is dead, and its receive thread will soon report
  // why (a protocol error from the peer, say). Becomes the run's error only if nothing better
  // arrives within a grace period.
  void FailSecondary(const absl::Status& s);
  void Signal();
  void PageDone();

  Userfaultfd uffd_;
  EngineOptions opts_;
  std::vector<std::unique_ptr<RegionCtx>> regions_;
  uint64_t total_pages_ = 0, total_bytes_ = 0;
  bool registered_ = false;
  PageSource* source_ = nullptr;
  UniqueFd wake_fd_;  // eventfd: completion, failure, cancel
  std::atomic<bool> complete_{false}, cancelled_{false};
  std::mutex fail_mu_;
  absl::Status failure_;  // guarded by fail_mu_
  std::atomic<bool> failed_{false};
  absl::Status secondary_failure_;  // guarded by fail_mu_
  std::atomic<uint64_t> secondary_at_ns_{0};

  // Reconnection (reconnect.cc): set by a failing channel, run on reconnect_thread_.
  std::atomic<bool> reconnecting_{false}, need_reconnect_{false}, reconnected_{false};
  absl::Status reconnect_reason_;  // guarded by fail_mu_
  std::thread reconnect_thread_;

  Landing landing_[2];
  std::atomic<uint64_t> flush_key_{0};  // bulk: key+1 of a page a fault waits on

  std::mutex pull_mu_;
  uint32_t pull_region_ = 0;  // guarded by pull_mu_
  uint64_t pull_page_ = 0;
  uint32_t bulk_outstanding_ = 0;
  bool pull_idle_ = false;
  std::atomic<uint64_t> pull_hint_{0};  // key+1 of the last urgent fault
  std::atomic<bool> pull_enabled_{true};
  uint64_t pull_start_at_ns_ = 0;  // fault-loop thread only

  // Restart (engine.cc): set by Create(), then read by the fault-loop thread only.
  bool adopted_ = false;
  AdoptedStates adopted_states_;
  std::vector<std::pair<uint32_t, uint64_t>> landed_;  // (region, page) left kLanded

  EngineCounters counters_;
  PlacerCounters placer_counters_;
  FaultStats stats_;
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_ENGINE_H_
