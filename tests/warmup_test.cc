// Warm-up end to end on real memory, real userfaultfd and a real page server over loopback
// TCP: a source "guest" thread keeps rewriting a hot set of its pages (a generation counter in
// each) while the destination pulls; the source tracks its writes (dirty/wp_tracker.h); the
// engine drops what the rounds report and pulls it again; at the switch the writer is stopped
// for good, the final set is dropped, and only then does a destination "guest" read — every
// page of the destination is compared with the source's afterwards, and must be identical.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/writer_throttle.h"
#include "cli/setup.h"
#include "dirty/wp_tracker.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "qemu-integration/handoff/vmm_dirty_tracker.h"
#include "tests/testing/flaky_proxy.h"
#include "tests/testing/hugepages.h"
#include "tests/testing/test_dest.h"
#include "transport/page_server.h"
#include "transport/socket.h"
#include "transport/tcp_page_source.h"

namespace faultline {
namespace {

// The source side: pattern memory, a writer thread, write tracking, a page server.
class LiveSource {
 public:
  // `hot_permille` of the pages are rewritten in a loop (0: an idle guest).
  // `throttleable`: the tracker slows the writer down when asked (else it cannot).
  static absl::StatusOr<std::unique_ptr<LiveSource>> Start(uint64_t size, uint32_t page_size,
                                                           uint32_t hot_permille, bool track = true,
                                                           bool throttleable = true) {
    std::unique_ptr<LiveSource> s(new LiveSource());
    absl::StatusOr<std::unique_ptr<PatternMemory>> mem = PatternMemory::Create(size, page_size);
    if (!mem.ok()) return mem.status();
    s->mem_ = std::move(*mem);
    s->hot_pages_ = std::max<uint64_t>(1, size / page_size * hot_permille / 1000);
    if (track) {
      std::function<void(uint32_t)> throttle;
      if (throttleable) {
        throttle = [raw = s.get()](uint32_t percent) {
          raw->throttle_.Set(percent);
          std::lock_guard<std::mutex> l(raw->mu_);
          raw->throttles_.push_back(percent);
        };
      }
      absl::StatusOr<std::unique_ptr<WpDirtyTracker>> t = WpDirtyTracker::Create(
          {{s->mem_->base(), size, page_size}}, [raw = s.get()] { raw->StopWriter(); },
          [raw = s.get()] { raw->switched_.store(true); }, std::move(throttle));
      if (!t.ok()) return t.status();
      s->tracker_ = std::move(*t);
    }
    if (hot_permille > 0) s->writer_ = std::thread([raw = s.get()] { raw->Write(); });
    absl::StatusOr<std::vector<SourceRegion>> regions = s->mem_->Regions("ram");
    if (!regions.ok()) return regions.status();
    s->token_ = RandomToken();
    s->server_ =
        std::make_unique<PageServer>(std::move(*regions), s->token_, nullptr, s->tracker_.get());
    absl::StatusOr<UniqueFd> listen = ListenTcp("127.0.0.1:0");
    if (!listen.ok()) return listen.status();
    s->listen_ = std::move(*listen);
    absl::StatusOr<int> port = BoundPort(s->listen_.get());
    if (!port.ok()) return port.status();
    s->port_ = *port;
    s->serve_ = std::thread([raw = s.get()] { (void)raw->server_->Serve(raw->listen_.get()); });
    return s;
  }
  ~LiveSource() {
    StopWriter();
    server_->Shutdown();
    if (serve_.joinable()) serve_.join();
  }
  TcpSourceOptions options() const {
    TcpSourceOptions o;
    o.address = absl::StrCat("127.0.0.1:", port_);
    o.token = token_;
    o.connect_timeout = absl::Seconds(5);
    return o;
  }
  // Stops the writer for good (the final round's "pause the guest").
  void StopWriter() {
    stop_.store(true);
    if (writer_.joinable()) writer_.join();
  }
  uint64_t writes() const { return writes_.load(); }
  // Every throttle the tracker was asked for, in order, and the one in force.
  std::vector<uint32_t> throttles() const {
    std::lock_guard<std::mutex> l(mu_);
    return throttles_;
  }
  uint32_t throttle() const { return throttle_.percent(); }
  bool switched() const { return switched_.load(); }
  const PatternMemory& mem() const { return *mem_; }

