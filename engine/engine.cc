#include "engine/engine.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "base/thread_slice.h"

namespace faultline {

Engine::Engine(std::unique_ptr<UffdOps> uffd, const EngineOptions& opts)
    : uffd_(std::move(uffd)), opts_(opts) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::vector<GuestRegion*> regions,
                                                       Userfaultfd uffd, const EngineOptions& opts,
                                                       StateFile* state) {
  return Create(std::move(regions), std::make_unique<Userfaultfd>(std::move(uffd)), opts, state);
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::vector<GuestRegion*> regions,
                                                       std::unique_ptr<UffdOps> uffd,
                                                       const EngineOptions& opts,
                                                       StateFile* state) {
  if (regions.empty()) return absl::InvalidArgumentError("no guest memory regions");
  if (regions.size() > kMaxEngineRegions) {
    return absl::InvalidArgumentError(absl::StrCat("more than ", kMaxEngineRegions, " regions"));
  }
  std::vector<std::atomic<uint8_t>*> maps;
  if (state != nullptr) {
    bool same = state->regions() == regions.size();
    for (size_t i = 0; same && i < regions.size(); ++i) {
      same = state->region_pages(i) == regions[i]->pages();
    }
    if (!same) {
      return absl::InvalidArgumentError(
          absl::StrCat("state file ", state->path(), " does not match the regions' page counts"));
    }
    for (size_t i = 0; i < regions.size(); ++i) maps.push_back(state->region_map(i));
  }
  if (opts.bulk_window == 0 || opts.bulk_batch_bytes == 0) {
    return absl::InvalidArgumentError("bulk window and batch size must be positive");
  }
  std::unique_ptr<Engine> e(new Engine(std::move(uffd), opts));
  if (!e->stop_.valid()) return ErrnoStatus("eventfd");
  absl::StatusOr<std::unique_ptr<RegionTable>> table =
      RegionTable::Create(regions, e->uffd_.get(), &e->placer_counters_, maps);
  if (!table.ok()) return table.status();
  e->table_ = std::move(*table);
  e->lander_ = std::make_unique<Lander>(e->table_.get(), &e->stats_, &e->counters_);
  if (opts.warmup.enabled && !opts.background_pull) {
    return absl::InvalidArgumentError("warm-up pulls in the background: it needs background_pull");
  }
  BackgroundPull::Options po;
  po.rate_bytes_per_s = opts.warmup.enabled ? opts.warmup.rate_bytes_per_s : 0;
  po.batch_bytes = opts.bulk_batch_bytes;
  po.window = opts.bulk_window;
  po.solo_at_start_ns = static_cast<uint64_t>(
      absl::ToInt64Nanoseconds(std::max(absl::ZeroDuration(), opts.bulk_solo_at_start)));
  po.hold_at_start_ns = static_cast<uint64_t>(
      absl::ToInt64Nanoseconds(std::max(absl::ZeroDuration(), opts.bulk_hold_at_start)));
  po.solo_after_fault_ns = static_cast<uint64_t>(
      absl::ToInt64Nanoseconds(std::max(absl::ZeroDuration(), opts.bulk_solo_after_fault)));
  po.enabled = opts.background_pull && opts.pull_start_delay <= absl::ZeroDuration();
  e->pull_ = std::make_unique<BackgroundPull>(e->table_.get(), &e->counters_, po);
  if (opts.warmup.enabled) {
    if (absl::Status s = WarmUp::CheckRegions(*e->table_); !s.ok()) return s;
    e->warmup_ = std::make_unique<WarmUp>(e->table_.get(), e->pull_.get(), &e->stop_, opts.warmup);
    e->warmup_on_.store(true);
  }
  Engine* raw = e.get();
  e->reconnector_ = std::make_unique<Reconnector>(e->table_.get(), e->pull_.get(), &e->counters_,
                                                  opts.reconnect_deadline,
                                                  [raw](const absl::Status& s) { raw->Fail(s); });
  if (opts.register_ranges) {
    if (absl::Status s = e->RegisterAll(); !s.ok()) return s;
  }
  if (state != nullptr && state->adopted()) {
    if (absl::Status s = e->Adopt(); !s.ok()) return s;
  } else if (absl::Status s = e->DropStalePages(); !s.ok()) {
    return s;
  }
  FaultLoop::Options lo;
  lo.tick = opts.tick;
  lo.busy_poll = opts.busy_poll;
  lo.adopted = e->adopted_;
  e->loop_ = std::make_unique<FaultLoop>(e->uffd_.get(), e->table_.get(), &e->stats_, &e->counters_,
                                         static_cast<UrgentRequester*>(e.get()), lo);
  for (size_t ri = 0; e->adopted_ && ri < e->table_->size(); ++ri) {
    const PageStateMap& st = (*e->table_)[ri].state;
    for (uint64_t p = 0; p < st.pages(); ++p) {
      if (st.Get(p) == PageState::kLanded) e->loop_->AddLanded(static_cast<uint32_t>(ri), p);
    }
  }
  return e;
}

