// Real userfaultfd: a thread faults on registered memory, this thread resolves it.
#include "engine/uffd.h"

#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <thread>

#include "engine/placer.h"
#include "engine/region.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

// Waits for one page-fault event; returns its address (0 on timeout).
uint64_t WaitFault(Userfaultfd& u, uint64_t* flags = nullptr) {
  struct pollfd p = {u.fd(), POLLIN, 0};
  if (poll(&p, 1, 5000) != 1) return 0;
  struct uffd_msg m;
  absl::StatusOr<int> n = u.Read(&m, 1);
  if (!n.ok() || *n != 1 || m.event != UFFD_EVENT_PAGEFAULT) return 0;
  if (flags) *flags = m.arg.pagefault.flags;
  return m.arg.pagefault.address;
}

// Unregisters on scope exit, before the region is unmapped: with UFFD_FEATURE_EVENT_UNMAP an
// munmap of a registered range blocks until somebody reads the UNMAP event.
struct ScopedRegistration {
  ScopedRegistration(Userfaultfd* u, GuestRegion* r) : u(u), r(r) {}
  ~ScopedRegistration() { (void)u->Unregister(r->base(), r->size()); }
  Userfaultfd* u;
  GuestRegion* r;
};

class UffdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<Userfaultfd> u = Userfaultfd::Open(Userfaultfd::kWantedFeatures, &missing_);
    if (!u.ok()) GTEST_SKIP() << "userfaultfd unavailable here: " << u.status();
    uffd_.emplace(std::move(*u));
  }
  std::string missing_;
  std::optional<Userfaultfd> uffd_;
  PlacerCounters counters_;
};

TEST_F(UffdTest, FeaturesAreNamed) {
  EXPECT_TRUE(uffd_->has(UFFD_FEATURE_THREAD_ID)) << "missing: " << missing_;
  EXPECT_EQ(Userfaultfd::FeatureNames(UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_THREAD_ID),
            "THREAD_ID,MINOR_SHMEM");
}

