// Lander: delivered runs of pages are placed once each, the way their region kind needs, with
// the wake-ups and the restart order (landed before mapped) the engine relies on. Real memory
// (anonymous and memfd regions), a scripted userfaultfd.
#include "engine/lander.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <thread>
#include <vector>

#include "engine/fault_loop.h"
#include "engine/testing/fake_uffd.h"
#include "engine/uffd.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

class LanderTest : public ::testing::TestWithParam<RegionKind> {
 protected:
  void SetUp() override {
    auto r = GuestRegion::Create("ram", GetParam(), kPages * 4096);
    ASSERT_TRUE(r.ok()) << r.status();
    region_ = std::move(*r);
    auto t = RegionTable::Create({region_.get()}, &uffd_, &placer_counters_);
    ASSERT_TRUE(t.ok());
    table_ = std::move(*t);
    lander_ = std::make_unique<Lander>(table_.get(), &stats_, &counters_);
    src_.resize(kPages * 4096);
    for (size_t i = 0; i < src_.size(); ++i) src_[i] = static_cast<uint8_t>(i / 4096 * 3 + 1);
  }
  PageRun Run(uint64_t first, uint32_t count, Urgency u, const uint8_t* zero = nullptr) {
    PageRun r;
    r.first = first;
    r.count = count;
    r.page_size = 4096;
    r.data = src_.data() + first * 4096;
    r.zero = zero;
    r.urgency = u;
    return r;
  }
  PageStateMap& state() { return (*table_)[0].state; }

  static constexpr uint64_t kPages = 64;
  std::unique_ptr<GuestRegion> region_;
  FakeUffd uffd_;
  PlacerCounters placer_counters_;
  EngineCounters counters_;
  FaultStats stats_;
  std::unique_ptr<RegionTable> table_;
  std::unique_ptr<Lander> lander_;
  std::vector<uint8_t> src_;
};

TEST_P(LanderTest, BulkRunIsPlacedMappedAndWokenOnce) {
  uint8_t zero[16] = {};
  zero[4] = zero[5] = 1;  // two zero pages in the run
  ASSERT_TRUE(lander_->Deliver(Run(8, 16, Urgency::kBulk, zero)).ok());
  for (uint64_t p = 8; p < 24; ++p) {
    EXPECT_EQ(state().Get(p), PageState::kPresent) << p;
    EXPECT_TRUE(uffd_.mapped(region_->page(p))) << p;
    const bool z = p == 12 || p == 13;
    EXPECT_EQ(region_->page(p)[77], z ? 0 : src_[p * 4096 + 77]) << p;
  }
  EXPECT_EQ(counters_.bulk_pages.load(), 14u);
  EXPECT_EQ(counters_.zero_pages.load(), 2u);
  // Placed with DONTWAKE, then one wake for the whole run.
  ASSERT_EQ(uffd_.wakes().size(), 1u);
  EXPECT_EQ(uffd_.wakes()[0].first, reinterpret_cast<uintptr_t>(region_->page(8)));
  EXPECT_EQ(uffd_.wakes()[0].second, 16u * 4096);
  EXPECT_EQ(table_->remaining(), kPages - 16);
}

// Cases that concern memfd's two-step placement (page cache, then CONTINUE) only.
using MemfdLanderTest = LanderTest;

TEST_P(MemfdLanderTest, BulkPagesAreCopiedInOneStep) {
  ASSERT_TRUE(lander_->Deliver(Run(0, 4, Urgency::kBulk)).ok());
  // One UFFDIO_COPY for the stretch: no pwritev, no CONTINUE.
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kCopy), 1);
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kContinue), 0);
  std::vector<uint8_t> back(4096);
  ASSERT_EQ(pread(region_->fd(), back.data(), 4096, 2 * 4096), 4096);
  EXPECT_EQ(memcmp(back.data(), src_.data() + 2 * 4096, 4096), 0);
}

// A VMM that registered its RAM without MISSING: COPY says EINVAL (nothing placed); that
// stretch and every later one go through the page cache (pwritev, then CONTINUE).
TEST_P(MemfdLanderTest, RegistrationWithoutCopyFallsBackToThePageCache) {
  uffd_.FailNext(FakeUffd::Op::kCopy, absl::InvalidArgumentError("EINVAL"));
  ASSERT_TRUE(lander_->Deliver(Run(0, 4, Urgency::kBulk)).ok());
  ASSERT_TRUE(lander_->Deliver(Run(4, 4, Urgency::kBulk)).ok());
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kCopy), 1);
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kContinue), 2);
  for (uint64_t p = 0; p < 8; ++p) {
    EXPECT_EQ(state().Get(p), PageState::kPresent) << p;
    EXPECT_TRUE(uffd_.mapped(region_->page(p))) << p;
  }
  std::vector<uint8_t> back(4096);
  ASSERT_EQ(pread(region_->fd(), back.data(), 4096, 6 * 4096), 4096);
  EXPECT_EQ(memcmp(back.data(), src_.data() + 6 * 4096, 4096), 0);
}