// ---- A fresh engine: nothing may be present yet ---------------------------------------------
//
// Post-copy's whole premise is that a page the guest can read without faulting holds the
// source's bytes. A page already in a region's file when the migration starts — written by the
// VMM before the hand-off, preallocated (QEMU's prealloc=on), left by an earlier run — would be
// read by the guest without any fault: wrong memory, silently. So a fresh engine (not one
// continuing a dead engine's run, whose map says what is present) punches out whatever the
// file holds in the region's range; the VMM's mappings of those pages go with them, and the
// next access faults as it must. Anonymous memory has no file to inspect from here: its owner
// must hand it over untouched (the hand-off's contract). guest_memfd cannot say where its data
// is (no llseek: SEEK_DATA fails with ESPIPE), and a page it holds — fallocated, or written by
// the VMM before the hand-off — would be mapped without a MISSING fault (the kernel/ series
// fills such a fault from the folio that is there): its whole range is punched, which costs
// next to nothing where it holds nothing, and is not counted.
absl::Status Engine::DropStalePages() {
  for (size_t i = 0; i < table_->size(); ++i) {
    const GuestRegion& r = *(*table_)[i].region;
    if (r.fd() < 0 || r.kind() == RegionKind::kAnonymous) continue;
    const off_t lo = static_cast<off_t>(r.fd_offset());
    const off_t hi = lo + static_cast<off_t>(r.size());
    uint64_t bytes = 0;
    bool unknown = false;  // the file cannot tell where its data is
    for (off_t at = lo; at < hi;) {
      off_t data = lseek(r.fd(), at, SEEK_DATA);
      if (data < 0 && errno == ESPIPE) {
        unknown = true;
        break;
      }
      if (data < 0 || data >= hi) break;  // ENXIO: no data after `at`
      off_t hole = lseek(r.fd(), data, SEEK_HOLE);
      if (hole < 0 || hole > hi) hole = hi;
      bytes += static_cast<uint64_t>(hole - data);
      at = hole;
    }
    if (bytes == 0 && !unknown) continue;
    if (fallocate(r.fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, lo, hi - lo) < 0) {
      return ErrnoStatus(
          absl::StrCat("region '", r.name(), "' ",
                       unknown ? "(a file that cannot tell whether it holds pages) may hold pages"
                               : absl::StrCat("already holds ", bytes, " bytes"),
                       " before post-copy started, and punching them out failed"));
    }
    stale_pages_dropped_ += bytes / r.page_size();
  }
  return absl::OkStatus();
}