TEST_F(UffdTest, AnonymousMissingCopyWakesTheFaultingThread) {
  auto r = GuestRegion::Create("t", RegionKind::kAnonymous, 16 * 4096);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(uffd_->Register((*r)->base(), (*r)->size(), true, false).ok());
  ScopedRegistration reg(&*uffd_, r->get());
  std::atomic<uint64_t> seen{0};
  std::thread guest([&] { seen = *reinterpret_cast<volatile uint64_t*>((*r)->page(3) + 8); });
  uint64_t addr = WaitFault(*uffd_);
  ASSERT_EQ(addr, reinterpret_cast<uint64_t>((*r)->page(3)));
  std::vector<uint64_t> page(512, 0);
  page[1] = 0xfeedface;
  Placer placer(&*uffd_, r->get(), &counters_);
  ASSERT_TRUE(
      placer.Copy(3, 1, reinterpret_cast<uint8_t*>(page.data()), true, Caller::kOther).done());
  guest.join();
  EXPECT_EQ(seen.load(), 0xfeedfaceu);
  // Placing it again: EEXIST is success, counted.
  EXPECT_TRUE(
      placer.Copy(3, 1, reinterpret_cast<uint8_t*>(page.data()), true, Caller::kOther).done());
  EXPECT_EQ(counters_.eexist.load(), 1u);
  // Raw ioctl reports EEXIST as AlreadyExists.
  EXPECT_EQ(uffd_->Copy((*r)->page(3), page.data(), 4096, true).code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(UffdTest, BatchedPlacementDontWakeThenOneWake) {
  auto r = GuestRegion::Create("t", RegionKind::kAnonymous, 64 * 4096);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(uffd_->Register((*r)->base(), (*r)->size(), true, false).ok());
  ScopedRegistration reg(&*uffd_, r->get());
  std::atomic<uint64_t> seen{0};
  std::thread guest([&] { seen = *reinterpret_cast<volatile uint64_t*>((*r)->page(10)); });
  ASSERT_NE(WaitFault(*uffd_), 0u);
  std::vector<uint8_t> pages(32 * 4096, 0x5a);
  Placer placer(&*uffd_, r->get(), &counters_);
  ASSERT_TRUE(placer.Copy(0, 32, pages.data(), /*wake=*/false, Caller::kOther).done());
  // Placed but not woken: the thread is still waiting.
  usleep(20000);
  EXPECT_EQ(seen.load(), 0u);
  ASSERT_TRUE(placer.Wake(0, 32).ok());
  guest.join();
  EXPECT_EQ(seen.load(), 0x5a5a5a5a5a5a5a5aull);
}

TEST_F(UffdTest, AnonymousZeroPage) {
  auto r = GuestRegion::Create("t", RegionKind::kAnonymous, 4 * 4096);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(uffd_->Register((*r)->base(), (*r)->size(), true, false).ok());
  ScopedRegistration reg(&*uffd_, r->get());
  Placer placer(&*uffd_, r->get(), &counters_);
  ASSERT_TRUE(placer.Zero(0, 4, true, Caller::kOther).done());
  for (int i = 0; i < 4 * 4096; ++i) ASSERT_EQ((*r)->base()[i], 0);
}

TEST_F(UffdTest, MemfdMissingThenMinorContinue) {
  if (!uffd_->has(UFFD_FEATURE_MINOR_SHMEM)) GTEST_SKIP() << "kernel lacks MINOR_SHMEM";
  auto r = GuestRegion::Create("t", RegionKind::kMemfd, 8 * 4096);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(uffd_->Register((*r)->base(), (*r)->size(), true, true).ok());
  ScopedRegistration reg(&*uffd_, r->get());
  Placer placer(&*uffd_, r->get(), &counters_);
  // A page never written: MISSING. Resolve by writing the alias, then CONTINUE.
  std::atomic<uint64_t> seen{0};
  std::thread g1([&] { seen = *reinterpret_cast<volatile uint64_t*>((*r)->page(2)); });
  uint64_t flags = 99;
  ASSERT_EQ(WaitFault(*uffd_, &flags), reinterpret_cast<uint64_t>((*r)->page(2)));
  EXPECT_EQ(flags & UFFD_PAGEFAULT_FLAG_MINOR, 0u);
  memset((*r)->alias() + 2 * 4096, 0x11, 4096);
  ASSERT_TRUE(placer.Continue(2, 1, true, Caller::kOther).done());
  g1.join();
  EXPECT_EQ(seen.load(), 0x1111111111111111ull);
  // A page already in the page cache (written through the alias) but unmapped: MINOR.
  memset((*r)->alias() + 5 * 4096, 0x22, 4096);
  std::thread g2([&] { seen = *reinterpret_cast<volatile uint64_t*>((*r)->page(5)); });
  ASSERT_EQ(WaitFault(*uffd_, &flags), reinterpret_cast<uint64_t>((*r)->page(5)));
  EXPECT_NE(flags & UFFD_PAGEFAULT_FLAG_MINOR, 0u);
  ASSERT_TRUE(placer.Continue(5, 1, true, Caller::kOther).done());
  g2.join();
  EXPECT_EQ(seen.load(), 0x2222222222222222ull);
  // A zero page (UFFDIO_ZEROPAGE allocates a zeroed page-cache page).
  ASSERT_TRUE(placer.Zero(6, 1, true, Caller::kOther).done());
  EXPECT_EQ(*reinterpret_cast<volatile uint64_t*>((*r)->page(6)), 0u);
}

TEST_F(UffdTest, HugetlbWholePageCopy) {
  auto r = GuestRegion::Create("t", RegionKind::kHugetlb, 4u << 20);
  if (!r.ok())
    GTEST_SKIP() << "no free 2 MiB huge pages [setup]: tools/test.sh reserves them; " << r.status();
  ASSERT_TRUE(uffd_->Register((*r)->base(), (*r)->size(), true, false).ok());
  ScopedRegistration reg(&*uffd_, r->get());
  Placer placer(&*uffd_, r->get(), &counters_);
  std::atomic<uint64_t> seen{0};
  std::thread g(
      [&] { seen = *reinterpret_cast<volatile uint64_t*>((*r)->base() + (2u << 20) + 12345 * 8); });
  ASSERT_EQ(WaitFault(*uffd_), reinterpret_cast<uint64_t>((*r)->page(1)));
  std::vector<uint64_t> huge((2u << 20) / 8, 0x77);
  ASSERT_TRUE(
      placer.Copy(1, 1, reinterpret_cast<uint8_t*>(huge.data()), true, Caller::kOther).done());
  g.join();
  EXPECT_EQ(seen.load(), 0x77u);
  ASSERT_TRUE(placer.Zero(0, 1, true, Caller::kOther).done());
  EXPECT_EQ(*reinterpret_cast<volatile uint64_t*>((*r)->base() + 4096), 0u);
}

TEST_F(UffdTest, GuestMemfdRegistrationFollowsProbe) {
  auto r = GuestRegion::Create("t", RegionKind::kGuestMemfd, 16 * 4096);
  if (!r.ok()) GTEST_SKIP() << "guest_memfd unavailable here: " << r.status();
  const bool supported = Userfaultfd::ProbeGuestMemfd((*r)->base(), 4096).ok();
  absl::Status s = uffd_->Register((*r)->base(), (*r)->size(), true, false);
  if (supported) {
    // The kernel/ series: registration works and a page can be placed.
    ASSERT_TRUE(s.ok()) << s;
    ScopedRegistration reg(&*uffd_, r->get());
    Placer placer(&*uffd_, r->get(), &counters_);
    std::vector<uint8_t> page(4096, 0x5c);
    ASSERT_TRUE(placer.Copy(2, 1, page.data(), true, Caller::kOther).done());
    EXPECT_EQ(*reinterpret_cast<volatile uint8_t*>((*r)->base() + 2 * 4096 + 7), 0x5c);
    std::printf("this kernel registers guest_memfd with userfaultfd (kernel/ series present)\n");
    return;
  }
  // A stock kernel refuses the registration.
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

}  // namespace
}  // namespace faultline
