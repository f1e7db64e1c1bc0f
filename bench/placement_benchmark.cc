// Placement: what it costs to put a run of received pages into fresh destination memory, each
// way a region kind allows, per 4 KiB page, on the machine it runs on (page faults cost very
// different amounts on machines of the same kind: measure, then choose). Every way ends with
// the pages mapped in a userfaultfd-registered range, as the guest needs them, and is checked.
//
//   alias+CONTINUE     memcpy into an alias mapping (a page fault allocates and zeroes each
//                      page, then the copy overwrites it), then UFFDIO_CONTINUE per run — what
//                      the engine did until 2026-12
//   pwrite+CONTINUE    pwritev() of the run into the memfd (the page cache is filled without
//                      faults or zeroing), then UFFDIO_CONTINUE per run — the memfd bulk path now
//   COPY               UFFDIO_COPY per run (shmem: allocate without zeroing, copy, map)
//   anon COPY          UFFDIO_COPY per run into anonymous memory (the anon path)
//   zero: pwrite zeros+CONTINUE / ZEROPAGE   a run of zero pages, memfd
//
// Arg: pages per run (1, 16, 64, 256). The source run is a cache-hot buffer, as a transport's
// receive buffer is. Counters: ns_per_page (wall), and the region size each iteration fills.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "base/clock.h"
#include "benchmark/benchmark.h"
#include "engine/uffd.h"

namespace faultline {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kRegion = 128u << 20;  // filled once per iteration
enum Way { kAliasContinue, kPwriteContinue, kShmemCopy, kAnonCopy, kZeroPwrite, kZeroPage };

void BM_Place(benchmark::State& state) {
  const Way way = static_cast<Way>(state.range(0));
  const size_t run = static_cast<size_t>(state.range(1));
  std::vector<uint8_t> src(run * kPage);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7 + 1);
  std::vector<uint8_t> zeros(run * kPage, 0);
  const bool zero = way == kZeroPwrite || way == kZeroPage;
  uint64_t ns = 0, pages = 0, bad = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const bool anon = way == kAnonCopy;
    int fd = anon ? -1 : memfd_create("place", MFD_CLOEXEC);
    if (!anon && ftruncate(fd, kRegion) != 0) {
      state.SkipWithError("memfd");
      return;
    }
    auto* base =
        static_cast<uint8_t*>(mmap(nullptr, kRegion, PROT_READ | PROT_WRITE,
                                   anon ? (MAP_PRIVATE | MAP_ANONYMOUS) : MAP_SHARED, fd, 0));
    uint8_t* alias = anon ? nullptr
                          : static_cast<uint8_t*>(
                                mmap(nullptr, kRegion, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    absl::StatusOr<Userfaultfd> u =
        Userfaultfd::Open(UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM);
    if (!u.ok() || base == MAP_FAILED ||
        !u->Register(base, kRegion, true, !anon && way != kShmemCopy && way != kZeroPage).ok()) {
      state.SkipWithError("userfaultfd set-up (root?)");
      return;
    }
    state.ResumeTiming();
    const uint64_t t0 = MonotonicNowNs();
    for (size_t off = 0; off < kRegion; off += run * kPage) {
      const size_t len = run * kPage;
      absl::Status s;
      switch (way) {
        case kAliasContinue:
          memcpy(alias + off, src.data(), len);
          s = u->Continue(base + off, len, /*wake=*/false);
          break;
        case kPwriteContinue: {
          struct iovec iov = {src.data(), len};
          if (pwritev(fd, &iov, 1, static_cast<off_t>(off)) != static_cast<ssize_t>(len)) {
            s = absl::InternalError("pwritev");
          } else {
            s = u->Continue(base + off, len, false);
          }
          break;
        }
        case kShmemCopy:
        case kAnonCopy: s = u->Copy(base + off, src.data(), len, false); break;
        case kZeroPwrite: {
          struct iovec iov = {zeros.data(), len};
          if (pwritev(fd, &iov, 1, static_cast<off_t>(off)) != static_cast<ssize_t>(len)) {
            s = absl::InternalError("pwritev");
          } else {
            s = u->Continue(base + off, len, false);
          }
          break;
        }
        case kZeroPage: s = u->ZeroPage(base + off, len, false); break;
      }
      if (!s.ok()) {
        state.SkipWithError(std::string(s.message()).c_str());
        return;
      }
    }
    ns += MonotonicNowNs() - t0;
    pages += kRegion / kPage;
    state.PauseTiming();
    // The guest's view: every page mapped with the right bytes (a sample of each run).
    for (size_t off = 0; off < kRegion; off += run * kPage) {
      const uint8_t* want = zero ? zeros.data() : src.data();
      if (memcmp(base + off, want, 64) != 0) ++bad;
    }
    (void)u->Unregister(base, kRegion);
    munmap(base, kRegion);
    if (alias) munmap(alias, kRegion);
    if (fd >= 0) close(fd);
    state.ResumeTiming();
  }
  state.counters["ns_per_page"] = static_cast<double>(ns) / static_cast<double>(pages);
  state.counters["MBps"] = static_cast<double>(pages * kPage) * 1e3 / static_cast<double>(ns);
  state.counters["bad"] = static_cast<double>(bad);
  static const char* kNames[] = {"memfd alias write+CONTINUE",  "memfd pwrite+CONTINUE",
                                 "memfd UFFDIO_COPY",           "anon UFFDIO_COPY",
                                 "memfd zero: pwrite+CONTINUE", "memfd zero: ZEROPAGE"};
  state.SetLabel(std::string(kNames[way]) + ", " + std::to_string(run) + " pages per run");
}
BENCHMARK(BM_Place)
    ->ArgsProduct({{kAliasContinue, kPwriteContinue, kShmemCopy, kAnonCopy, kZeroPwrite, kZeroPage},
                   {1, 16, 64, 256}})
    ->Iterations(3)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace faultline

BENCHMARK_MAIN();