 private:
  LiveSource() = default;
  void Write() {
    const uint32_t ps = mem_->page_size();
    uint64_t gen = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      ++gen;
      for (uint64_t i = 0; i < hot_pages_ && !stop_.load(std::memory_order_relaxed); ++i) {
        // The hot set is spread over the memory: every (pages / hot)-th page.
        const uint64_t p = i * (mem_->size() / ps / hot_pages_);
        volatile uint64_t* w = reinterpret_cast<volatile uint64_t*>(mem_->base() + p * ps + 8);
        *w = gen;
        writes_.fetch_add(1, std::memory_order_relaxed);
        if (i % 64 == 0) throttle_.Pace();
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  std::unique_ptr<PatternMemory> mem_;
  std::unique_ptr<WpDirtyTracker> tracker_;
  std::unique_ptr<PageServer> server_;
  UniqueFd listen_;
  Token token_{};
  int port_ = 0;
  uint64_t hot_pages_ = 1;
  std::thread writer_, serve_;
  std::atomic<bool> stop_{false}, switched_{false};
  std::atomic<uint64_t> writes_{0};
  WriterThrottle throttle_;
  mutable std::mutex mu_;
  std::vector<uint32_t> throttles_;  // guarded by mu_
};

EngineOptions WarmUpOptions_() {
  EngineOptions eo;
  eo.warmup.enabled = true;
  eo.warmup.max_rounds = 5;
  return eo;
}

struct Outcome {
  absl::Status status;
  uint64_t mismatches = 0;
  std::vector<WarmUpRound> rounds;
  uint64_t faults_before_switch = 0, faults = 0, corrupt = 0, bulk_requests = 0;
};

// One migration with warm-up into `kind` memory; a reader thread touches every hot page once
// the switch has happened (post-copy faults on the pages the final round dropped).
Outcome Migrate(LiveSource& src, MemoryKind kind, const TcpSourceOptions& to,
                const EngineOptions& eo = WarmUpOptions_()) {
  Outcome o;
  const uint64_t size = src.mem().size();
  absl::StatusOr<Destination> d = CreateDestination(kind, size, eo);
  if (!d.ok()) {
    o.status = d.status();
    return o;
  }
  absl::StatusOr<std::unique_ptr<TcpPageSource>> s = TcpPageSource::Connect(to);
  if (!s.ok()) {
    o.status = s.status();
    return o;
  }
  Engine* e = d->engine.get();
  std::atomic<bool> done{false};
  std::thread reader([&] {
    while (!done.load() && (e->warmup() == nullptr || !e->warmup()->switched())) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    const uint32_t ps = d->region()->page_size();
    uint64_t sum = 0;
    for (uint64_t p = 0; !done.load() && p < size / ps; p += 7) {
      sum += *reinterpret_cast<volatile uint64_t*>(d->region()->base() + p * ps + 8);
    }
    (void)sum;
  });
  {
    Runner runner(e, s->get());
    o.status = runner.Join();
  }
  done.store(true);
  reader.join();
  if (o.status.ok()) o.mismatches = src.mem().CountMismatches(d->region()->base());
  if (e->warmup() != nullptr) o.rounds = e->warmup()->rounds();
  o.faults_before_switch = e->faults_before_switch();
  o.faults = e->counters().faults.load();
  o.corrupt = e->counters().corrupt_pages.load();
  o.bulk_requests = e->counters().bulk_requests.load();
  return o;
}

void Print(const Outcome& o) {
  for (const WarmUpRound& r : o.rounds) {
    std::printf(
        "  round %llu%s: %llu pages (%llu evicted), pulled in %.1f ms, applied in %.1f ms%s\n",
        static_cast<unsigned long long>(r.round), r.final ? " (final)" : "",
        static_cast<unsigned long long>(r.pages), static_cast<unsigned long long>(r.evicted),
        r.pulled_ns / 1e6, r.apply_ns / 1e6,
        r.throttle > 0  ? absl::StrCat(", then throttled ", r.throttle, " %").c_str()
        : r.no_throttle ? ", the source cannot throttle"
                        : "");
  }
  std::printf(
      "  faults after the switch: %llu; pages that changed while sent: %llu; bulk "
      "requests: %llu\n",
      static_cast<unsigned long long>(o.faults - o.faults_before_switch),
      static_cast<unsigned long long>(o.corrupt), static_cast<unsigned long long>(o.bulk_requests));
}

void ExpectWarmedUp(const Outcome& o, const LiveSource& src) {
  Print(o);
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_EQ(o.mismatches, 0u);
  ASSERT_GE(o.rounds.size(), 2u);  // at least one round before the final one
  EXPECT_TRUE(o.rounds.back().final);
  for (size_t i = 0; i + 1 < o.rounds.size(); ++i) EXPECT_FALSE(o.rounds[i].final);
  EXPECT_EQ(o.faults_before_switch, 0u);  // nothing ran here before the switch
  EXPECT_TRUE(src.switched());            // the source learnt the final set was applied
  uint64_t evicted = 0;
  for (const WarmUpRound& r : o.rounds) evicted += r.evicted;
  EXPECT_GT(evicted, 0u) << "the writer's pages were never dropped: the test proves nothing";
}

TEST(WarmUp, HotWriterMemfdEveryPageIdentical) {
  absl::StatusOr<std::unique_ptr<LiveSource>> src = LiveSource::Start(64u << 20, 4096, 100);
  if (absl::IsUnimplemented(src.status())) GTEST_SKIP() << src.status();
  ASSERT_TRUE(src.ok()) << src.status();
  Outcome o = Migrate(**src, MemoryKind::kMemfd, (*src)->options());
  ExpectWarmedUp(o, **src);
  EXPECT_GT((*src)->writes(), 0u);
}

// Stop-and-copy of the final set (WarmUpOptions::final_copy): with a budget it surely fits,
// the final set is fetched before the switch is confirmed, so the destination's reader, which
// starts at the switch, faults on nothing; without one, the final set is left to post-copy.
TEST(WarmUp, FinalSetCopiedBeforeTheGuestRunsWhenCheap) {
  absl::StatusOr<std::unique_ptr<LiveSource>> src = LiveSource::Start(32u << 20, 4096, 100);
  if (absl::IsUnimplemented(src.status())) GTEST_SKIP() << src.status();
  ASSERT_TRUE(src.ok()) << src.status();
  EngineOptions eo = WarmUpOptions_();
  eo.warmup.final_copy = absl::Seconds(5);
  Outcome o = Migrate(**src, MemoryKind::kMemfd, (*src)->options(), eo);
  ExpectWarmedUp(o, **src);
  ASSERT_FALSE(o.rounds.empty());
  EXPECT_GT(o.rounds.back().pages, 0u) << "an empty final set proves nothing";
  EXPECT_TRUE(o.rounds.back().final_copied);
  EXPECT_EQ(o.faults - o.faults_before_switch, 0u);
}

TEST(WarmUp, FinalSetLeftToPostCopyWithoutABudget) {
  absl::StatusOr<std::unique_ptr<LiveSource>> src = LiveSource::Start(32u << 20, 4096, 100);
  if (absl::IsUnimplemented(src.status())) GTEST_SKIP() << src.status();
  ASSERT_TRUE(src.ok()) << src.status();
  EngineOptions eo = WarmUpOptions_();
  eo.warmup.final_copy = absl::ZeroDuration();
  Outcome o = Migrate(**src, MemoryKind::kMemfd, (*src)->options(), eo);
  ExpectWarmedUp(o, **src);
  ASSERT_FALSE(o.rounds.empty());
  EXPECT_FALSE(o.rounds.back().final_copied);
}

// A source QEMU's tracking (VmmDirtyTracker) begins when its migration starts, after a
// destination may already have connected: the page server must not answer that destination —
// not even its WELCOME — before the VMM's hello says the writes are tracked.
TEST(WarmUp, NoPageIsServedBeforeTheSourceVmmTracks) {
  absl::StatusOr<std::unique_ptr<PatternMemory>> mem = PatternMemory::Create(1u << 20, 4096);
  ASSERT_TRUE(mem.ok()) << mem.status();
  char dir[] = "/tmp/warm-vmm-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/sock";
  absl::StatusOr<std::unique_ptr<VmmDirtyTracker>> tracker =
      VmmDirtyTracker::Listen(path, {{"ram", 1u << 20, 4096}});
  ASSERT_TRUE(tracker.ok()) << tracker.status();
  absl::StatusOr<std::vector<SourceRegion>> regions = (*mem)->Regions("ram");
  ASSERT_TRUE(regions.ok()) << regions.status();
  const Token token = RandomToken();
  PageServer server(std::move(*regions), token, nullptr, tracker->get());
  absl::StatusOr<UniqueFd> listen = ListenTcp("127.0.0.1:0");
  ASSERT_TRUE(listen.ok()) << listen.status();
  absl::StatusOr<int> port = BoundPort(listen->get());
  ASSERT_TRUE(port.ok()) << port.status();
  std::thread serve([&] { (void)server.Serve(listen->get()); });

  TcpSourceOptions to;
  to.address = absl::StrCat("127.0.0.1:", *port);
  to.token = token;
  to.connect_timeout = absl::Seconds(8);
  std::atomic<bool> connected{false};
  absl::StatusOr<std::unique_ptr<TcpPageSource>> src = absl::UnknownError("not yet");
  std::thread dest([&] {
    src = TcpPageSource::Connect(to);
    connected.store(true);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(connected.load()) << "the page server answered before the VMM tracked";

  // The source VMM: its hello (tracking has begun), and the tracker's ack.
  const int vmm = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a = {};
  a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
  ASSERT_EQ(connect(vmm, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  const std::string hello =
      R"({"type":"hello","version":1,"role":"source","regions":[{"name":"pc.ram",)"
      R"("length":1048576,"page_size":4096}]})";
  const uint32_t n = hello.size();
  const char len[4] = {static_cast<char>(n), static_cast<char>(n >> 8), 0, 0};
  ASSERT_EQ(write(vmm, len, 4), 4);
  ASSERT_EQ(write(vmm, hello.data(), n), static_cast<ssize_t>(n));
  char ack[128] = {};
  ASSERT_GT(read(vmm, ack, sizeof(ack) - 1), 4);
  EXPECT_NE(std::string(ack + 4).find("\"ok\":true"), std::string::npos) << ack + 4;

  dest.join();
  ASSERT_TRUE(src.ok()) << src.status();
  EXPECT_TRUE((*src)->live());  // a live source: the destination must warm up
  src->reset();
  close(vmm);
  server.Shutdown();
  serve.join();
  tracker->reset();
  unlink(path.c_str());
  rmdir(dir);
}

TEST(WarmUp, IdleGuestConvergesAndNeedsNoRefetch) {
  absl::StatusOr<std::unique_ptr<LiveSource>> src = LiveSource::Start(32u << 20, 4096, 0);
  if (absl::IsUnimplemented(src.status())) GTEST_SKIP() << src.status();
  ASSERT_TRUE(src.ok()) << src.status();
  Outcome o = Migrate(**src, MemoryKind::kMemfd, (*src)->options());
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_EQ(o.mismatches, 0u);
  ASSERT_EQ(o.rounds.size(), 2u);  // one round finds nothing written: the next is final
  EXPECT_EQ(o.rounds[0].pages, 0u);
  EXPECT_EQ(o.rounds[1].pages, 0u);
  EXPECT_EQ(o.faults, 0u);  // the reader found every page present
}

// Warm-up options under which every round counts as not shrinking (any set is more than 0 × the
// last) and none as small: what a guest that rewrites its pages as fast as they move looks like.
EngineOptions StuckRounds(uint32_t throttle_max) {
  EngineOptions eo = WarmUpOptions_();
  eo.warmup.shrink = 0;
  eo.warmup.converge_pages = 0;
  eo.warmup.throttle_max = throttle_max;
  return eo;
}

// Auto-converge: every round counts as not shrinking (shrink 0), so the engine asks for a
// throttle each round instead of switching — 20 %, then 10 % more per round — until the round
// limit; the source's writer is slowed down accordingly, and once the destination is done
// (its connection closed) the throttle is lifted. Every page still identical.
TEST(WarmUp, RoundsThatDoNotShrinkThrottleTheWriterUntilTheSwitch) {
  absl::StatusOr<std::unique_ptr<LiveSource>> src = LiveSource::Start(32u << 20, 4096, 100);
  if (absl::IsUnimplemented(src.status())) GTEST_SKIP() << src.status();
  ASSERT_TRUE(src.ok()) << src.status();
  Outcome o = Migrate(**src, MemoryKind::kMemfd, (*src)->options(), StuckRounds(45));
  ExpectWarmedUp(o, **src);
  // What each round asked for: nothing with the first pull's round, then 20, 30, 40, 45 (the
  // cap) for as long as the rounds found pages written (an empty one ends warm-up).
  std::vector<uint32_t> asked;
  for (const WarmUpRound& r : o.rounds) {
    EXPECT_FALSE(r.no_throttle);
    if (!r.final && r.throttle > 0) asked.push_back(r.throttle);
  }
  ASSERT_FALSE(asked.empty()) << "no round asked for a throttle: nothing was tested";
  const std::vector<uint32_t> ramp = {20, 30, 40, 45};
  for (size_t i = 0; i < asked.size(); ++i) EXPECT_EQ(asked[i], ramp[std::min<size_t>(i, 3)]);
  EXPECT_EQ(o.rounds.back().throttle, 0u);  // the final round: the guest is stopped
  // The source saw the same ramp, then 0: lifted when the destination's connection closed.
  std::vector<uint32_t> want = asked;
  want.erase(std::unique(want.begin(), want.end()), want.end());
  want.push_back(0);
  for (int i = 0; i < 500 && (*src)->throttles().size() < want.size(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ((*src)->throttles(), want);
  EXPECT_EQ((*src)->throttle(), 0u);
}

// A source whose guest cannot be slowed down says so; warm-up then switches at the first
// round that does not shrink, as without a throttle.
TEST(WarmUp, ASourceThatCannotThrottleEndsWarmUpAtTheFirstStuckRound) {
  absl::StatusOr<std::unique_ptr<LiveSource>> src =
      LiveSource::Start(32u << 20, 4096, 100, /*track=*/true, /*throttleable=*/false);
  if (absl::IsUnimplemented(src.status())) GTEST_SKIP() << src.status();
  ASSERT_TRUE(src.ok()) << src.status();
  Outcome o = Migrate(**src, MemoryKind::kMemfd, (*src)->options(), StuckRounds(99));
  ExpectWarmedUp(o, **src);
  // The first pull's round, the round that asked (answered: cannot), the final round.
  ASSERT_EQ(o.rounds.size(), 3u);
  EXPECT_FALSE(o.rounds[0].no_throttle);
  EXPECT_TRUE(o.rounds[1].no_throttle);
  EXPECT_EQ(o.rounds[1].throttle, 0u);
  EXPECT_TRUE(o.rounds[2].final);
}

TEST(WarmUp, ConnectionCutsLoseNoDirtyRound) {
  absl::StatusOr<std::unique_ptr<LiveSource>> src = LiveSource::Start(32u << 20, 4096, 100);
  if (absl::IsUnimplemented(src.status())) GTEST_SKIP() << src.status();
  ASSERT_TRUE(src.ok()) << src.status();
  FlakyProxy proxy((*src)->options().address);
  proxy.CutRandomly(/*seed=*/7, 2u << 20, 12u << 20);
  TcpSourceOptions to = (*src)->options();
  to.address = proxy.address();
  Outcome o = Migrate(**src, MemoryKind::kMemfd, to);
  ExpectWarmedUp(o, **src);
  EXPECT_GT(proxy.cuts(), 0);
}

TEST(WarmUp, HugetlbDestination) {
  ScopedHugePages hp(2 * 16 + 4);
  if (!hp.ok()) GTEST_SKIP() << hp.why_not();
  absl::StatusOr<std::unique_ptr<LiveSource>> src = LiveSource::Start(32u << 20, 2u << 20, 250);
  if (absl::IsUnimplemented(src.status())) GTEST_SKIP() << src.status();
  ASSERT_TRUE(src.ok()) << src.status();
  Outcome o = Migrate(**src, MemoryKind::kHugetlb, (*src)->options());
  ExpectWarmedUp(o, **src);
}

TEST(WarmUp, AFrozenSourceNeedsNoWarmUp) {
  // A source that serves frozen memory (no tracker) says so in its WELCOME: no page can change,
  // so a warm-up engine just pulls, as post-copy does.
  absl::StatusOr<std::unique_ptr<LiveSource>> src =
      LiveSource::Start(8u << 20, 4096, 0, /*track=*/false);
  ASSERT_TRUE(src.ok()) << src.status();
  Outcome o = Migrate(**src, MemoryKind::kMemfd, (*src)->options());
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_EQ(o.mismatches, 0u);
  EXPECT_TRUE(o.rounds.empty());
}

TEST(WarmUp, ALiveSourceIsRefusedByAnEngineThatDoesNotWarmUp) {
  // Pulling a running guest's memory without rounds would leave rewritten pages stale.
  absl::StatusOr<std::unique_ptr<LiveSource>> src = LiveSource::Start(8u << 20, 4096, 100);
  if (absl::IsUnimplemented(src.status())) GTEST_SKIP() << src.status();
  ASSERT_TRUE(src.ok()) << src.status();
  Outcome o = Migrate(**src, MemoryKind::kMemfd, (*src)->options(), EngineOptions());
  ASSERT_FALSE(o.status.ok());
  EXPECT_EQ(o.status.code(), absl::StatusCode::kFailedPrecondition) << o.status;
  EXPECT_NE(o.status.message().find("--warmup"), std::string::npos) << o.status;
}

TEST(WarmUp, AnonymousDestinationIsRefused) {
  absl::StatusOr<Destination> d =
      CreateDestination(MemoryKind::kAnonymous, 8u << 20, WarmUpOptions_());
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(d.status().message().find("anonymous"), std::string::npos) << d.status();
}

}  // namespace
}  // namespace faultline