// Through the page cache, a stretch of many separate pieces (every other page a zero page)
// is written in several pwritev calls; a page already placed splits the run in two.
TEST(MemfdLanderPageCacheTest, ManyPiecesAndAHoleArePlacedWhole) {
  constexpr uint64_t kMany = 300;
  auto region = GuestRegion::Create("ram", RegionKind::kMemfd, kMany * 4096);
  ASSERT_TRUE(region.ok()) << region.status();
  FakeUffd uffd;
  PlacerCounters pc;
  EngineCounters counters;
  FaultStats stats;
  auto table = RegionTable::Create({region->get()}, &uffd, &pc);
  ASSERT_TRUE(table.ok()) << table.status();
  Lander lander(table->get(), &stats, &counters);
  std::vector<uint8_t> src(kMany * 4096);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i / 4096 * 7 + 3);
  std::vector<uint8_t> zero(kMany);
  for (uint64_t p = 0; p < kMany; p += 2) zero[p] = 1;
  auto run = [&](uint64_t first, uint32_t count, Urgency u) {
    PageRun r;
    r.first = first;
    r.count = count;
    r.page_size = 4096;
    r.data = src.data() + first * 4096;
    r.zero = zero.data() + first;
    r.urgency = u;
    return r;
  };
  uffd.FailNext(FakeUffd::Op::kCopy, absl::InvalidArgumentError("EINVAL"));  // no COPY here
  ASSERT_TRUE(lander.Deliver(run(151, 1, Urgency::kUrgent)).ok());           // a data page
  ASSERT_TRUE(lander.Deliver(run(0, kMany, Urgency::kBulk)).ok());
  EXPECT_EQ(counters.duplicate_arrivals.load(), 1u);
  EXPECT_EQ(counters.zero_pages.load(), kMany / 2);
  EXPECT_EQ((*table)->remaining(), 0u);
  std::vector<uint8_t> back(4096);
  for (uint64_t p = 0; p < kMany; ++p) {
    EXPECT_EQ((**table)[0].state.Get(p), PageState::kPresent) << p;
    ASSERT_EQ(pread((*region)->fd(), back.data(), 4096, static_cast<off_t>(p * 4096)), 4096);
    const uint8_t want = zero[p] ? 0 : src[p * 4096];
    EXPECT_EQ(back[0], want) << p;
    EXPECT_EQ(back[4095], want) << p;
  }
}

// A fault's page on shmem: one UFFDIO_COPY (no pwritev, whose inode lock a bulk lane's write
// may hold for long), which maps and wakes.
TEST_P(MemfdLanderTest, UrgentPageIsCopiedInOneStep) {
  // Landed before the COPY runs: what a restart needs (ARestartAfterAnUrgentCopy… below).
  PageState at_copy = PageState::kAbsent;
  uffd_.OnPlace([&](FakeUffd::Op op, const void* dst) {
    if (op == FakeUffd::Op::kCopy && dst == region_->page(30)) at_copy = state().Get(30);
  });
  ASSERT_TRUE(lander_->Deliver(Run(30, 1, Urgency::kUrgent)).ok());
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kCopy), 1);
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kContinue), 0);
  EXPECT_EQ(at_copy, PageState::kLanded);
  EXPECT_TRUE(uffd_.WokenAt(region_->page(30)));
  EXPECT_EQ(state().Get(30), PageState::kPresent);
  std::vector<uint8_t> back(4096);
  ASSERT_EQ(pread(region_->fd(), back.data(), 4096, 30 * 4096), 4096);
  EXPECT_EQ(memcmp(back.data(), src_.data() + 30 * 4096, 4096), 0);
}

