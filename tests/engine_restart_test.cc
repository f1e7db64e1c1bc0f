// The destination engine itself dies mid-migration; the VMM's userfaultfd survives, a new
// engine takes it over and finishes: no page lost, none placed twice over what the guest wrote,
// every page verified against the source.
//
// Two kinds of tests:
//  - Adopt*: deterministic. This test plays the VMM and the dead engine: it leaves the kernel
//    and the state file exactly as an engine killed at each dangerous point would (a page
//    landed and mapped and written by the guest, landed but not mapped, half landed, placed by
//    COPY but not yet marked present, a fault read but never answered, a batch placed with
//    DONTWAKE but never woken, a REMOVE read but never applied), then a new engine adopts the
//    same uffd and the test checks every page.
//  - Killed*: the real thing. `faultline serve` runs as a child process; it is SIGKILLed at a
//    random point (seeded, printed) while guest threads read and write; a second `faultline
//    serve` gets the same uffd (hello with "resume") and completes the migration.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/crc32c.h"
#include "cli/handoff_run.h"
#include "engine/engine.h"
#include "engine/region.h"
#include "engine/state_file.h"
#include "engine/uffd.h"
#include "gtest/gtest.h"
#include "qemu-integration/handoff/handoff.h"
#include "tests/testing/flaky_proxy.h"
#include "tests/testing/test_dest.h"
#include "tests/testing/test_source.h"
#include "transport/tcp_page_source.h"
#include "workload/thread_guest.h"

extern char** environ;

namespace faultline {
namespace {

constexpr uint32_t kPage = 4096;

std::string TmpDir() {
  const char* t = getenv("TEST_TMPDIR");
  return t ? t : "/tmp";
}

uint64_t EnvU64(const char* name, uint64_t dflt) {
  const char* v = getenv(name);
  uint64_t n;
  return v && absl::SimpleAtoi(v, &n) ? n : dflt;
}

// A Unix socket path: short (108 bytes at most, so not under $TEST_TMPDIR) and unique even
// across concurrent sandboxed runs, which share /tmp and may all see the same pid.
std::string SocketPath(const std::string& what) {
  return absl::StrCat("/tmp/faultline-", what, "-", TokenToHex(RandomToken()).substr(0, 12),
                      ".sock");
}

bool FileExists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

// The VMM: guest RAM and the userfaultfd it registered. It never closes the uffd before the
// end: that is what lets a new engine take over.
struct Vmm {
  RegionKind kind;
  std::unique_ptr<GuestRegion> ram;  // memfd: base (registered), alias (the dead engine's), fd
  std::optional<Userfaultfd> uffd;
  bool registered = false;

  static absl::StatusOr<std::unique_ptr<Vmm>> Make(RegionKind kind, uint64_t size) {
    auto v = std::make_unique<Vmm>();
    v->kind = kind;
    absl::StatusOr<std::unique_ptr<GuestRegion>> r = GuestRegion::Create("ram", kind, size);
    if (!r.ok()) return r.status();
    v->ram = std::move(*r);
    absl::StatusOr<Userfaultfd> u = Userfaultfd::Open();
    if (!u.ok()) return u.status();
    v->uffd.emplace(std::move(*u));
    const bool memfd = kind == RegionKind::kMemfd;
    if (absl::Status s = v->uffd->Register(v->ram->base(), size, true, memfd); !s.ok()) return s;
    v->registered = true;
    return v;
  }
  ~Vmm() { Unregister(); }
  void Unregister() {
    if (registered) (void)uffd->Unregister(ram->base(), ram->size());
    registered = false;
  }
  uint8_t* page(uint64_t p) const { return ram->base() + p * kPage; }
  HandoffClientRegion HandoffRegion() const {
    const bool memfd = kind == RegionKind::kMemfd;
    return {"pc.ram",
            reinterpret_cast<uint64_t>(ram->base()),
            ram->size(),
            kPage,
            memfd ? MemoryKind::kMemfd : MemoryKind::kAnonymous,
            memfd ? ram->fd() : -1,
            0};
  }
  // Reads one uffd message, as the dead engine's fault loop did (and then never acted on).
  absl::StatusOr<uffd_msg> ReadOne() {
    struct pollfd p = {uffd->fd(), POLLIN, 0};
    if (poll(&p, 1, 5000) != 1) return absl::DeadlineExceededError("no uffd message");
    uffd_msg m;
    absl::StatusOr<int> n = uffd->Read(&m, 1);
    if (!n.ok()) return n.status();
    if (*n != 1) return absl::UnavailableError("no message");
    return m;
  }
};

// A guest thread that reads one word of a page (blocking on the fault until it is served).
class Reader {
 public:
  Reader(Vmm* vmm, const uint8_t* p)
      : vmm_(vmm), t_([this, p] {
          value_.store(*reinterpret_cast<const volatile uint64_t*>(p));
          done_.store(true);
        }) {}
  ~Reader() {
    if (!WaitFor([this] { return done(); })) vmm_->Unregister();  // a failed test: let it go
    t_.join();
  }
  bool done() const { return done_.load(); }
  uint64_t value() const { return value_.load(); }

