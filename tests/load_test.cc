// Load: a large guest (4 GiB by default) migrated while two guest threads fault at random for
// the whole migration and the background pull runs at full speed; then every page is verified
// against the source, page for page by CRC32C. Tagged manual (too big for every `bazel test`):
// tools/long_suite.sh runs it plain, under --config=asan and under --config=tsan.
//
//   FAULTLINE_LOAD_SIZE  guest size, e.g. 4G (default), 1G, 512M
//   FAULTLINE_LOAD_KIND  memfd (default) or anon
//
// Memory: the source (a memfd) and the destination are `size` each. Under TSan, bytes that
// instrumented code touches get 2x shadow — the page server reads all of the source, and with
// memfd the receiver writes all of the destination through the alias — so tools/long_suite.sh
// runs TSan on anonymous destination memory (received into a staging buffer, placed by the
// kernel) and lets TSan bound its shadow (memory_limit_mb). Verification reads guest memory in
// uninstrumented code for the same reason.
#include <linux/memfd.h>
#include <nmmintrin.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/errno_status.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/testing/test_dest.h"
#include "transport/page_server.h"
#include "transport/socket.h"
#include "transport/tcp_page_source.h"
#include "workload/pattern.h"
#include "workload/thread_guest.h"

namespace faultline {
namespace {

uint64_t SizeFromEnv() {
  const char* v = getenv("FAULTLINE_LOAD_SIZE");
  std::string s = v && *v ? v : "4G";
  uint64_t mult = 1;
  switch (s.back()) {
    case 'G':
    case 'g':
      mult = 1ull << 30;
      s.pop_back();
      break;
    case 'M':
    case 'm':
      mult = 1ull << 20;
      s.pop_back();
      break;
    default:
      break;
  }
  uint64_t n = 0;
  return absl::SimpleAtoi(s, &n) ? n * mult : 0;
}

uint64_t PeakRssMiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) / 1024;
  }
  return 0;
}

// CRC32C of one page, in code no sanitizer instruments: reading gigabytes of guest memory
// through TSan would give it gigabytes of shadow.
__attribute__((no_sanitize("address", "thread"))) uint32_t RawCrc(const uint8_t* p) {
  uint64_t crc = ~0u;
  for (size_t i = 0; i < 4096; i += 8) {
    uint64_t w;
    __builtin_memcpy(&w, p + i, 8);
    crc = _mm_crc32_u64(crc, w);
  }
  return static_cast<uint32_t>(~crc);
}

// The source: a memfd filled page by page with pwrite (the kernel copies; no instrumented
// code touches the whole of it) and a real page server on loopback.
class LoadSource {
 public:
  absl::Status Start(uint64_t size) {
    size_ = size;
    fd_.reset(memfd_create("load-source", MFD_CLOEXEC));
    if (!fd_.valid()) return ErrnoStatus("memfd_create");
    if (ftruncate(fd_.get(), static_cast<off_t>(size)) != 0) return ErrnoStatus("ftruncate");
    std::vector<uint8_t> chunk(1 << 20);
    for (uint64_t off = 0; off < size; off += chunk.size()) {
      for (size_t i = 0; i < chunk.size(); i += 4096) {
        FillPatternPage(PatternSpec{}, (off + i) / 4096, chunk.data() + i);
      }
      if (pwrite(fd_.get(), chunk.data(), chunk.size(), static_cast<off_t>(off)) !=
          static_cast<ssize_t>(chunk.size())) {
        return ErrnoStatus("pwrite source");
      }
    }
    absl::StatusOr<SourceRegion> r = SourceRegion::MapFd("ram", fd_.get(), 0, size, 4096);
    if (!r.ok()) return r.status();
    std::vector<SourceRegion> regions;
    regions.push_back(std::move(*r));
    token_ = RandomToken();
    server_ = std::make_unique<PageServer>(std::move(regions), token_);
    absl::StatusOr<UniqueFd> l = ListenTcp("127.0.0.1:0");
    if (!l.ok()) return l.status();
    listen_ = std::move(*l);
    absl::StatusOr<int> port = BoundPort(listen_.get());
    if (!port.ok()) return port.status();
    port_ = *port;
    thread_ = std::thread([this] { (void)server_->Serve(listen_.get()); });
    return absl::OkStatus();
  }
  ~LoadSource() {
    if (server_) server_->Shutdown();
    if (thread_.joinable()) thread_.join();
  }
  TcpSourceOptions options() const {
    TcpSourceOptions o;
    o.address = absl::StrCat("127.0.0.1:", port_);
    o.token = token_;
    return o;
  }