// ---- Restart: continuing a dead engine's migration -------------------------------------------
//
// The VMM created the userfaultfd, registered guest RAM and handed faultline a copy of the fd
// (SCM_RIGHTS: another reference to the same open file). When the faultline process dies, only
// its references go: the userfaultfd context — registration, queued messages, sleeping faulting
// threads — lives on as long as the VMM keeps its fd (userfaultfd_release(), which unregisters
// everything and wakes every waiter so that the kernel resolves its fault with zero or page-
// cache contents, runs on the LAST close only; a VMM that closed its own copy would lose the
// guest here, which is why handoff.h requires it to keep the fd until "complete"). The VMM
// hands the same uffd to a new engine, which finds the dead one's page-state map in the state
// file (state_file.h; its lock guarantees no thread of the dead engine is still inside an
// ioctl). Per page state, what the dead engine may have done, and what we do:
//
//   kPresent     its placement ioctl succeeded (or said EEXIST) before the CAS to kPresent:
//                the page is mapped. Kept, never fetched again, so never overwritten.
//   kBulkRequested, kUrgentRequested
//                a request was sent; no byte of the answer was claimed (Claim → kPlacing comes
//                first). The request died with the connection: kAbsent, fetched again.
//   kPlacing, COPY kinds (anonymous, hugetlbfs, memfd registered MISSING only)
//                the bytes were in the dead process's staging buffer; UFFDIO_COPY may or may
//                not have run. kAbsent: fetched and UFFDIO_COPY'd again. If the first copy did
//                happen, the kernel refuses the second with EEXIST without writing the page
//                (mfill_atomic_pte(): the PTE is not none → -EEXIST; shmem: the index is
//                already in the page cache → -EEXIST; hugetlb: the huge PTE is not none →
//                -EEXIST), so whatever the guest wrote since stays; Placer takes EEXIST as
//                "present".
//   kPlacing, page-cache kinds (memfd registered MISSING|MINOR: checked bytes are written
//                into the page cache with pwritev — or through our alias mapping where the
//                fd takes no writes — then UFFDIO_CONTINUE maps them)
//                the bytes may be half written (the process died inside the write). CONTINUE
//                is only ever issued from kLanded (lander.cc), so the VMM's page table has no
//                entry for the page: a guest access raises a MINOR fault and waits. The guest
//                cannot have read or written it. kAbsent: fetched again and written again,
//                overwriting only our own partial bytes, then CONTINUE'd.
//   kLanded      (page-cache kinds) the bytes were complete in the page cache before the
//                state changed — or, for pages placed with UFFDIO_COPY (lander.cc: how memfd
//                pages go in unless the VMM's registration refuses COPY), the COPY was about to
//                run: then the cache holds either nothing (CONTINUE fails on the hole,
//                mfill_atomic_pte_continue(): no folio → -EFAULT, and the page is fetched again) or
//                the COPY's page, mapped (EEXIST below). CONTINUE may or may not have run.
//                UFFDIO_CONTINUE it, without a fetch (FaultLoop::ResolveLanded()): success means it
//                was not mapped and now is, with the complete bytes; EEXIST means it was mapped
//                (mfill_atomic_pte_continue(): the PTE is not none → -EEXIST) and the guest may
//                have written it since — left alone. Either way kPresent.
//   kDiscarded, kPlacingDiscarded
//                the guest dropped the page (REMOVE/UNMAP): kDiscarded. A fault on it is
//                resolved anew (zeros, or the page cache as it is), as in a live engine.
//
// Then the faults the dead engine had read: a faulting thread sleeps in handle_userfault()
// until a wake covers its address; read() moved its message from fault_pending_wqh to
// fault_wqh, and with the reader gone nothing will ever wake it — a vCPU hung for good.
// WakeAllAfterRestart() issues UFFDIO_WAKE over every region once: __wake_userfault() wakes
// matching waiters on BOTH queues (a still unread message is dropped with its waiter:
// userfaultfd_wake_function() list_del_init()s it). Each woken thread returns VM_FAULT_RETRY,
// the fault is retried, and if the page is still not mapped the kernel queues a fresh message
// for this engine; if it is mapped (e.g. placed with DONTWAKE by the dead engine, which died
// before its batch wake) the thread simply continues. A thread woken for nothing costs one
// retried fault, and no fault can be both lost and left asleep.
//
// Events the dead engine had read but not applied: a REMOVE (MADV_DONTNEED, hole punch) read
// between read() and FaultLoop::OnRemove() — microseconds on the fault-loop thread — is lost, and
// its pages stay kPresent in the map while the VMM's page table no longer maps them. A fault on
// such a page would be a "stale fault" forever: woken, faulting again. So an adopted engine
// resolves every fault on a kPresent page with Placer::FillHole() instead of a bare wake:
// UFFDIO_CONTINUE for a MINOR fault (maps the page cache as it is), a zero page for a MISSING
// one — exactly what the guest sees after a discard — and for a page that IS mapped (the
// common stale fault: placed between the fault and our read) the kernel answers EEXIST
// without touching it, and we wake the thread as before (FaultLoop::OnFault).
absl::Status Engine::Adopt() {
  AdoptedStates sum;
  for (uint32_t ri = 0; ri < table_->size(); ++ri) {
    RegionTable::Entry& e = (*table_)[ri];
    std::vector<uint64_t> landed;
    absl::StatusOr<AdoptedStates> a = e.state.AdoptAfterRestart(&landed);
    if (!a.ok()) {
      return absl::Status(a.status().code(),
                          absl::StrCat("region '", e.region->name(), "': ", a.status().message()));
    }
    if (!e.region->places_via_alias()) {
      // Landed by an engine that placed this region through the page cache, now placed by
      // COPY (the VMM registered it MISSING only): COPY says EEXIST where the page cache holds
      // the page, so fetching again is safe.
      for (uint64_t p : landed) e.state.Release(p);
      a->refetch += landed.size();
      a->landed -= landed.size();
    }
    sum.present += a->present;
    sum.discarded += a->discarded;
    sum.requeued += a->requeued;
    sum.refetch += a->refetch;
    sum.landed += a->landed;
  }
  adopted_ = true;
  adopted_states_ = sum;
  return absl::OkStatus();
}