 private:
  Vmm* vmm_;
  std::atomic<bool> done_{false};
  std::atomic<uint64_t> value_{0};
  std::thread t_;
};

// What every page must hold at the end: the source's bytes, then what the guest wrote.
class Expected {
 public:
  explicit Expected(const TestSource& src) : src_(src) {}
  void Write(uint64_t page, uint32_t off, uint64_t v) { writes_.push_back({page, off, v}); }
  void Zero(uint64_t page) { zero_.push_back(page); }
  void Skip(uint64_t page) { skip_.push_back(page); }
  // Pages whose CRC32C differs from the expected page's.
  uint64_t Mismatches(const uint8_t* mem, uint64_t* checked) const {
    const uint64_t pages = src_.size() / kPage;
    std::vector<uint8_t> want(kPage);
    uint64_t bad = 0;
    *checked = 0;
    for (uint64_t p = 0; p < pages; ++p) {
      if (std::find(skip_.begin(), skip_.end(), p) != skip_.end()) continue;
      memcpy(want.data(), src_.base() + p * kPage, kPage);
      if (std::find(zero_.begin(), zero_.end(), p) != zero_.end()) {
        memset(want.data(), 0, kPage);
      }
      for (const W& w : writes_) {
        if (w.page == p) memcpy(want.data() + w.off, &w.v, 8);
      }
      ++*checked;
      if (Crc32c(want.data(), kPage) != Crc32c(mem + p * kPage, kPage)) {
        if (bad < 10) ADD_FAILURE() << "page " << p << " differs from the source + guest writes";
        ++bad;
      }
    }
    return bad;
  }

 private:
  struct W {
    uint64_t page;
    uint32_t off;
    uint64_t v;
  };
  const TestSource& src_;
  std::vector<W> writes_;
  std::vector<uint64_t> zero_, skip_;
};

// ---- Adopt: a dead engine's every dangerous moment, reproduced exactly ----

class Adopt : public ::testing::TestWithParam<RegionKind> {
 protected:
  static constexpr uint64_t kSize = 8u << 20;
  static constexpr uint64_t kPages = kSize / kPage;
  void SetUp() override {
    auto src = TestSource::Start(kSize, kPage);
    ASSERT_TRUE(src.ok()) << src.status();
    src_ = std::move(*src);
    auto vmm = Vmm::Make(GetParam(), kSize);
    if (!vmm.ok()) GTEST_SKIP() << "no userfaultfd memory of this kind here: " << vmm.status();
    vmm_ = std::move(*vmm);
    path_ = absl::StrCat(TmpDir(), "/adopt-", getpid(), "-", static_cast<int>(GetParam()));
    unlink(path_.c_str());
  }
  void TearDown() override { unlink(path_.c_str()); }

  bool memfd() const { return GetParam() == RegionKind::kMemfd; }
  const uint8_t* source(uint64_t p) const { return src_->base() + p * kPage; }

  // The dead engine placed page p with the source's bytes (and woke nobody).
  void DeadEnginePlaces(uint64_t p, bool wake = true) {
    if (memfd()) {
      memcpy(vmm_->ram->alias() + p * kPage, source(p), kPage);
      ASSERT_TRUE(vmm_->uffd->Continue(vmm_->page(p), kPage, wake).ok());
    } else {
      ASSERT_TRUE(vmm_->uffd->Copy(vmm_->page(p), source(p), kPage, wake).ok());
    }
  }
  // The guest writes a word into a mapped page.
  void GuestWrites(uint64_t p, uint32_t off, uint64_t v) {
    *reinterpret_cast<volatile uint64_t*>(vmm_->page(p) + off) = v;
    expected_->Write(p, off, v);
  }

