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
                                                       Userfaultfd uffd,
                                                       const EngineOptions& opts) {
  if (regions.empty()) return absl::InvalidArgumentError("no guest memory regions");
  if (opts.bulk_window == 0 || opts.bulk_batch_bytes == 0) {
    return absl::InvalidArgumentError("bulk window and batch size must be positive");
  }
  std::unique_ptr<Engine> e(new Engine(std::move(uffd), opts));
  e->pull_enabled_.store(opts.background_pull);
  if (!e->wake_fd_.valid()) return ErrnoStatus("eventfd");
  uint64_t key = 0;
  uint32_t max_ps = 0;
  for (GuestRegion* r : regions) {
    e->regions_.push_back(
        std::make_unique<RegionCtx>(r, &e->uffd_, &e->placer_counters_, key));
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
  return e;
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
    absl::Status s = uffd_.Register(r.base(), r.size(), true, r.register_minor(), &ioctls);
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