void Engine::WakeAllAfterRestart() {
  for (size_t i = 0; i < table_->size(); ++i) {
    const GuestRegion& r = *(*table_)[i].region;
    (void)uffd_->Wake(r.base(), r.size());
  }
}

Engine::~Engine() {
  if (pull_) pull_->Stop();
  if (reconnector_) reconnector_->Join();
  if (registered_) UnregisterAll();
}

absl::Status Engine::RegisterAll() {
  for (size_t i = 0; i < table_->size(); ++i) {
    GuestRegion& r = *(*table_)[i].region;
    if (r.kind() == RegionKind::kMemfd && !uffd_->has(UFFD_FEATURE_MINOR_SHMEM)) {
      return absl::UnimplementedError(
          "memfd region needs UFFD_FEATURE_MINOR_SHMEM (Linux 5.14+); this kernel lacks it");
    }
    if (r.kind() == RegionKind::kHugetlb && !uffd_->has(UFFD_FEATURE_MISSING_HUGETLBFS)) {
      return absl::UnimplementedError("hugetlb region needs UFFD_FEATURE_MISSING_HUGETLBFS");
    }
    uint64_t ioctls = 0;
    // guest_memfd: no feature bit; the registration itself tells (EINVAL without support).
    absl::Status s = uffd_->Register(r.base(), r.size(), true, r.register_minor(), &ioctls);
    if (!s.ok() && r.kind() == RegionKind::kGuestMemfd) {
      UnregisterAll();
      return absl::UnimplementedError(absl::StrCat(
          "region '", r.name(), "': this kernel cannot register userfaultfd on guest_memfd (",
          s.message(),
          "). Stock Linux has no userfaultfd MISSING/MINOR support for "
          "guest_memfd; build and boot the patch series in kernel/ (see kernel/README.md)"));
    }
    if (!s.ok()) {
      UnregisterAll();
      return absl::Status(s.code(), absl::StrCat("region '", r.name(), "' (",
                                                 RegionKindName(r.kind()), "): ", s.message()));
    }
    const uint64_t need =
        (uint64_t{1} << _UFFDIO_WAKE) |
        (r.places_via_alias() ? (uint64_t{1} << _UFFDIO_CONTINUE) : (uint64_t{1} << _UFFDIO_COPY));
    registered_ = true;
    if ((ioctls & need) != need) {
      UnregisterAll();
      return absl::UnimplementedError(absl::StrCat(
          "region '", r.name(), "': the kernel registered it but offers ioctls 0x",
          absl::Hex(ioctls), " without the ones placement needs (0x", absl::Hex(need), ")"));
    }
  }
  return absl::OkStatus();
}

void Engine::UnregisterAll() {
  // Unregistering wakes every thread still waiting on the ranges; the kernel then resolves
  // their faults itself — correct only once every page is present (or discarded).
  for (size_t i = 0; i < table_->size(); ++i) {
    const GuestRegion& r = *(*table_)[i].region;
    (void)uffd_->Unregister(r.base(), r.size());
  }
  registered_ = false;
}

