// The hand-off path end to end: a VMM (this test, with its own guest memory and userfaultfd)
// hands its memory to faultline over the Unix socket — faultline's format and Firecracker's —
// and faultline serves the VMM's faults from a real page server. Memory verified page by page.
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cli/handoff_run.h"
#include "engine/region.h"
#include "engine/uffd.h"
#include "gtest/gtest.h"
#include "qemu-integration/handoff/handoff.h"
#include "tests/testing/test_source.h"
#include "workload/thread_guest.h"

namespace faultline {
namespace {

constexpr uint64_t kSize = 16u << 20;

std::string SocketPath(const char* name) {
  // $TEST_TMPDIR is deeper than a Unix socket path may be (108 bytes).
  return absl::StrCat("/tmp/faultline-test-", name, "-", getpid(), ".sock");
}

// faultline's side, on a thread: accept one VMM, serve it from `src` (with `tweak`'s changes to
// the run's options, when given).
class FaultlineSide {
 public:
  FaultlineSide(const std::string& path, TestSource* src,
                std::function<void(HandoffRunOptions&)> tweak = nullptr) {
    auto server = HandoffServer::Listen(path);
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    thread_ = std::thread([this, src, tweak = std::move(tweak)] {
      auto session = server_->Accept(absl::Seconds(20), getuid());
      if (!session.ok()) {
        status_ = session.status();
        return;
      }
      HandoffRunOptions ho;
      ho.source = src->options();
      if (tweak) tweak(ho);
      status_ = RunHandoff(**session, ho, &stats_);
    });
  }
  absl::Status Join() {
    thread_.join();
    return status_;
  }
  const nlohmann::json& stats() const { return stats_; }