  // A new engine on the VMM's uffd (a dup: the same open file, as SCM_RIGHTS would give it).
  std::unique_ptr<Engine> NewEngine(StateFile* sf) {
    UniqueFd ufd(fcntl(vmm_->uffd->fd(), F_DUPFD_CLOEXEC, 0));
    UniqueFd mfd(memfd() ? fcntl(vmm_->ram->fd(), F_DUPFD_CLOEXEC, 0) : -1);
    auto r = GuestRegion::Adopt("pc.ram", GetParam(), vmm_->ram->base(), kSize, kPage,
                                std::move(mfd), 0, /*minor_registered=*/true);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return nullptr;
    region_ = std::move(*r);
    EngineOptions eo;
    eo.register_ranges = false;
    auto e = Engine::Create({region_.get()},
                            Userfaultfd::Adopt(std::move(ufd), vmm_->uffd->features()), eo, sf);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }

  std::unique_ptr<TestSource> src_;
  std::unique_ptr<Vmm> vmm_;
  std::unique_ptr<GuestRegion> region_;  // the new engine's view (destroyed after the engine)
  std::optional<Expected> expected_;
  std::string path_;
};

TEST_P(Adopt, EveryStateADeadEngineCanLeaveIsContinuedCorrectly) {
  expected_.emplace(*src_);
  // Pages with data (the pattern leaves a quarter of all pages zero).
  std::vector<uint64_t> pg;
  for (uint64_t p = FirstNonZeroPage(100); pg.size() < 10; p = FirstNonZeroPage(p + 1)) {
    pg.push_back(p);
  }
  const uint64_t kPresentWritten = pg[0], kLandedMappedWritten = pg[1], kLandedUnmapped = pg[2],
                 kHalfLanded = pg[3], kUrgentReadFault = pg[4], kBulk = pg[5], kDiscarded = pg[6],
                 kLostRemove = pg[7], kPlacedNoWake = pg[8], kLandedNeverCopied = pg[9];
  std::vector<std::pair<uint64_t, PageState>> left;

  // Present, and the guest wrote it since.
  DeadEnginePlaces(kPresentWritten);
  GuestWrites(kPresentWritten, 64, 0x1111111111111111ull);
  left.push_back({kPresentWritten, PageState::kPresent});

  // Its bytes landed and it was mapped — by CONTINUE (memfd), by COPY (anon) — and the guest
  // wrote it, but the engine died before marking it present.
  DeadEnginePlaces(kLandedMappedWritten);
  GuestWrites(kLandedMappedWritten, 128, 0x2222222222222222ull);
  left.push_back({kLandedMappedWritten, memfd() ? PageState::kLanded : PageState::kPlacing});

  if (memfd()) {
    // Landed completely, not mapped yet.
    memcpy(vmm_->ram->alias() + kLandedUnmapped * kPage, source(kLandedUnmapped), kPage);
    left.push_back({kLandedUnmapped, PageState::kLanded});
    // Half landed: the stream broke mid-page (the rest is garbage), never mapped.
    memset(vmm_->ram->alias() + kHalfLanded * kPage, 0xee, kPage);
    memcpy(vmm_->ram->alias() + kHalfLanded * kPage, source(kHalfLanded), kPage / 2);
    // Marked landed just before a UFFDIO_COPY that never ran (lander.cc): the page cache has
    // no page there, CONTINUE finds a hole, and the page must be fetched after all.
    left.push_back({kLandedNeverCopied, PageState::kLanded});
  }
  left.push_back({kHalfLanded, PageState::kPlacing});

  // A guest thread faulted; the dead engine read the fault, asked the source, and died.
  Reader urgent(vmm_.get(), vmm_->page(kUrgentReadFault));
  auto m = vmm_->ReadOne();
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->event, UFFD_EVENT_PAGEFAULT);
  ASSERT_EQ(m->arg.pagefault.address, reinterpret_cast<uint64_t>(vmm_->page(kUrgentReadFault)));
  left.push_back({kUrgentReadFault, PageState::kUrgentRequested});

  left.push_back({kBulk, PageState::kBulkRequested});
  left.push_back({kDiscarded, PageState::kPlacingDiscarded});
  expected_->Skip(kDiscarded);  // nobody touches it; the guest dropped it

