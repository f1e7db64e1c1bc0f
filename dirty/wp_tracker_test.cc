#include "dirty/wp_tracker.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace faultline {
namespace {

constexpr uint64_t kPages = 1024;

struct Memfd {
  Memfd() {
    fd = memfd_create("wp-tracker-test", MFD_CLOEXEC);
    EXPECT_EQ(ftruncate(fd, kPages * 4096), 0);
    base = static_cast<uint8_t*>(
        mmap(nullptr, kPages * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  }
  ~Memfd() {
    munmap(base, kPages * 4096);
    close(fd);
  }
  int fd;
  uint8_t* base;
};

std::set<uint64_t> Pages(const std::vector<PageRange>& ranges) {
  std::set<uint64_t> s;
  for (const PageRange& r : ranges) {
    EXPECT_EQ(r.region, 0u);
    for (uint64_t p = r.first; p < r.first + r.count; ++p) s.insert(p);
  }
  return s;
}

TEST(WpDirtyTracker, ReportsExactlyThePagesWrittenSinceTheLastCollect) {
  Memfd m;
  for (uint64_t p = 0; p < kPages; p += 2) m.base[p * 4096] = 1;  // before tracking: not reported
  bool stopped = false;
  absl::StatusOr<std::unique_ptr<WpDirtyTracker>> t =
      WpDirtyTracker::Create({{m.base, kPages * 4096, 4096}}, [&] { stopped = true; });
  if (absl::IsUnimplemented(t.status())) GTEST_SKIP() << t.status();
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<PageRange> out;
  ASSERT_TRUE((*t)->Collect(false, &out).ok());
  EXPECT_TRUE(out.empty());
  m.base[3 * 4096 + 17] = 9;  // never touched before
  m.base[4 * 4096] = 9;       // touched before tracking
  m.base[1000 * 4096 + 1] = 9;
  (void)*static_cast<volatile uint8_t*>(m.base + 500 * 4096);  // a read is no write
  ASSERT_TRUE((*t)->Collect(false, &out).ok());
  EXPECT_EQ(Pages(out), (std::set<uint64_t>{3, 4, 1000}));
  out.clear();
  ASSERT_TRUE((*t)->Collect(false, &out).ok());
  EXPECT_TRUE(out.empty());
  m.base[5 * 4096] = 1;
  EXPECT_FALSE(stopped);
  ASSERT_TRUE((*t)->Collect(true, &out).ok());
  EXPECT_TRUE(stopped);
  EXPECT_EQ(Pages(out), (std::set<uint64_t>{5}));
}

TEST(WpDirtyTracker, NoWriteIsLostWhileAWriterRuns) {
  Memfd m;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> written_after{0};
  std::thread writer;
  // The contract: the final Collect's stop_writers returns only once no writer can write any
  // more. Setting the flag alone is not that — a writer past its check still writes after the
  // final scan (seen under TSan, where the window is wide).
  auto stop_writer = [&] {
    stop = true;
    if (writer.joinable()) writer.join();
  };
  absl::StatusOr<std::unique_ptr<WpDirtyTracker>> t =
      WpDirtyTracker::Create({{m.base, kPages * 4096, 4096}}, stop_writer);
  if (absl::IsUnimplemented(t.status())) GTEST_SKIP() << t.status();
  ASSERT_TRUE(t.ok()) << t.status();
  // The writer records, per page, the generation it last wrote; a collection that ends after a
  // write must report that page in it or a later one.
  std::vector<std::atomic<uint64_t>> last_write(kPages);
  writer = std::thread([&] {
    uint64_t x = 88172645463325252ull, gen = 0;
    while (!stop.load()) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      const uint64_t p = x % kPages;
      ++gen;
      *reinterpret_cast<volatile uint64_t*>(m.base + p * 4096 + 8) = gen;
      last_write[p].store(gen);
      written_after.fetch_add(1);
    }
  });
  struct JoinOnExit {  // a failed ASSERT below must not leave the writer running
    decltype(stop_writer)& stop;
    ~JoinOnExit() { stop(); }
  } join_on_exit{stop_writer};
  std::set<uint64_t> reported;
  std::vector<PageRange> out;
  for (int round = 0; round < 50; ++round) {
    out.clear();
    ASSERT_TRUE((*t)->Collect(false, &out).ok());
    for (uint64_t p : Pages(out)) reported.insert(p);
    usleep(200);
  }
  out.clear();
  ASSERT_TRUE((*t)->Collect(true, &out).ok());  // stops (joins) the writer first
  ASSERT_FALSE(writer.joinable());
  for (uint64_t p : Pages(out)) reported.insert(p);
  ASSERT_GT(written_after.load(), 0u);
  for (uint64_t p = 0; p < kPages; ++p) {
    if (last_write[p].load() != 0) EXPECT_TRUE(reported.count(p)) << "page " << p;
  }
}

}  // namespace
}  // namespace faultline