 private:
  std::unique_ptr<HandoffServer> server_;
  std::thread thread_;
  absl::Status status_;
  nlohmann::json stats_;
};

// A faultline-format VMM with memfd RAM migrates, every page verified (`tweak` changes the
// run's options).
void MigrateMemfdVmm(std::function<void(HandoffRunOptions&)> tweak = nullptr) {
  auto src = TestSource::Start(kSize, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  const std::string path = SocketPath("fl");
  FaultlineSide faultline(path, src->get(), std::move(tweak));
  // The VMM: memfd RAM registered MISSING|MINOR with its own userfaultfd.
  auto ram = GuestRegion::Create("ram", RegionKind::kMemfd, kSize);
  ASSERT_TRUE(ram.ok());
  auto uffd = Userfaultfd::Open();
  ASSERT_TRUE(uffd.ok());
  ASSERT_TRUE(uffd->Register((*ram)->base(), kSize, true, true).ok());
  HandoffClientRegion region{"pc.ram",
                             reinterpret_cast<uint64_t>((*ram)->base()),
                             kSize,
                             4096,
                             MemoryKind::kMemfd,
                             (*ram)->fd(),
                             0};
  auto client =
      HandoffClient::Connect(path, uffd->fd(), uffd->features(), {region}, absl::Seconds(20));
  ASSERT_TRUE(client.ok()) << client.status();
  // Acknowledged: the guest may run now.
  GuestOptions go;
  go.touches_per_thread = 2000;
  ThreadGuest guest((*ram)->base(), kSize, 4096, go);
  uint64_t last_progress = 0;
  auto complete = (*client)->WaitComplete(absl::Seconds(60), [&](uint64_t done, uint64_t) {
    EXPECT_GE(done, last_progress);
    last_progress = done;
  });
  ASSERT_TRUE(complete.ok()) << complete.status();
  guest.Join();
  ASSERT_TRUE(faultline.Join().ok());
  EXPECT_EQ(complete->value("pages", 0ull), kSize / 4096);
  EXPECT_GT(complete->value("faults", 0ull), 0u);
  ASSERT_TRUE(uffd->Unregister((*ram)->base(), kSize).ok());  // the VMM's memory again
  EXPECT_EQ((*src)->CountMismatches((*ram)->base()), 0u);
}

TEST(HandoffMigration, FaultlineFormatMemfdVmm) { MigrateMemfdVmm(); }

// "complete" goes out when the run ends, not at the progress thread's next tick: with an hour
// between progress reports the VMM still hears "complete" within WaitComplete's 60 s (it once
// waited up to a whole period, 0-200 ms on every migration by default).
TEST(HandoffMigration, CompleteDoesNotWaitForTheNextProgressReport) {
  MigrateMemfdVmm([](HandoffRunOptions& ho) { ho.progress_every = absl::Hours(1); });
}

TEST(HandoffMigration, FirecrackerHandoffUnchanged) {
  auto src = TestSource::Start(kSize, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  const std::string path = SocketPath("fc");
  FaultlineSide faultline(path, src->get());
  // Firecracker-style: anonymous guest memory, a uffd registered MISSING, and the JSON array.
  void* mem = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* base = static_cast<uint8_t*>(mem);
  auto uffd = Userfaultfd::Open(0);  // Firecracker asks for no optional features
  ASSERT_TRUE(uffd.ok());
  ASSERT_TRUE(uffd->Register(base, kSize, true, false).ok());
  HandoffClientRegion region{
      "", reinterpret_cast<uint64_t>(base), kSize, 4096, MemoryKind::kAnonymous, -1, 0};
  auto conn = SendFirecrackerHandoff(path, uffd->fd(), {region});
  ASSERT_TRUE(conn.ok()) << conn.status();
  GuestOptions go;
  go.threads = {AccessPattern::kRandom, AccessPattern::kSequential};
  go.touches_per_thread = 2000;
  ThreadGuest guest(base, kSize, 4096, go);
  guest.Join();
  absl::Status s = faultline.Join();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_GT(faultline.stats().value("faults", 0ull), 0u);
  ASSERT_TRUE(uffd->Unregister(base, kSize).ok());
  EXPECT_EQ((*src)->CountMismatches(base), 0u);
  munmap(mem, kSize);
}

TEST(HandoffMigration, UnreachableSourceIsRefusedBeforeTheGuestRuns) {
  auto src = TestSource::Start(1u << 20, 4096);
  ASSERT_TRUE(src.ok());
  (*src)->Stop();  // the source is gone before the hand-off
  const std::string path = SocketPath("gone");
  auto server = HandoffServer::Listen(path);
  ASSERT_TRUE(server.ok());
  absl::Status served;
  std::thread t([&] {
    auto session = (*server)->Accept(absl::Seconds(20), getuid());
    ASSERT_TRUE(session.ok());
    HandoffRunOptions ho;
    ho.source = (*src)->options();
    ho.source.connect_timeout = absl::Seconds(2);
    served = RunHandoff(**session, ho);
  });
  auto ram = GuestRegion::Create("ram", RegionKind::kAnonymous, 1u << 20);
  ASSERT_TRUE(ram.ok());
  auto uffd = Userfaultfd::Open();
  ASSERT_TRUE(uffd.ok());
  HandoffClientRegion region{
      "ram", reinterpret_cast<uint64_t>((*ram)->base()), 1u << 20, 4096, MemoryKind::kAnonymous, -1,
      0};
  auto client =
      HandoffClient::Connect(path, uffd->fd(), uffd->features(), {region}, absl::Seconds(20));
  t.join();
  ASSERT_FALSE(client.ok());
  EXPECT_NE(client.status().message().find("cannot reach the source page server"),
            std::string::npos)
      << client.status();
  EXPECT_FALSE(served.ok());
}

// ---- Version 2: the hand-off at the start of the migration, pages only after "listen" ----

// The hello QEMU 10.2 sends at post-copy ADVISE, for fds {uffd, memfd}.
std::string Version2Hello(const GuestRegion& ram, const Userfaultfd& uffd,
                          bool notify_running = false) {
  return nlohmann::json{{"type", "hello"},
                        {"version", 2},
                        {"start", "listen"},
                        {"notify_running", notify_running},
                        {"vmm", "qemu-test"},
                        {"uffd_features", uffd.features()},
                        {"registered", true},
                        {"uffd_fd", 0},
                        {"regions",
                         {{{"name", "pc.ram"},
                           {"host_addr", reinterpret_cast<uint64_t>(ram.base())},
                           {"length", ram.size()},
                           {"page_size", 4096},
                           {"kind", "memfd"},
                           {"fd", 1},
                           {"offset", 0}}}}}
      .dump();
}

// The VMM's version 2 hand-off: `ram` (memfd) registered MISSING|MINOR on `uffd`, the hello sent,
// faultline's ack read.
absl::StatusOr<std::unique_ptr<HandoffClient>> HandOverVersion2(const std::string& path,
                                                                GuestRegion& ram, Userfaultfd& uffd,
                                                                bool notify_running = false) {
  if (absl::Status s = uffd.Register(ram.base(), ram.size(), true, true); !s.ok()) return s;
  const int fds[] = {uffd.fd(), ram.fd()};
  return HandoffClient::ConnectWithHello(path, Version2Hello(ram, uffd, notify_running), fds,
                                         absl::Seconds(20));
}

// Whether the memfd holds any data (a placed page, or a stale one).
bool HoldsData(int fd) { return lseek(fd, 0, SEEK_DATA) >= 0; }

uint64_t PagesServed(TestSource& src) {
  const ServerStats& st = src.server().stats();
  return st.urgent_pages.load() + st.bulk_pages.load() + st.zero_pages.load() + st.bytes.load();
}

TEST(HandoffMigration, Version2PlacesNothingBeforeListen) {
  constexpr uint64_t kV2Size = 8u << 20;
  constexpr uint64_t kStale = 64;
  auto src = TestSource::Start(kV2Size, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  const std::string path = SocketPath("v2");
  FaultlineSide faultline(path, src->get());
  auto ram = GuestRegion::Create("ram", RegionKind::kMemfd, kV2Size);
  ASSERT_TRUE(ram.ok());
  // Pages the destination's RAM holds before the migration (QEMU's prealloc=on): stale.
  memset((*ram)->base(), 0x5a, kStale * 4096);
  ASSERT_TRUE(HoldsData((*ram)->fd()));
  auto uffd = Userfaultfd::Open();
  ASSERT_TRUE(uffd.ok());
  auto client = HandOverVersion2(path, **ram, *uffd);
  ASSERT_TRUE(client.ok()) << client.status();
  // Acknowledged: the stale pages are gone already (before the switch-over, not in it)...
  EXPECT_FALSE(HoldsData((*ram)->fd()));
  // ...and until "listen" nothing is placed or fetched, and no progress is reported.
  auto next = (*client)->Next(absl::Milliseconds(500));
  EXPECT_TRUE(absl::IsDeadlineExceeded(next.status())) << next.status();
  EXPECT_FALSE(HoldsData((*ram)->fd()));
  EXPECT_EQ(PagesServed(**src), 0u);

  ASSERT_TRUE((*client)->Listen().ok());  // the source stopped: its memory is final
  GuestOptions go;
  go.touches_per_thread = 2000;
  ThreadGuest guest((*ram)->base(), kV2Size, 4096, go);
  auto complete = (*client)->WaitComplete(absl::Seconds(60));
  ASSERT_TRUE(complete.ok()) << complete.status();
  guest.Join();
  absl::Status s = faultline.Join();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(complete->value("pages", 0ull), kV2Size / 4096);
  EXPECT_EQ(complete->value("stale_pages_dropped", 0ull), kStale);
  EXPECT_GT(PagesServed(**src), 0u);
  ASSERT_TRUE(uffd->Unregister((*ram)->base(), kV2Size).ok());
  EXPECT_EQ((*src)->CountMismatches((*ram)->base()), 0u);
}

// A VMM that says when its guest runs ("notify_running"): after "listen" faultline asks the
// source for faulted pages only — here none, so nothing at all — until "running"; then the
// background stream places every page. A VMM that never says it only delays the stream: the
// hold ends on its own.
TEST(HandoffMigration, Version2NoBackgroundStreamBeforeRunning) {
  for (const bool says_running : {true, false}) {
    SCOPED_TRACE(says_running ? "running sent" : "running never sent");
    constexpr uint64_t kV2Size = 4u << 20;
    auto src = TestSource::Start(kV2Size, 4096);
    ASSERT_TRUE(src.ok()) << src.status();
    const std::string path = SocketPath(says_running ? "v2run" : "v2norun");
    FaultlineSide faultline(path, src->get(), [&](HandoffRunOptions& ho) {
      ho.bulk_hold_until_running = says_running ? absl::Hours(1) : absl::Milliseconds(600);
    });
    auto ram = GuestRegion::Create("ram", RegionKind::kMemfd, kV2Size);
    ASSERT_TRUE(ram.ok());
    auto uffd = Userfaultfd::Open();
    ASSERT_TRUE(uffd.ok());
    auto client = HandOverVersion2(path, **ram, *uffd, /*notify_running=*/true);
    ASSERT_TRUE(client.ok()) << client.status();
    const absl::Time listened = absl::Now();
    ASSERT_TRUE((*client)->Listen().ok());
    absl::SleepFor(absl::Milliseconds(300));  // the VMM's switch-over, with no fault
    EXPECT_EQ(PagesServed(**src), 0u) << "the background stream ran before \"running\"";
    EXPECT_FALSE(HoldsData((*ram)->fd()));
    if (says_running) {
      ASSERT_TRUE((*client)->Running().ok());
    }
    auto complete = (*client)->WaitComplete(absl::Seconds(60));
    ASSERT_TRUE(complete.ok()) << complete.status();
    absl::Status s = faultline.Join();
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(complete->value("pages", 0ull), kV2Size / 4096);
    if (says_running) {
      EXPECT_GE(complete->value("running_after_listen_ms", 0.0), 300.0);
    } else {
      EXPECT_FALSE(complete->contains("running_after_listen_ms"));
      EXPECT_GE(absl::Now() - listened, absl::Milliseconds(600));
    }
    ASSERT_TRUE(uffd->Unregister((*ram)->base(), kV2Size).ok());
    EXPECT_EQ((*src)->CountMismatches((*ram)->base()), 0u);
  }
}

// The VMM's migration fails in pre-copy: it says bye, or just goes away, before "listen".
TEST(HandoffMigration, Version2EndedBeforeListenPlacesNothing) {
  for (const bool bye : {true, false}) {
    SCOPED_TRACE(bye ? "bye" : "close");
    constexpr uint64_t kV2Size = 1u << 20;
    auto src = TestSource::Start(kV2Size, 4096);
    ASSERT_TRUE(src.ok()) << src.status();
    const std::string path = SocketPath(bye ? "v2bye" : "v2close");
    FaultlineSide faultline(path, src->get());
    auto ram = GuestRegion::Create("ram", RegionKind::kMemfd, kV2Size);
    ASSERT_TRUE(ram.ok());
    auto uffd = Userfaultfd::Open();
    ASSERT_TRUE(uffd.ok());
    auto client = HandOverVersion2(path, **ram, *uffd);
    ASSERT_TRUE(client.ok()) << client.status();
    absl::SleepFor(absl::Milliseconds(200));
    if (bye) {
      ASSERT_TRUE((*client)->Bye().ok());
    } else {
      client->reset();
    }
    absl::Status s = faultline.Join();
    EXPECT_EQ(s.code(), bye ? absl::StatusCode::kAborted : absl::StatusCode::kUnavailable) << s;
    EXPECT_NE(s.message().find("before \"listen\""), std::string::npos) << s;
    EXPECT_NE(s.message().find("placed no page"), std::string::npos) << s;
    EXPECT_FALSE(HoldsData((*ram)->fd()));
    EXPECT_EQ(PagesServed(**src), 0u);
    if (bye) {  // faultline sent nothing after its ack, and hung up
      auto next = (*client)->Next(absl::Seconds(5));
      EXPECT_TRUE(absl::IsUnavailable(next.status())) << next.status();
    }
    ASSERT_TRUE(uffd->Unregister((*ram)->base(), kV2Size).ok());
  }
}

// faultline is cancelled (the host daemon's `cancel`, a shutdown) while the VMM is in pre-copy.
TEST(HandoffMigration, Version2CancelledBeforeListen) {
  constexpr uint64_t kV2Size = 1u << 20;
  auto src = TestSource::Start(kV2Size, 4096);
  ASSERT_TRUE(src.ok()) << src.status();
  const std::string path = SocketPath("v2cancel");
  FaultlineSide faultline(path, src->get(), [](HandoffRunOptions& ho) {
    ho.on_engine = [](Engine* e) {
      if (e != nullptr) e->Cancel();  // as Migration::Cancel does
    };
  });
  auto ram = GuestRegion::Create("ram", RegionKind::kMemfd, kV2Size);
  ASSERT_TRUE(ram.ok());
  auto uffd = Userfaultfd::Open();
  ASSERT_TRUE(uffd.ok());
  auto client = HandOverVersion2(path, **ram, *uffd);
  ASSERT_TRUE(client.ok()) << client.status();
  auto complete = (*client)->WaitComplete(absl::Seconds(10));
  absl::Status served = faultline.Join();
  EXPECT_TRUE(absl::IsCancelled(served)) << served;
  EXPECT_TRUE(absl::IsCancelled(complete.status())) << complete.status();
  EXPECT_FALSE(HoldsData((*ram)->fd()));
  EXPECT_EQ(PagesServed(**src), 0u);
  ASSERT_TRUE(uffd->Unregister((*ram)->base(), kV2Size).ok());
}

}  // namespace
}  // namespace faultline