  // Placed, then dropped by the guest (MADV_DONTNEED): the dead engine read the REMOVE event
  // but died before applying it, so the map still says present.
  DeadEnginePlaces(kLostRemove);
  {
    std::thread madv([&] { madvise(vmm_->page(kLostRemove), kPage, MADV_DONTNEED); });
    auto rm = vmm_->ReadOne();  // madvise() waits until the event is read
    madv.join();
    ASSERT_TRUE(rm.ok()) << rm.status();
    ASSERT_EQ(rm->event, UFFD_EVENT_REMOVE);
  }
  left.push_back({kLostRemove, PageState::kPresent});
  // memfd: DONTNEED only unmaps, the page cache keeps the bytes; anonymous memory reads zero.
  if (!memfd()) expected_->Zero(kLostRemove);

  // A bulk batch placed with DONTWAKE and marked present; the batch wake never came, and a
  // guest thread that faulted on it meanwhile sleeps (its fault read, too).
  Reader asleep(vmm_.get(), vmm_->page(kPlacedNoWake));
  auto m2 = vmm_->ReadOne();
  ASSERT_TRUE(m2.ok()) << m2.status();
  ASSERT_EQ(m2->event, UFFD_EVENT_PAGEFAULT);
  DeadEnginePlaces(kPlacedNoWake, /*wake=*/false);
  left.push_back({kPlacedNoWake, PageState::kPresent});

  // The dead engine's state file.
  {
    auto sf = StateFile::Open(path_, "vmm", {kPages});
    ASSERT_TRUE(sf.ok()) << sf.status();
    for (const auto& [p, s] : left) (*sf)->region_map(0)[p].store(static_cast<uint8_t>(s));
  }
  usleep(50000);
  EXPECT_FALSE(urgent.done());  // nobody will wake these two but the next engine
  EXPECT_FALSE(asleep.done());

  // Meanwhile a guest thread touches the page whose REMOVE was lost (a fresh fault, unread).
  Reader after_remove(vmm_.get(), vmm_->page(kLostRemove));

  // The new engine.
  auto sf = StateFile::Open(path_, "vmm", {kPages}, StateFile::Mode::kAdoptOnly);
  ASSERT_TRUE(sf.ok()) << sf.status();
  ASSERT_TRUE((*sf)->adopted());
  std::unique_ptr<Engine> engine = NewEngine(sf->get());
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->adopted());
  const AdoptedStates found = engine->adopted_states();
  EXPECT_EQ(found.present, 3u);
  EXPECT_EQ(found.landed, memfd() ? 3u : 0u);
  EXPECT_EQ(found.refetch, memfd() ? 1u : 2u);
  EXPECT_EQ(found.requeued, 2u);
  EXPECT_EQ(found.discarded, 1u);
  auto conn = TcpPageSource::Connect(src_->options());
  ASSERT_TRUE(conn.ok()) << conn.status();
  {
    Runner run(engine.get(), conn->get());
    absl::Status s = run.Join();
    ASSERT_TRUE(s.ok()) << s;
  }
  // Every thread the dead engine left asleep was woken and got its page.
  ASSERT_TRUE(WaitFor([&] { return urgent.done() && asleep.done() && after_remove.done(); }));
  uint64_t w;
  memcpy(&w, source(kUrgentReadFault), 8);
  EXPECT_EQ(urgent.value(), w);
  memcpy(&w, source(kPlacedNoWake), 8);
  EXPECT_EQ(asleep.value(), w);
  memcpy(&w, source(kLostRemove), 8);
  EXPECT_EQ(after_remove.value(), memfd() ? w : 0);

  // The landed page that was a hole counts as fetched again, not as landed.
  const AdoptedStates a = engine->adopted_states();
  EXPECT_EQ(a.landed, memfd() ? 2u : 0u);
  EXPECT_EQ(a.refetch, 2u);
  // Nothing was fetched for pages already present or landed; everything else exactly once.
  const EngineCounters& c = engine->counters();
  EXPECT_EQ(c.urgent_pages + c.bulk_pages + c.zero_pages,
            kPages - a.present - a.landed - a.discarded);
  if (!memfd()) EXPECT_GE(engine->placer_counters().eexist.load(), 1u);  // COPY said EEXIST
  EXPECT_EQ(engine->StateOf(0, kDiscarded), PageState::kDiscarded);
  EXPECT_EQ(engine->remaining_pages(), 0u);

