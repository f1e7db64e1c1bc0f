#include "tests/testing/thread_vmm.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/uffd.h"
#include "qemu-integration/handoff/handoff.h"

namespace faultline {

absl::StatusOr<ThreadVmmResult> RunThreadVmm(const ThreadVmmOptions& o) {
  absl::StatusOr<std::unique_ptr<GuestRegion>> ram = GuestRegion::Create("ram", o.kind, o.size);
  if (!ram.ok()) return ram.status();
  absl::StatusOr<Userfaultfd> uffd = Userfaultfd::Open();
  if (!uffd.ok()) return uffd.status();
  GuestRegion& r = **ram;
  const bool memfd = o.kind == RegionKind::kMemfd;
  if (absl::Status s = uffd->Register(r.base(), o.size, true, memfd); !s.ok()) return s;
  HandoffClientRegion region{"ram",
                             reinterpret_cast<uint64_t>(r.base()),
                             o.size,
                             4096,
                             memfd ? MemoryKind::kMemfd : MemoryKind::kAnonymous,
                             memfd ? r.fd() : -1,
                             0};
  const absl::Time t0 = absl::Now();
  absl::StatusOr<std::unique_ptr<HandoffClient>> client =
      HandoffClient::Connect(o.socket, uffd->fd(), uffd->features(), {region}, o.timeout,
                             "thread-vmm", /*resume=*/false, o.migration);
  if (!client.ok()) {
    (void)uffd->Unregister(r.base(), o.size);
    return client.status();
  }
  // Acknowledged: the guest runs while its memory arrives.
  GuestOptions go = o.guest;
  if (go.threads.empty()) {
    go.threads = {AccessPattern::kSequential, AccessPattern::kRandom, AccessPattern::kHotSet};
  }
  ThreadGuest guest(r.base(), o.size, 4096, go);
  absl::StatusOr<nlohmann::json> complete = (*client)->WaitComplete(o.timeout);
  ThreadVmmResult res;
  res.seconds = absl::ToDoubleSeconds(absl::Now() - t0);
  if (!complete.ok()) {
    guest.Stop();  // its faults stay unresolved only while registered: take the memory back
    (void)uffd->Unregister(r.base(), o.size);
    guest.Join();
    return complete.status();
  }
  guest.Join();
  (void)(*client)->Bye();
  (void)uffd->Unregister(r.base(), o.size);
  res.stats = *complete;
  res.guest_latency = guest.SlowTouches();
  std::vector<uint8_t> want(4096);
  for (uint64_t p = 0; p < o.size / 4096; ++p) {
    FillPatternPage(o.pattern, p, want.data());
    ++res.verified_pages;
    if (memcmp(r.page(p), want.data(), 4096) != 0) ++res.mismatches;
  }
  return res;
}

}  // namespace faultline