// COPY says EEXIST: the page cache holds a page there that is not the source's (we claimed
// the page absent) — the source's bytes go in through the cache and CONTINUE maps them.
TEST_P(MemfdLanderTest, UrgentPageOverAForeignCachePageGoesThroughTheCache) {
  uffd_.FailNext(FakeUffd::Op::kCopy, absl::AlreadyExistsError("EEXIST"));
  std::vector<uint8_t> foreign(4096, 0xee);
  ASSERT_EQ(pwrite(region_->fd(), foreign.data(), 4096, 31 * 4096), 4096);
  ASSERT_TRUE(lander_->Deliver(Run(31, 1, Urgency::kUrgent)).ok());
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kContinue), 1);
  EXPECT_TRUE(uffd_.WokenAt(region_->page(31)));
  EXPECT_EQ(state().Get(31), PageState::kPresent);
  std::vector<uint8_t> back(4096);
  ASSERT_EQ(pread(region_->fd(), back.data(), 4096, 31 * 4096), 4096);
  EXPECT_EQ(memcmp(back.data(), src_.data() + 31 * 4096, 4096), 0);
}

// A stretch whose COPY met EEXIST part-way: the others are mapped by the COPY, the foreign page
// alone is rewritten through the cache and CONTINUE'd — never a mapped page written over.
TEST_P(MemfdLanderTest, ForeignPageInsideABulkStretchIsFixedAlone) {
  std::vector<uint8_t> foreign(4096, 0xee);
  ASSERT_EQ(pwrite(region_->fd(), foreign.data(), 4096, 34 * 4096), 4096);
  uffd_.MarkMapped(region_->page(34), 4096);  // how the fake says EEXIST to the COPY
  std::vector<const void*> continued;
  uffd_.OnPlace([&](FakeUffd::Op op, const void* dst) {
    if (op == FakeUffd::Op::kContinue) continued.push_back(dst);
  });
  ASSERT_TRUE(lander_->Deliver(Run(32, 4, Urgency::kBulk)).ok());
  EXPECT_EQ(continued, std::vector<const void*>{region_->page(34)});
  for (uint64_t p = 32; p < 36; ++p) {
    EXPECT_EQ(state().Get(p), PageState::kPresent) << p;
    std::vector<uint8_t> back(4096);
    ASSERT_EQ(pread(region_->fd(), back.data(), 4096, static_cast<off_t>(p * 4096)), 4096);
    EXPECT_EQ(memcmp(back.data(), src_.data() + p * 4096, 4096), 0) << p;
  }
}

TEST_P(LanderTest, UrgentPageWakesWithItsPlacement) {
  PageState seen;
  ASSERT_TRUE(state().MarkUrgent(30, &seen));
  stats_.FaultPending(table_->Key(0, 30), 7, 1);
  ASSERT_TRUE(lander_->Deliver(Run(30, 1, Urgency::kUrgent)).ok());
  EXPECT_EQ(state().Get(30), PageState::kPresent);
  EXPECT_TRUE(uffd_.WokenAt(region_->page(30)));
  EXPECT_EQ(counters_.urgent_pages.load(), 1u);
  EXPECT_FALSE(stats_.IsPending(table_->Key(0, 30)));
  EXPECT_EQ(stats_.Overall().count(), 1u);
}

// The same page on both channels (a fault upgraded a bulk page): placed once.
TEST_P(LanderTest, PageArrivingTwiceIsPlacedOnce) {
  ASSERT_TRUE(lander_->Deliver(Run(40, 1, Urgency::kUrgent)).ok());
  ASSERT_TRUE(lander_->Deliver(Run(36, 8, Urgency::kBulk)).ok());
  EXPECT_EQ(counters_.duplicate_arrivals.load(), 1u);
  EXPECT_EQ(counters_.urgent_pages.load() + counters_.bulk_pages.load(), 8u);
  EXPECT_EQ(placer_counters_.eexist.load(), 0u) << "the duplicate never reached the kernel";
}

// Two receive threads delivering overlapping runs at once: every page placed exactly once.
TEST_P(LanderTest, ConcurrentDeliveriesPlaceEachPageOnce) {
  std::thread a([&] {
    for (uint64_t f = 0; f < kPages; f += 8)
      ASSERT_TRUE(lander_->Deliver(Run(f, 8, Urgency::kBulk)).ok());
  });
  std::thread b([&] {
    for (uint64_t p = 0; p < kPages; ++p)
      ASSERT_TRUE(lander_->Deliver(Run(p, 1, Urgency::kUrgent)).ok());
  });
  a.join();
  b.join();
  EXPECT_EQ(table_->remaining(), 0u);
  EXPECT_EQ(counters_.urgent_pages.load() + counters_.bulk_pages.load(), kPages);
  EXPECT_EQ(counters_.duplicate_arrivals.load(), kPages);
  EXPECT_EQ(placer_counters_.eexist.load(), 0u);
}