  engine.reset();
  vmm_->Unregister();  // the VMM's memory again
  uint64_t checked = 0;
  EXPECT_EQ(expected_->Mismatches(vmm_->ram->base(), &checked), 0u);
  EXPECT_EQ(checked, kPages - 1);
  // The guest's writes survived the restart.
  EXPECT_EQ(*reinterpret_cast<uint64_t*>(vmm_->page(kPresentWritten) + 64), 0x1111111111111111ull);
  EXPECT_EQ(*reinterpret_cast<uint64_t*>(vmm_->page(kLandedMappedWritten) + 128),
            0x2222222222222222ull);
}

INSTANTIATE_TEST_SUITE_P(Kinds, Adopt,
                         ::testing::Values(RegionKind::kMemfd, RegionKind::kAnonymous),
                         [](const auto& i) { return std::string(RegionKindName(i.param)); });

// ---- A VMM that resumes needs a faultline that kept state ----

TEST(AdoptHandoff, ResumeWithoutStateIsRefusedNotGuessed) {
  auto src = TestSource::Start(1u << 20, kPage);
  ASSERT_TRUE(src.ok()) << src.status();
  auto vmm = Vmm::Make(RegionKind::kAnonymous, 1u << 20);
  if (!vmm.ok()) GTEST_SKIP() << "no userfaultfd here: " << vmm.status();
  for (const std::string& state_dir : {TmpDir() + "/nothing-here", std::string()}) {
    const std::string sock = SocketPath("resume");
    auto server = HandoffServer::Listen(sock);
    ASSERT_TRUE(server.ok()) << server.status();
    absl::Status served;
    std::thread t([&] {
      auto session = (*server)->Accept(absl::Seconds(20), getuid());
      ASSERT_TRUE(session.ok()) << session.status();
      HandoffRunOptions ho;
      ho.source = (*src)->options();
      ho.state_dir = state_dir;
      served = RunHandoff(**session, ho);
    });
    auto client = HandoffClient::Connect(sock, (*vmm)->uffd->fd(), (*vmm)->uffd->features(),
                                         {(*vmm)->HandoffRegion()}, absl::Seconds(20), "test-vmm",
                                         /*resume=*/true);
    t.join();
    ASSERT_FALSE(client.ok()) << "a resume without any state was accepted (" << state_dir << ")";
    EXPECT_NE(client.status().message().find(state_dir.empty() ? "keeps no page-state file"
                                                               : "refusing to resume"),
              std::string::npos)
        << client.status();
    EXPECT_FALSE(served.ok());
  }
}

// ---- Killed: a real engine process, SIGKILLed mid-migration ----

