#include "qemu-integration/vmm/vm_throttle.h"

#include <mutex>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

// A VM that only records when it was paused and resumed.
class FakeVm {
 public:
  absl::Status Pause() {
    std::lock_guard<std::mutex> l(mu_);
    if (!pause_error_.ok()) return pause_error_;
    EXPECT_FALSE(paused_) << "paused twice without a resume";
    paused_ = true;
    events_.push_back({true, absl::Now()});
    return absl::OkStatus();
  }
  absl::Status Resume() {
    std::lock_guard<std::mutex> l(mu_);
    EXPECT_TRUE(paused_) << "resumed without a pause";
    paused_ = false;
    events_.push_back({false, absl::Now()});
    return resume_error_;
  }
  bool paused() const {
    std::lock_guard<std::mutex> l(mu_);
    return paused_;
  }
  struct Event {
    bool pause;
    absl::Time at;
  };
  std::vector<Event> events() const {
    std::lock_guard<std::mutex> l(mu_);
    return events_;
  }
  // Waits until at least `n` pauses happened (or 30 s).
  bool WaitPauses(size_t n) const {
    for (int i = 0; i < 30000; ++i) {
      size_t p = 0;
      for (const Event& e : events()) p += e.pause;
      if (p >= n) return true;
      absl::SleepFor(absl::Milliseconds(1));
    }
    return false;
  }
  absl::Status pause_error_, resume_error_;

 private:
  mutable std::mutex mu_;
  bool paused_ = false;
  std::vector<Event> events_;
};

TEST(VmThrottle, PausesForPercentOverHundredMinusPercentSlicesUntilSetToZero) {
  FakeVm vm;
  const absl::Duration slice = absl::Milliseconds(2);
  VmThrottle t([&] { return vm.Pause(); }, [&] { return vm.Resume(); }, slice);
  EXPECT_TRUE(vm.events().empty());  // nothing before a percent is set
  ASSERT_TRUE(t.Set(75).ok());
  EXPECT_EQ(t.percent(), 75u);
  ASSERT_TRUE(vm.WaitPauses(5));
  ASSERT_TRUE(t.Set(0).ok());
  EXPECT_FALSE(vm.paused()) << "Set(0) returned with the VM paused";
  const std::vector<FakeVm::Event> ev = vm.events();
  ASSERT_GE(ev.size(), 10u);
  ASSERT_EQ(ev.size() % 2, 0u);
  // Strictly pause, resume, pause, …; every pause but the last (which Set(0) may cut short)
  // lasted at least 75/25 slices, and the guest ran at least a slice between two pauses.
  for (size_t i = 0; i < ev.size(); i += 2) {
    EXPECT_TRUE(ev[i].pause);
    EXPECT_FALSE(ev[i + 1].pause);
    if (i + 2 < ev.size()) {
      EXPECT_GE(ev[i + 1].at - ev[i].at, slice * 3) << "pause " << i / 2;
      EXPECT_GE(ev[i + 2].at - ev[i + 1].at, slice) << "run after pause " << i / 2;
    }
  }
  EXPECT_EQ(t.pauses(), ev.size() / 2);
  EXPECT_GE(t.paused_time(), slice * 3 * static_cast<int64_t>(ev.size() / 2 - 1));
  // Nothing more once it is off.
  absl::SleepFor(slice * 10);
  EXPECT_EQ(vm.events().size(), ev.size());
}

TEST(VmThrottle, SetToZeroEndsALongPauseAtOnce) {
  FakeVm vm;
  // 99 %: one pause lasts 99 slices of 100 ms — almost 10 s.
  VmThrottle t([&] { return vm.Pause(); }, [&] { return vm.Resume(); }, absl::Milliseconds(100));
  ASSERT_TRUE(t.Set(99).ok());
  ASSERT_TRUE(vm.WaitPauses(1));
  const absl::Time t0 = absl::Now();
  ASSERT_TRUE(t.Set(0).ok());
  EXPECT_FALSE(vm.paused());
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
}

TEST(VmThrottle, APercentAboveNinetyNineIsNinetyNine) {
  FakeVm vm;
  VmThrottle t([&] { return vm.Pause(); }, [&] { return vm.Resume(); }, absl::Milliseconds(1));
  ASSERT_TRUE(t.Set(100).ok());
  EXPECT_EQ(t.percent(), 99u);
}

TEST(VmThrottle, TheDestructorLeavesTheVmRunning) {
  FakeVm vm;
  {
    VmThrottle t([&] { return vm.Pause(); }, [&] { return vm.Resume(); }, absl::Milliseconds(1));
    ASSERT_TRUE(t.Set(90).ok());
    ASSERT_TRUE(vm.WaitPauses(1));
  }
  EXPECT_FALSE(vm.paused());
}

TEST(VmThrottle, AFailedPauseEndsTheThrottleAndIsReported) {
  FakeVm vm;
  vm.pause_error_ = absl::DeadlineExceededError("vCPUs did not leave KVM_RUN");
  VmThrottle t([&] { return vm.Pause(); }, [&] { return vm.Resume(); }, absl::Milliseconds(1));
  ASSERT_TRUE(t.Set(50).ok());
  absl::Status s;
  for (int i = 0; i < 30000 && s.ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(1));
    s = t.Set(60);
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_NE(s.message().find("throttling the guest: pause"), std::string::npos) << s;
  EXPECT_EQ(t.percent(), 0u);
  EXPECT_EQ(t.Set(0).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(vm.events().empty());
}

TEST(VmThrottle, AFailedResumeIsReported) {
  FakeVm vm;
  vm.resume_error_ = absl::FailedPreconditionError("VM stopped");
  VmThrottle t([&] { return vm.Pause(); }, [&] { return vm.Resume(); }, absl::Milliseconds(1));
  ASSERT_TRUE(t.Set(50).ok());
  ASSERT_TRUE(vm.WaitPauses(1));
  absl::Status s;
  for (int i = 0; i < 30000 && s.ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(1));
    s = t.Set(50);
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(vm.events().size(), 2u);  // one pause, one (failed) resume, nothing after
}

}  // namespace
}  // namespace faultline