// A page the guest dropped (REMOVE) before its bytes came: not placed, stays discarded.
TEST_P(LanderTest, DiscardedPageIsNotPlaced) {
  state().Discard(50);
  ASSERT_TRUE(lander_->Deliver(Run(48, 4, Urgency::kBulk)).ok());
  EXPECT_EQ(state().Get(50), PageState::kDiscarded);
  EXPECT_FALSE(uffd_.mapped(region_->page(50)));
  EXPECT_TRUE(uffd_.mapped(region_->page(49)));
  EXPECT_TRUE(uffd_.mapped(region_->page(51)));
}

// Whether this process has a page mapped at `addr` (/proc/self/pagemap's present bit).
bool MappedHere(const void* addr) {
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  uint64_t entry = 0;
  const off_t off = static_cast<off_t>(reinterpret_cast<uintptr_t>(addr) / 4096 * 8);
  const bool ok = pread(fd, &entry, sizeof(entry), off) == sizeof(entry);
  close(fd);
  return ok && (entry >> 63) & 1;
}

// The real kernel: a shmem region of kPages pages registered MISSING|MINOR on a userfaultfd,
// and its table; unregistered before the region is unmapped, also when an assertion returned
// early (with EVENT_UNMAP an munmap of a registered range waits for its event to be read).
class LanderRealUffdTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kPages = 8;
  void SetUp() override {
    absl::StatusOr<Userfaultfd> u = Userfaultfd::Open();
    if (!u.ok()) GTEST_SKIP() << "userfaultfd unavailable here: " << u.status();
    if (!u->has(UFFD_FEATURE_MINOR_SHMEM) || !u->has(UFFD_FEATURE_MISSING_SHMEM)) {
      GTEST_SKIP() << "this kernel lacks userfaultfd on shmem (MISSING_SHMEM, MINOR_SHMEM)";
    }
    uffd_.emplace(std::move(*u));
    auto r = GuestRegion::Create("ram", RegionKind::kMemfd, kPages * 4096);
    ASSERT_TRUE(r.ok()) << r.status();
    region_ = std::move(*r);
    ASSERT_TRUE(uffd_
                    ->Register(region_->base(), region_->size(), /*missing=*/true,
                               /*minor=*/true)
                    .ok());
    registered_ = true;
    auto t = RegionTable::Create({region_.get()}, &*uffd_, &pc_);
    ASSERT_TRUE(t.ok());
    table_ = std::move(*t);
  }
  void TearDown() override {
    if (registered_) (void)uffd_->Unregister(region_->base(), region_->size());
  }
  PageStateMap& state() { return (*table_)[0].state; }

  std::optional<Userfaultfd> uffd_;
  std::unique_ptr<GuestRegion> region_;
  bool registered_ = false;
  PlacerCounters pc_;
  EngineCounters ec_;
  FaultStats stats_;
  std::unique_ptr<RegionTable> table_;
};

// A shmem region, one page absent and one whose page cache holds foreign bytes (written, never
// mapped); both urgent deliveries must leave the source's bytes mapped — and so must a bulk
// stretch with a foreign page inside.
TEST_F(LanderRealUffdTest, UrgentShmemPagesOnTheRealKernel) {
  Lander lander(table_.get(), &stats_, &ec_);
  std::vector<uint8_t> src(kPages * 4096);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7 + 3);
  std::vector<uint8_t> foreign(4096, 0xee);
  ASSERT_EQ(pwrite(region_->fd(), foreign.data(), 4096, 5 * 4096), 4096);
  for (uint64_t p : {uint64_t{4}, uint64_t{5}}) {
    PageRun run;
    run.first = p;
    run.count = 1;
    run.page_size = 4096;
    run.data = src.data() + p * 4096;
    run.urgency = Urgency::kUrgent;
    ASSERT_TRUE(lander.Deliver(run).ok()) << p;
    EXPECT_EQ(state().Get(p), PageState::kPresent) << p;
    // Mapped now (checked first: reading an unmapped page here would wait for a fault reader
    // that does not exist), with the source's bytes.
    ASSERT_TRUE(MappedHere(region_->page(p))) << p;
    EXPECT_EQ(memcmp(region_->page(p), src.data() + p * 4096, 4096), 0) << p;
  }
  // A bulk stretch over pages 0-3 with a foreign page at 1: all mapped with the source's bytes.
  ASSERT_EQ(pwrite(region_->fd(), foreign.data(), 4096, 1 * 4096), 4096);
  PageRun bulk;
  bulk.first = 0;
  bulk.count = 4;
  bulk.page_size = 4096;
  bulk.data = src.data();
  bulk.urgency = Urgency::kBulk;
  ASSERT_TRUE(lander.Deliver(bulk).ok());
  for (uint64_t p = 0; p < 4; ++p) {
    EXPECT_EQ(state().Get(p), PageState::kPresent) << p;
    ASSERT_TRUE(MappedHere(region_->page(p))) << p;
    EXPECT_EQ(memcmp(region_->page(p), src.data() + p * 4096, 4096), 0) << p;
  }
  EXPECT_EQ(pc_.eexist.load(), 2u) << "pages 5's and 1's COPY met the foreign pages";
}