class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& log) {
    std::vector<char*> a;
    for (const std::string& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    if (posix_spawn(&pid_, a[0], &fa, nullptr, a.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      Wait();
    }
  }
  pid_t pid() const { return pid_; }
  void Kill() {
    kill(pid_, SIGKILL);
    Wait();
  }
  int Wait() {
    int st = 0;
    if (pid_ > 0) waitpid(pid_, &st, 0);
    pid_ = -1;
    return st;
  }

 private:
  pid_t pid_ = -1;
};

std::string FaultlineBinary() {
  const char* srcdir = getenv("TEST_SRCDIR");
  const char* ws = getenv("TEST_WORKSPACE");
  if (!srcdir || !ws) return "";
  return absl::StrCat(srcdir, "/", ws, "/cli/faultline");
}

std::string ReadFile(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// One migration whose engine is killed at a point chosen by `seed`.
void KilledEngineRun(RegionKind kind, uint64_t seed) {
  SCOPED_TRACE(
      absl::StrCat("seed ", seed, " (rerun: FAULTLINE_SEED=", seed, " FAULTLINE_RESTART_RUNS=1)"));
  std::mt19937_64 rng(seed);
  const uint64_t size = 48u << 20, pages = size / kPage;
  auto src = TestSource::Start(size, kPage);
  ASSERT_TRUE(src.ok()) << src.status();
  // A slow link (about 40 MB/s, 1.5 ms per fault) so that the kill lands mid-migration.
  FlakyProxy proxy((*src)->options().address);
  proxy.SetDelayPerChunkUs(1500);
  auto vmm = Vmm::Make(kind, size);
  if (!vmm.ok()) GTEST_SKIP() << "no userfaultfd memory of this kind here: " << vmm.status();
  const std::string bin = FaultlineBinary();
  ASSERT_TRUE(FileExists(bin)) << "faultline binary not found at " << bin;
  const std::string state_dir = absl::StrCat(TmpDir(), "/state-", seed);
  const std::string sock = SocketPath("restart");
  const std::string log = absl::StrCat(TmpDir(), "/serve-", seed, ".log");
  const std::vector<std::string> argv = {bin,
                                         "serve",
                                         "--handoff=" + sock,
                                         "--connect=" + proxy.address(),
                                         "--token=" + TokenToHex((*src)->token()),
                                         "--state_dir=" + state_dir,
                                         "--progress=false"};
  const std::string state_file = StateFilePath(state_dir, (*src)->token());

  auto first = std::make_unique<Child>(argv, log);
  ASSERT_GT(first->pid(), 0);
  auto client = HandoffClient::Connect(sock, (*vmm)->uffd->fd(), (*vmm)->uffd->features(),
                                       {(*vmm)->HandoffRegion()}, absl::Seconds(30));
  ASSERT_TRUE(client.ok()) << client.status() << "\n" << ReadFile(log);

  // The guest: two readers (first half of memory) and a writer (second half: a reader and the
  // writer on one word would be a data race of the test's own), across the kill and restart.
  GuestOptions go;
  go.threads = {AccessPattern::kRandom, AccessPattern::kSequential};
  go.touches_per_thread = uint64_t{1} << 40;
  go.seed = seed;
  ThreadGuest readers((*vmm)->ram->base(), size / 2, kPage, go);
  Expected expected(**src);
  std::mutex writes_mu;
  std::vector<std::tuple<uint64_t, uint32_t, uint64_t>> writes;  // guarded by writes_mu
  std::atomic<bool> stop{false};
  std::thread writer([&, wseed = rng()] {
    std::mt19937_64 wr(wseed);
    for (uint64_t n = 1; !stop.load(); ++n) {
      const uint64_t p = pages / 2 + wr() % (pages / 2);
      const uint32_t off = static_cast<uint32_t>(wr() % (kPage / 8)) * 8;
      const uint64_t v = (seed << 40) ^ (p << 20) ^ n;
      *reinterpret_cast<volatile uint64_t*>((*vmm)->page(p) + off) = v;
      {
        std::lock_guard<std::mutex> l(writes_mu);
        writes.emplace_back(p, off, v);
      }
      usleep(200);
    }
  });
  // However this run ends: stop the guest, then let go of the memory (which also releases
  // threads still waiting on faults if something failed), then join.
  struct Cleanup {
    std::function<void()> f;
    ~Cleanup() { f(); }
  } cleanup{[&] {
    stop.store(true);
    readers.Stop();
    unlink(sock.c_str());  // left by the killed engine if the second never ran
    if (!::testing::Test::HasFailure()) return;  // the normal path joins below
    (*vmm)->Unregister();
    if (writer.joinable()) writer.join();
    readers.Join();
  }};
  auto writes_so_far = [&] {
    std::lock_guard<std::mutex> l(writes_mu);
    return writes.size();
  };

  // Kill the engine once this fraction of pages is present (and the guest has written some).
  const double kill_at = 0.1 + 0.6 * static_cast<double>(rng() % 1000) / 1000.0;
  bool killed = false;
  uint64_t done_at_kill = 0;
  while (!killed) {
    auto msg = (*client)->Next(absl::Seconds(30));
    ASSERT_TRUE(msg.ok()) << msg.status() << "\n" << ReadFile(log);
    ASSERT_NE(msg->value("type", ""), "complete") << "finished before the kill: " << msg->dump();
    if (msg->value("type", "") != "progress") continue;
    done_at_kill = msg->value("done_pages", 0ull);
    if (done_at_kill >= kill_at * pages && writes_so_far() >= 20) {
      first->Kill();
      killed = true;
    }
  }
  const size_t writes_before_kill = writes_so_far();
  std::printf("seed %llu: %s, engine killed at %.0f%% (%llu/%llu pages), %zu guest writes\n",
              static_cast<unsigned long long>(seed), RegionKindName(kind),
              100.0 * done_at_kill / pages, static_cast<unsigned long long>(done_at_kill),
              static_cast<unsigned long long>(pages), writes_before_kill);
  EXPECT_TRUE(FileExists(state_file)) << state_file;
  // No engine for a while: the guest's faults queue up in the kernel (none is lost).
  usleep(static_cast<useconds_t>(rng() % 300000));

  // The VMM notices (its hand-off connection closed) and hands the same uffd over again.
  Child second(argv, log);
  ASSERT_GT(second.pid(), 0);
  auto again = HandoffClient::Connect(sock, (*vmm)->uffd->fd(), (*vmm)->uffd->features(),
                                      {(*vmm)->HandoffRegion()}, absl::Seconds(30), "test-vmm",
                                      /*resume=*/true);
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << ReadFile(log);
  auto complete = (*again)->WaitComplete(absl::Seconds(120));
  ASSERT_TRUE(complete.ok()) << complete.status() << "\n" << ReadFile(log);
  stop.store(true);
  readers.Stop();
  readers.Join();
  writer.join();
  EXPECT_EQ(second.Wait(), 0) << ReadFile(log);

  // The second engine fetched exactly the pages the first had not placed.
  const nlohmann::json& st = *complete;
  ASSERT_TRUE(st.contains("resumed") && st["resumed"].is_object()) << st.dump();
  const nlohmann::json& r = st["resumed"];
  const uint64_t kept = r.value("present", 0ull) + r.value("landed", 0ull);
  EXPECT_GE(r.value("present", 0ull), done_at_kill);  // at least what progress last said
  EXPECT_EQ(st.value("urgent_pages", 0ull) + st.value("bulk_pages", 0ull) +
                st.value("zero_pages", 0ull) + kept + r.value("discarded", 0ull),
            pages)
      << st.dump();
  std::printf("  resumed: %s; second engine: %llu faults\n", r.dump().c_str(),
              static_cast<unsigned long long>(st.value("faults", 0ull)));
  EXPECT_FALSE(FileExists(state_file)) << "the state file outlived the migration";

  (*vmm)->Unregister();
  for (const auto& [p, off, v] : writes) expected.Write(p, off, v);
  uint64_t checked = 0;
  EXPECT_EQ(expected.Mismatches((*vmm)->ram->base(), &checked), 0u);
  EXPECT_EQ(checked, pages);
  // The guest's writes from before the kill in particular (each still holds its value unless
  // a later write hit the same word).
  uint64_t kept_writes = 0;
  for (size_t i = 0; i < writes_before_kill; ++i) {
    const auto& [p, off, v] = writes[i];
    bool overwritten = false;
    for (size_t j = i + 1; j < writes.size() && !overwritten; ++j) {
      overwritten = std::get<0>(writes[j]) == p && std::get<1>(writes[j]) == off;
    }
    if (overwritten) continue;
    EXPECT_EQ(*reinterpret_cast<uint64_t*>((*vmm)->page(p) + off), v) << "page " << p;
    ++kept_writes;
  }
  EXPECT_GT(kept_writes, 0u);
}

class Killed : public ::testing::TestWithParam<RegionKind> {};

TEST_P(Killed, EngineProcessKilledMidMigrationIsReplacedAndNothingIsLost) {
  if (!FileExists("/dev/userfaultfd") && geteuid() != 0) {
    GTEST_SKIP() << "userfaultfd needs root or /dev/userfaultfd here";
  }
  // FAULTLINE_RESTART_RUNS kills per kind (the long suite runs many); FAULTLINE_SEED the first
  // seed (default: from the clock; every run prints its seed).
  const uint64_t runs = EnvU64("FAULTLINE_RESTART_RUNS", 1);
  const uint64_t base = EnvU64("FAULTLINE_SEED", static_cast<uint64_t>(time(nullptr)) * 1000 +
                                                     static_cast<uint64_t>(GetParam()) * 100);
  for (uint64_t i = 0; i < runs && !HasFatalFailure(); ++i) KilledEngineRun(GetParam(), base + i);
}

INSTANTIATE_TEST_SUITE_P(Kinds, Killed,
                         ::testing::Values(RegionKind::kMemfd, RegionKind::kAnonymous),
                         [](const auto& i) { return std::string(RegionKindName(i.param)); });

}  // namespace
}  // namespace faultline
