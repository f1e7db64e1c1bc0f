// faultline dest: the destination of a two-host migration with a thread guest: creates memory
// matching the source's regions, runs the guest on it while post-copy fills it, then verifies
// every page by CRC32C against the source.
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/time/clock.h"
#include "cli/common.h"
#include "cli/setup.h"
#include "engine/engine.h"
#include "engine/region.h"
#include "workload/thread_guest.h"

namespace faultline {

int RunDest() {
  absl::StatusOr<MemoryKind> kind = ParseMemoryKind(absl::GetFlag(FLAGS_kind));
  if (!kind.ok()) return Fail(kind.status());
  absl::StatusOr<GuestOptions> guest = GuestOptionsFromFlags();
  if (!guest.ok()) return Fail(guest.status());
  absl::StatusOr<BulkThreads> bulk = BulkThreadsFromFlags();
  if (!bulk.ok()) return Fail(bulk.status());
  absl::StatusOr<TcpSourceOptions> opts = SourceOptionsFromFlags(*bulk);
  if (!opts.ok()) return Fail(opts.status());
  const TcpSourceOptions& topts = *opts;
  absl::StatusOr<std::unique_ptr<PageSource>> source = ConnectSource(topts);
  if (!source.ok()) return Fail(source.status());
  // Destination memory matching the source's regions.
  absl::StatusOr<EngineOptions> engine_opts = EngineOptionsFromFlags(*bulk);
  if (!engine_opts.ok()) return Fail(engine_opts.status());
  EngineOptions eo = *engine_opts;
  eo.finish_source = false;
  absl::StatusOr<Destination> dest = CreateDestination((*source)->regions(), *kind, eo);
  if (!dest.ok()) return Fail(dest.status());
  const std::vector<GuestRegion*> regions = dest->region_ptrs();
  const uint64_t total = dest->bytes();
  std::unique_ptr<Engine>& engine = dest->engine;
  std::vector<std::unique_ptr<ThreadGuest>> guests;
  if (!guest->threads.empty()) {
    for (GuestRegion* r : regions) {
      guests.push_back(std::make_unique<ThreadGuest>(r->base(), r->size(), r->page_size(), *guest));
    }
  }
  std::atomic<bool> running{true};
  std::thread progress([&] {
    while (running.load() && absl::GetFlag(FLAGS_progress)) {
      ProgressBar(total - engine->remaining_pages() * 4096, total);
      usleep(100000);
    }
  });
  const absl::Time t0 = absl::Now();
  absl::Status s = engine->Run(source->get());
  running.store(false);
  progress.join();
  if (!s.ok()) return Fail(s);
  for (auto& g : guests) g->Join();
  const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
  std::vector<const uint8_t*> bases;
  for (GuestRegion* r : regions) bases.push_back(r->base());
  uint64_t verified = 0;
  absl::StatusOr<uint64_t> bad = VerifyAgainstSource(topts, bases, &verified, true);
  if (!bad.ok()) return Fail(bad.status());
  const EngineCounters& c = engine->counters();
  LatencyHistogram h = engine->fault_stats().Overall();
  std::printf(
      "pages urgent/bulk/zero %llu/%llu/%llu, %.3f s, fault latency %s\n"
      "verified %llu pages, %llu mismatches\n",
      (unsigned long long)c.urgent_pages.load(), (unsigned long long)c.bulk_pages.load(),
      (unsigned long long)c.zero_pages.load(), secs, h.Summary().c_str(),
      (unsigned long long)verified, (unsigned long long)*bad);
  return *bad == 0 ? 0 : 1;
}

}  // namespace faultline