// An engine that died around an urgent COPY on shmem left the page kLanded; its successor
// CONTINUEs such pages (FaultLoop::ResolveLanded). Real kernel: died before the COPY (the
// cache holds nothing: CONTINUE fails, the page is fetched again, nothing is mapped) and after
// it (mapped, and written by the guest since: CONTINUE says EEXIST, the guest's bytes stay).
TEST_F(LanderRealUffdTest, ARestartAfterAnUrgentCopyKeepsTheGuestsBytes) {
  PageStateMap& state = this->state();
  // The dead engine, as Lander runs it: page 2 claimed and landed, dead before its COPY;
  // page 3 landed and COPY'd, dead before marking it present.
  PageState prev;
  for (uint64_t p : {uint64_t{2}, uint64_t{3}}) {
    ASSERT_TRUE(state.Claim(p, &prev));
    ASSERT_TRUE(state.MarkLanded(p));
  }
  std::vector<uint8_t> src(4096, 0x33);
  ASSERT_TRUE(uffd_->Copy(region_->page(3), src.data(), 4096, /*wake=*/true).ok());
  ASSERT_TRUE(MappedHere(region_->page(3)));
  memset(region_->page(3), 0x77, 4096);  // the guest writes it
  std::vector<uint64_t> landed;
  ASSERT_TRUE(state.AdoptAfterRestart(&landed).ok());
  ASSERT_EQ(landed, (std::vector<uint64_t>{2, 3}));
  struct NoRequests : UrgentRequester {
    void RequestUrgent(uint32_t, uint64_t) override { ADD_FAILURE() << "nothing is faulted"; }
  } none;
  FaultLoop loop(&*uffd_, table_.get(), &stats_, &ec_, &none, FaultLoop::Options{});
  for (uint64_t p : landed) loop.AddLanded(0, p);
  ASSERT_TRUE(loop.Poll().ok());
  EXPECT_EQ(state.Get(2), PageState::kAbsent) << "the COPY never ran: fetched again";
  EXPECT_FALSE(MappedHere(region_->page(2)));
  EXPECT_EQ(state.Get(3), PageState::kPresent);
  ASSERT_TRUE(MappedHere(region_->page(3)));
  EXPECT_EQ(region_->page(3)[100], 0x77) << "the guest's write survives the restart";
}

// ENOENT: the VMM unmapped the range meanwhile; the pages are gone (discarded), not missing.
TEST_P(LanderTest, UnmappedRangeDiscardsThePages) {
  uffd_.FailNext(FakeUffd::Op::kCopy, absl::NotFoundError("ENOENT"));
  ASSERT_TRUE(lander_->Deliver(Run(0, 4, Urgency::kBulk)).ok());
  for (uint64_t p = 0; p < 4; ++p) EXPECT_EQ(state().Get(p), PageState::kDiscarded);
  EXPECT_EQ(table_->remaining(), kPages - 4);
}

// A real placement error: the pages go back to absent (asked for again) and the error says
// which pages of which region.
TEST_P(LanderTest, PlacementErrorHandsThePagesBack) {
  uffd_.FailNext(FakeUffd::Op::kCopy, absl::ResourceExhaustedError("ENOMEM"));
  absl::Status s = lander_->Deliver(Run(20, 4, Urgency::kBulk));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("pages [20, 24) of region 'ram'"), absl::string_view::npos) << s;
  for (uint64_t p = 20; p < 24; ++p) EXPECT_EQ(state().Get(p), PageState::kAbsent);
}

INSTANTIATE_TEST_SUITE_P(Kinds, LanderTest,
                         ::testing::Values(RegionKind::kAnonymous, RegionKind::kMemfd),
                         [](const auto& i) { return std::string(RegionKindName(i.param)); });
INSTANTIATE_TEST_SUITE_P(Kinds, MemfdLanderTest, ::testing::Values(RegionKind::kMemfd),
                         [](const auto& i) { return std::string(RegionKindName(i.param)); });

}  // namespace
}  // namespace faultline
