#include "engine/engine.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"

namespace faultline {

Engine::Engine(Userfaultfd uffd, const EngineOptions& opts)
    : uffd_(std::move(uffd)), opts_(opts), wake_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::vector<GuestRegion*> regions,
                                                       Userfaultfd uffd, const EngineOptions& opts,
                                                       StateFile* state) {
  if (regions.empty()) return absl::InvalidArgumentError("no guest memory regions");
  if (state != nullptr) {
    bool same = state->regions() == regions.size();
    for (size_t i = 0; same && i < regions.size(); ++i) {
      same = state->region_pages(i) == regions[i]->pages();
    }
    if (!same) {
      return absl::InvalidArgumentError(
          absl::StrCat("state file ", state->path(), " does not match the regions' page counts"));
    }
  }
  if (opts.bulk_window == 0 || opts.bulk_batch_bytes == 0) {
    return absl::InvalidArgumentError("bulk window and batch size must be positive");
  }
  std::unique_ptr<Engine> e(new Engine(std::move(uffd), opts));
  e->pull_enabled_.store(opts.background_pull);
  if (!e->wake_fd_.valid()) return ErrnoStatus("eventfd");
  uint64_t key = 0;
  uint32_t max_ps = 0;
  for (size_t i = 0; i < regions.size(); ++i) {
    GuestRegion* r = regions[i];
    if (state != nullptr) {
      e->regions_.push_back(std::make_unique<RegionCtx>(r, &e->uffd_, &e->placer_counters_, key,
                                                        state->region_map(i)));
    } else {
      e->regions_.push_back(std::make_unique<RegionCtx>(r, &e->uffd_, &e->placer_counters_, key));
    }
    key += uint64_t{1} << 40;
    e->total_pages_ += r->pages();
    e->total_bytes_ += r->size();
    max_ps = std::max(max_ps, r->page_size());
  }
  for (Landing& l : e->landing_) {
    l.scratch.resize(max_ps);
    l.slots.resize(kMaxPagesPerFrame);
  }
  e->landing_[0].staging.resize(max_ps);
  e->landing_[1].staging.resize(std::max<size_t>(max_ps, opts.bulk_batch_bytes));
  if (opts.register_ranges) {
    if (absl::Status s = e->RegisterAll(); !s.ok()) return s;
  }
  if (state != nullptr && state->adopted()) {
    if (absl::Status s = e->Adopt(); !s.ok()) return s;
  }
  return e;
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
//   kPlacing, alias kinds (memfd registered MISSING|MINOR: bytes are read straight into
//                the page cache through our alias mapping, then UFFDIO_CONTINUE maps them)
//                the bytes may be half written (mid-read, or a CRC failure). CONTINUE is only
//                ever issued from kLanded (receiver.cc), so the VMM's page table has no entry
//                for the page: a guest access raises a MINOR fault and waits. The guest cannot
//                have read or written it. kAbsent: fetched again into the alias, overwriting
//                only our own partial bytes, then CONTINUE'd.
//   kLanded      (alias kinds) the bytes were complete in the page cache before the state
//                changed; CONTINUE may or may not have run. UFFDIO_CONTINUE it, without a
//                fetch (ResolveLanded(), fault_loop.cc): success means it was not mapped and
//                now is, with the complete bytes; EEXIST means it was mapped
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
// between read() and HandleRemove() — microseconds on the fault-loop thread — is lost, and its
// pages stay kPresent in the map while the VMM's page table no longer maps them. A fault on
// such a page would be a "stale fault" forever: woken, faulting again. So an adopted engine
// resolves every fault on a kPresent page with Placer::FillHole() instead of a bare wake:
// UFFDIO_CONTINUE for a MINOR fault (maps the page cache as it is), a zero page for a MISSING
// one — exactly what the guest sees after a discard — and for a page that IS mapped (the
// common stale fault: placed between the fault and our read) the kernel answers EEXIST
// without touching it, and we wake the thread as before (fault_loop.cc).
absl::Status Engine::Adopt() {
  AdoptedStates sum;
  for (uint32_t ri = 0; ri < regions_.size(); ++ri) {
    RegionCtx& rc = *regions_[ri];
    std::vector<uint64_t> landed;
    absl::StatusOr<AdoptedStates> a = rc.state.AdoptAfterRestart(&landed);
    if (!a.ok()) {
      return absl::Status(a.status().code(),
                          absl::StrCat("region '", rc.region->name(), "': ", a.status().message()));
    }
    if (!rc.region->places_via_alias()) {
      // Landed by an engine that placed this region through an alias, now placed by COPY
      // (the VMM registered it MISSING only): COPY says EEXIST where the page cache holds the
      // page, so fetching again is safe.
      for (uint64_t p : landed) rc.state.Release(p);
      a->refetch += landed.size();
      a->landed -= landed.size();
      landed.clear();
    }
    for (uint64_t p : landed) landed_.emplace_back(ri, p);
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
  for (auto& rc : regions_) (void)uffd_.Wake(rc->region->base(), rc->region->size());
}

Engine::~Engine() {
  if (registered_) UnregisterAll();
}

absl::Status Engine::RegisterAll() {
  for (auto& rc : regions_) {
    GuestRegion& r = *rc->region;
    if (r.kind() == RegionKind::kMemfd && !uffd_.has(UFFD_FEATURE_MINOR_SHMEM)) {
      return absl::UnimplementedError(
          "memfd region needs UFFD_FEATURE_MINOR_SHMEM (Linux 5.14+); this kernel lacks it");
    }
    if (r.kind() == RegionKind::kHugetlb && !uffd_.has(UFFD_FEATURE_MISSING_HUGETLBFS)) {
      return absl::UnimplementedError("hugetlb region needs UFFD_FEATURE_MISSING_HUGETLBFS");
    }
    uint64_t ioctls = 0;
    absl::Status s =
        r.kind() == RegionKind::kGuestMemfd && !uffd_.has(UFFD_FEATURE_GUEST_MEMFD)
            ? absl::UnimplementedError("the kernel lacks UFFD_FEATURE_GUEST_MEMFD")
            : uffd_.Register(r.base(), r.size(), true, r.register_minor(), &ioctls);
    if (!s.ok() && r.kind() == RegionKind::kGuestMemfd) {
      UnregisterAll();
      return absl::UnimplementedError(absl::StrCat(
          "region '", r.name(), "': this kernel cannot register userfaultfd on guest_memfd (",
          s.message(), "). Stock Linux has no userfaultfd MISSING/MINOR support for "
          "guest_memfd; build and boot the patch series in kernel/ (see kernel/README.md)"));
    }
    if (!s.ok()) {
      UnregisterAll();
      return absl::Status(s.code(), absl::StrCat("region '", r.name(), "' (",
                                                 RegionKindName(r.kind()), "): ", s.message()));
    }
    const uint64_t need = (uint64_t{1} << _UFFDIO_WAKE) |
                          (r.places_via_alias() ? (uint64_t{1} << _UFFDIO_CONTINUE)
                                                : (uint64_t{1} << _UFFDIO_COPY));
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
  for (auto& rc : regions_) (void)uffd_.Unregister(rc->region->base(), rc->region->size());
  registered_ = false;
}

absl::Status Engine::CheckSourceTable(const std::vector<RegionInfo>& table) const {
  if (table.size() != regions_.size()) {
    return absl::FailedPreconditionError(absl::StrCat("the source has ", table.size(),
                                                      " memory regions, this side ",
                                                      regions_.size()));
  }
  for (size_t i = 0; i < table.size(); ++i) {
    const GuestRegion& r = *regions_[i]->region;
    if (table[i].size != r.size() || table[i].page_size != r.page_size()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "region ", i, " differs: source '", table[i].name, "' ", table[i].size, " bytes in ",
          table[i].page_size, "-byte pages, destination '", r.name(), "' ", r.size(),
          " bytes in ", r.page_size(), "-byte pages"));
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::Run(PageSource* source) {
  if (absl::Status s = CheckSourceTable(source->regions()); !s.ok()) return s;
  source_ = source;
  if (absl::Status s = source->Start(this); !s.ok()) return s;
  if (opts_.pull_start_delay > absl::ZeroDuration() && pull_enabled_.load()) {
    pull_enabled_.store(false);
    pull_start_at_ns_ = FaultStats::NowNs() + absl::ToInt64Nanoseconds(opts_.pull_start_delay);
  }
  PullMore();
  if (adopted_) WakeAllAfterRestart();  // the dead engine's read faults: see "Restart"
  absl::Status status = FaultLoop();
  JoinReconnect();
  if (status.ok() && opts_.finish_source) {
    absl::Status fin = source->Finish();
    (void)fin;  // every page is here: a source that vanished now costs nothing
  }
  source->Stop();
  if (status.ok() && registered_) UnregisterAll();
  return status;
}

void Engine::StartBackgroundPull() {
  pull_enabled_.store(true);
  Signal();  // the fault loop's next tick calls PullMore()
}

void Engine::Cancel() {
  cancelled_.store(true);
  Signal();
}

uint64_t Engine::remaining_pages() const {
  uint64_t n = 0;
  for (const auto& rc : regions_) n += rc->state.remaining();
  return n;
}

size_t Engine::footprint_bytes() const {
  size_t n = 0;
  for (const auto& rc : regions_) n += rc->state.memory_bytes();
  for (const Landing& l : landing_) n += l.staging.size() + l.scratch.size() + l.slots.size();
  return n;
}

void Engine::Signal() {
  uint64_t one = 1;
  (void)!write(wake_fd_.get(), &one, sizeof(one));
}

void Engine::Fail(const absl::Status& s) {
  {
    std::lock_guard<std::mutex> l(fail_mu_);
    if (failure_.ok()) failure_ = s;
  }
  failed_.store(true);
  Signal();
}

void Engine::FailSecondary(const absl::Status& s) {
  if (Reconnectable(s)) {
    RequestReconnect(s);
    return;
  }
  std::lock_guard<std::mutex> l(fail_mu_);
  if (secondary_failure_.ok()) {
    secondary_failure_ = s;
    secondary_at_ns_.store(FaultStats::NowNs());
  }
}

void Engine::PageDone() {
  if (remaining_pages() == 0 && !complete_.exchange(true)) Signal();
}

}  // namespace faultline
