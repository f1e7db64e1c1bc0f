// Placer on a scripted userfaultfd: the kernel's races (EEXIST, EAGAIN, ENOENT) each produce
// the outcome postcopy's rules call for. (engine/uffd_test.cc places on the real kernel.)
#include "engine/placer.h"

#include <cstring>
#include <thread>
#include <vector>

#include "engine/region.h"
#include "engine/testing/fake_uffd.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

class PlacerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = GuestRegion::Create("ram", RegionKind::kAnonymous, 16 * 4096);
    ASSERT_TRUE(r.ok()) << r.status();
    region_ = std::move(*r);
  }
  std::unique_ptr<GuestRegion> region_;
  FakeUffd uffd_;
  PlacerCounters counters_;
};

TEST_F(PlacerTest, CopyPlacesAndWakes) {
  Placer p(&uffd_, region_.get(), &counters_);
  std::vector<uint8_t> src(4 * 4096, 0x3c);
  PlaceResult r = p.Copy(2, 4, src.data(), /*wake=*/true, Caller::kOther);
  EXPECT_TRUE(r.done());
  EXPECT_EQ(r.already_present(), 0u);
  EXPECT_EQ(region_->page(5)[100], 0x3c);
  EXPECT_TRUE(uffd_.mapped(region_->page(2)));
  EXPECT_TRUE(uffd_.WokenAt(region_->page(5)));
}

// EEXIST: the page is present (someone placed it). It is skipped, counted, and the rest of the
// run is still placed; the run is woken even so (a lost wake-up would hang a vCPU).
TEST_F(PlacerTest, AlreadyMappedPageIsSkippedAndTheRunGoesOn) {
  uffd_.MarkMapped(region_->page(3), 4096);
  region_->page(3)[0] = 0x77;  // what the guest wrote there: must survive
  Placer p(&uffd_, region_.get(), &counters_);
  std::vector<uint8_t> src(4 * 4096, 0x11);
  PlaceResult r = p.Copy(2, 4, src.data(), /*wake=*/true, Caller::kOther);
  EXPECT_TRUE(r.done());
  EXPECT_EQ(r.already_present(), 1u);
  EXPECT_EQ(counters_.eexist.load(), 1u);
  EXPECT_EQ(region_->page(3)[0], 0x77);
  EXPECT_EQ(region_->page(4)[0], 0x11);
  EXPECT_EQ(region_->page(5)[0], 0x11);
  EXPECT_TRUE(uffd_.WokenAt(region_->page(3)));
}

// EAGAIN on the fault-loop thread: read the queued REMOVE/UNMAP first — never spin there, as
// only that thread can clear the condition.
TEST_F(PlacerTest, EagainOnTheFaultLoopAsksToReadEventsFirst) {
  uffd_.FailNext(FakeUffd::Op::kZeroPage, absl::UnavailableError("EAGAIN"));
  Placer p(&uffd_, region_.get(), &counters_);
  PlaceResult r = p.Zero(1, 1, true, Caller::kFaultLoop);
  EXPECT_EQ(r.outcome, PlaceOutcome::kRetryAfterEvents);
  EXPECT_FALSE(uffd_.mapped(region_->page(1)));
  EXPECT_EQ(counters_.eagain.load(), 1u);
  // Called again once the events are read: placed.
  EXPECT_TRUE(p.Zero(1, 1, true, Caller::kFaultLoop).done());
}

// EAGAIN elsewhere (a receive thread): retried until the fault loop has read the events.
TEST_F(PlacerTest, EagainOffTheFaultLoopIsRetried) {
  uffd_.FailNext(FakeUffd::Op::kCopy, absl::UnavailableError("EAGAIN"), 3);
  Placer p(&uffd_, region_.get(), &counters_);
  std::vector<uint8_t> src(4096, 0x42);
  PlaceResult r = p.Copy(7, 1, src.data(), true, Caller::kOther);
  EXPECT_TRUE(r.done());
  EXPECT_EQ(counters_.eagain.load(), 3u);
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kCopy), 4);
  EXPECT_EQ(region_->page(7)[9], 0x42);
}

// ENOENT: the range is no longer registered (the VMM unmapped it): nothing to place there.
TEST_F(PlacerTest, UnregisteredRangeIsReportedUnmapped) {
  uffd_.FailNext(FakeUffd::Op::kContinue, absl::NotFoundError("ENOENT"));
  Placer p(&uffd_, region_.get(), &counters_);
  EXPECT_EQ(p.Continue(0, 4, true, Caller::kOther).outcome, PlaceOutcome::kUnmapped);
}

TEST_F(PlacerTest, RealErrorsFailWithTheKernelsWords) {
  uffd_.FailNext(FakeUffd::Op::kCopy, absl::ResourceExhaustedError("ENOMEM"));
  Placer p(&uffd_, region_.get(), &counters_);
  std::vector<uint8_t> src(4096);
  PlaceResult r = p.Copy(0, 1, src.data(), true, Caller::kOther);
  EXPECT_EQ(r.outcome, PlaceOutcome::kFailed);
  EXPECT_EQ(r.error.code(), absl::StatusCode::kResourceExhausted);
}

// A discarded page: MINOR maps the page cache as it is, MISSING gets zeros; a page that is
// mapped after all (EEXIST) is left untouched.
TEST_F(PlacerTest, FillHoleFollowsTheFaultKind) {
  Placer p(&uffd_, region_.get(), &counters_);
  EXPECT_TRUE(p.FillHole(4, /*minor=*/true, Caller::kFaultLoop).done());
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kContinue), 1);
  region_->page(5)[0] = 9;
  EXPECT_TRUE(p.FillHole(5, /*minor=*/false, Caller::kFaultLoop).done());
  EXPECT_EQ(region_->page(5)[0], 0);
  EXPECT_EQ(uffd_.calls(FakeUffd::Op::kZeroPage), 1);
  region_->page(5)[0] = 9;  // the guest writes the mapped page
  PlaceResult again = p.FillHole(5, false, Caller::kFaultLoop);
  EXPECT_TRUE(again.done());
  EXPECT_EQ(again.already_present(), 1u);
  EXPECT_EQ(region_->page(5)[0], 9);
}

TEST(ZeroBytes, ReadsAsZeros) {
  const uint8_t* z = ZeroBytes(2u << 20);
  ASSERT_NE(z, nullptr);
  EXPECT_EQ(z[0], 0);
  EXPECT_EQ(z[(2u << 20) - 1], 0);
  EXPECT_EQ(ZeroBytes(size_t{2} << 30), nullptr);
}

}  // namespace
}  // namespace faultline