 private:
  uint64_t size_ = 0;
  UniqueFd fd_, listen_;
  Token token_{};
  int port_ = 0;
  std::unique_ptr<PageServer> server_;
  std::thread thread_;
};

TEST(Load, TwoThreadsFaultAtRandomWhileTheBulkPullRunsAtFullSpeed) {
  const uint64_t size = SizeFromEnv();
  ASSERT_GT(size, 0u) << "bad FAULTLINE_LOAD_SIZE";
  const char* k = getenv("FAULTLINE_LOAD_KIND");
  absl::StatusOr<RegionKind> kind = ParseRegionKind(k && *k ? k : "memfd");
  ASSERT_TRUE(kind.ok()) << kind.status();
  const uint64_t pages = size / 4096;
  const absl::Time t_fill = absl::Now();
  LoadSource src;
  ASSERT_TRUE(src.Start(size).ok());
  std::printf("load: %llu MiB %s guest; source filled in %.1f s\n",
              static_cast<unsigned long long>(size >> 20), RegionKindName(*kind),
              absl::ToDoubleSeconds(absl::Now() - t_fill));
  absl::StatusOr<Dest> d = MakeDest(*kind, size, src.options());
  ASSERT_TRUE(d.ok()) << d.status();

  // Two guest threads touching uniformly random pages until every page is present: early on
  // nearly every touch faults; they keep faulting on whatever is still missing to the end.
  GuestOptions go;
  go.threads = {AccessPattern::kRandom, AccessPattern::kRandom};
  go.touches_per_thread = uint64_t{1} << 40;
  ThreadGuest guest(d->region->base(), size, 4096, go);
  const absl::Time t0 = absl::Now();
  absl::Status run = d->engine->Run(d->source.get());
  const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
  guest.Stop();
  guest.Join();
  ASSERT_TRUE(run.ok()) << run;

  const EngineCounters& c = d->engine->counters();
  LatencyHistogram h = d->engine->fault_stats().Overall();
  std::printf(
      "load: %.1f s (%.0f MiB/s), faults %llu (urgent pages %llu, bulk %llu, zero "
      "%llu), guest touches %llu, fault latency %s\n",
      secs, (size >> 20) / secs, static_cast<unsigned long long>(c.faults.load()),
      static_cast<unsigned long long>(c.urgent_pages.load()),
      static_cast<unsigned long long>(c.bulk_pages.load()),
      static_cast<unsigned long long>(c.zero_pages.load()),
      static_cast<unsigned long long>(guest.touches()), h.Summary().c_str());
  EXPECT_EQ(c.urgent_pages + c.bulk_pages + c.zero_pages, pages);  // each page placed once
  EXPECT_GT(c.faults.load(), 100u);                                // the guest did fault all along

  // Every page, against what the source holds (the pattern, regenerated page by page).
  d->engine.reset();  // unregisters
  std::vector<uint8_t> want(4096);
  uint64_t bad = 0;
  const uint8_t* base = d->region->base();
  for (uint64_t p = 0; p < pages; ++p) {
    FillPatternPage(PatternSpec{}, p, want.data());
    if (RawCrc(base + p * 4096) != RawCrc(want.data())) {
      if (bad < 5) ADD_FAILURE() << "page " << p << " differs from the source";
      ++bad;
    }
  }
  std::printf("load: verified %llu pages, %llu mismatches; peak RSS %llu MiB\n",
              static_cast<unsigned long long>(pages), static_cast<unsigned long long>(bad),
              static_cast<unsigned long long>(PeakRssMiB()));
  EXPECT_EQ(bad, 0u);
}

}  // namespace
}  // namespace faultline