absl::Status Engine::Run(PageSource* source) {
  if (absl::Status s = table_->CheckSource(source->regions()); !s.ok()) return s;
  if (source->live() && !warmup_on()) {
    // Pulling a running guest's memory without rounds would leave every page it rewrites
    // stale here.
    return absl::FailedPreconditionError(
        "the source still runs its guest (it serves live memory for warm-up): this engine "
        "must warm up too (EngineOptions::warmup; the CLI's --warmup)");
  }
  if (!source->live() && warmup_on()) {
    // A frozen source: no page can change, so there is nothing to warm up — plain post-copy.
    // The WarmUp object stays (other threads may be reading warmup()); it is switched off.
    warmup_on_.store(false, std::memory_order_release);
    pull_->SetRate(0);
  }
  source_ = source;
  reconnector_->SetSource(source);
  running_.store(true);
  if (absl::Status s = source->Start(this); !s.ok()) {
    running_.store(false);
    return s;
  }
  if (opts_.background_pull && opts_.pull_start_delay > absl::ZeroDuration()) {
    pull_start_at_ns_ = FaultStats::NowNs() + absl::ToInt64Nanoseconds(opts_.pull_start_delay);
  }
  pull_->Start(source);
  if (warmup_on()) {
    warming_.store(true);
    warmup_->Start(
        source, [this] { faults_at_switch_.store(counters_.faults.load()); },
        [this] { Switched(); });
  }
  if (adopted_) WakeAllAfterRestart();  // the dead engine's read faults: see "Restart"
  CheckComplete();
  // This thread is the fault loop's until the loop ends, then the caller's again; a kernel
  // without custom slices (< 6.12) leaves it at the default, which only costs latency.
  // Named while it is the fault loop (top -H, perf); the caller's name comes back after. A
  // process's main thread keeps its name: that one is the process's own (ps, pgrep).
  char caller_name[16] = {};
  const bool rename = gettid() != getpid();
  if (rename) {
    pthread_getname_np(pthread_self(), caller_name, sizeof(caller_name));
    pthread_setname_np(pthread_self(), "fl-fault-loop");
  }
  const bool sliced =
      SetThreadSlice(opts_.fault_slice).ok() && opts_.fault_slice > absl::ZeroDuration();
  // Only ever raised (a lower nice value), so that giving the caller's back — a lower
  // priority — needs no privilege. Checked by whoever chose it (CheckNiceAllowed); if refused
  // anyway, the thread keeps its own.
  const absl::StatusOr<int> caller_nice = ThreadNice();
  const bool reniced = opts_.fault_nice != 0 && caller_nice.ok() &&
                       opts_.fault_nice < *caller_nice && SetThreadNice(opts_.fault_nice).ok();
  absl::Status status = loop_->Run(&stop_, [this] { OnTick(); });
  if (sliced) (void)ClearThreadSlice();
  if (reniced) (void)SetThreadNice(*caller_nice);
  if (rename) pthread_setname_np(pthread_self(), caller_name);
  running_.store(false);
  if (warmup_on()) warmup_->Join();
  pull_->Stop();
  reconnector_->Join();
  if (status.ok() && opts_.finish_source) {
    (void)source->Finish();  // every page is here: a source that vanished now costs nothing
  }
  source->Stop();
  if (status.ok() && registered_) UnregisterAll();
  return status;
}

void Engine::OnTick() {
  if (pull_start_at_ns_ != 0 && FaultStats::NowNs() >= pull_start_at_ns_) {
    pull_start_at_ns_ = 0;
    pull_->Enable();
  }
  CheckComplete();
}

void Engine::RequestUrgent(uint32_t region, uint64_t page) {
  counters_.urgent_requests.fetch_add(1, std::memory_order_relaxed);
  pull_->Hint(region, page);  // neighbours are likely next
  // A failed write means the connection is gone; its receive thread reports why (Failed),
  // and the reconnection asks again for every page still urgent-requested.
  (void)source_->RequestUrgent(region, page);
}

void Engine::Deliver(const PageRun& run) {
  if (absl::Status s = lander_->Deliver(run); !s.ok()) Fail(s);
  CheckComplete();
}

void Engine::Rejected(uint32_t region, uint64_t page, Urgency urgency) {
  counters_.corrupt_pages.fetch_add(1, std::memory_order_relaxed);
  PageStateMap& st = (*table_)[region].state;
  if (st.Get(page) == PageState::kUrgentRequested) {
    // A fault waits on it: ask again, urgently.
    counters_.urgent_requests.fetch_add(1, std::memory_order_relaxed);
    (void)source_->RequestUrgent(region, page);
  } else if (st.Unrequest(page)) {
    pull_->Kick();  // the background pull fetches it again
  }
}

void Engine::BulkDone(uint32_t lane) { pull_->BulkDone(lane); }

void Engine::Dirty(DirtySet set) {
  if (warmup_on()) warmup_->Dirty(std::move(set));
}

void Engine::Switched() {
  pull_->SetRate(0);  // post-copy: the link is the guest's now
  warming_.store(false, std::memory_order_release);
  CheckComplete();
}

void Engine::Failed(const SourceError& why) {
  if (!running_.load()) return;
  if (why.reconnectable() && reconnector_->Request(why)) return;
  Fail(why.status);
}

void Engine::StartBackgroundPull() { pull_->Enable(); }

void Engine::GuestRunning() { pull_->Release(); }

void Engine::Cancel() { stop_.Stop(absl::CancelledError("migration cancelled")); }

size_t Engine::footprint_bytes() const {
  size_t n = 0;
  for (size_t i = 0; i < table_->size(); ++i) n += (*table_)[i].state.memory_bytes();
  return n;
}

}  // namespace faultline
