// VmmDirtyTracker against a scripted source VMM on a real Unix socket: the VMM's side of the
// protocol (qemu-integration/qemu/patches-10.2, patch 7) is played by the test.
#include "qemu-integration/handoff/vmm_dirty_tracker.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace faultline {
namespace {

using json = nlohmann::json;

// The source VMM's end: a plain connection, length-prefixed JSON.
class FakeVmm {
 public:
  explicit FakeVmm(const std::string& path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a = {};
    a.sun_family = AF_UNIX;
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
    EXPECT_EQ(connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  }
  ~FakeVmm() { close(fd_); }
  void Send(const json& m) {
    const std::string body = m.dump();
    char len[4];
    for (int i = 0; i < 4; ++i) len[i] = static_cast<char>((body.size() >> (8 * i)) & 0xff);
    ASSERT_EQ(write(fd_, len, 4), 4);
    ASSERT_EQ(write(fd_, body.data(), body.size()), static_cast<ssize_t>(body.size()));
  }
  json Next() {
    unsigned char len[4];
    if (!ReadFull(len, 4)) return json();
    const uint32_t n = len[0] | len[1] << 8 | len[2] << 16 | static_cast<uint32_t>(len[3]) << 24;
    std::string body(n, '\0');
    if (!ReadFull(body.data(), n)) return json();
    return json::parse(body);
  }
  void Hello(uint64_t length0, uint64_t page0, bool throttle = false) {
    json h = {{"type", "hello"},
              {"version", 1},
              {"role", "source"},
              {"regions",
               {{{"name", "pc.ram"}, {"length", length0}, {"page_size", page0}},
                {{"name", "other"}, {"length", 64 * 4096}, {"page_size", 4096}}}}};
    if (throttle) h["throttle"] = true;
    Send(h);
  }

 private:
  bool ReadFull(void* p, size_t n) {
    size_t got = 0;
    while (got < n) {
      ssize_t r = read(fd_, static_cast<char*>(p) + got, n - got);
      if (r <= 0) return false;
      got += r;
    }
    return true;
  }
  int fd_;
};

class VmmDirtyTrackerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A short path: bazel's TEST_TMPDIR exceeds sun_path.
    char dir[] = "/tmp/vmm-dirty-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/sock";
    auto t = VmmDirtyTracker::Listen(path_, {{"mem", 1024 * 4096, 4096}, {"b", 64 * 4096, 4096}});
    ASSERT_TRUE(t.ok()) << t.status();
    tracker_ = std::move(*t);
  }
  void TearDown() override {
    tracker_.reset();
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }
  std::string dir_, path_;
  std::unique_ptr<VmmDirtyTracker> tracker_;
};

TEST_F(VmmDirtyTrackerTest, NoPageIsServedBeforeTheVmmTracks) {
  // Nothing connected: the page server's wait times out with a reason.
  absl::Status s = tracker_->WaitTracking(absl::Now() + absl::Milliseconds(50));
  EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "has not begun tracking")) << s;

  FakeVmm vmm(path_);
  vmm.Hello(1024 * 4096, 4096);
  json ack = vmm.Next();
  EXPECT_EQ(ack["type"], "ack");
  EXPECT_EQ(ack["ok"], true);
  EXPECT_TRUE(tracker_->WaitTracking(absl::Now() + absl::Seconds(10)).ok());
}

TEST_F(VmmDirtyTrackerTest, ABlockThatIsNotTheServedRegionIsRefusedAndALaterVmmAccepted) {
  {
    FakeVmm wrong(path_);
    wrong.Hello(512 * 4096, 4096);  // half the size
    json ack = wrong.Next();
    EXPECT_EQ(ack["ok"], false);
    EXPECT_TRUE(absl::StrContains(ack["error"].get<std::string>(), "RAM block 0 (pc.ram)")) << ack;
  }
  absl::Status s = tracker_->WaitTracking(absl::Now() + absl::Milliseconds(100));
  EXPECT_TRUE(absl::StrContains(s.message(), "refused")) << s;
  FakeVmm right(path_);
  right.Hello(1024 * 4096, 4096);
  EXPECT_EQ(right.Next()["ok"], true);
  EXPECT_TRUE(tracker_->WaitTracking(absl::Now() + absl::Seconds(10)).ok());
}

TEST_F(VmmDirtyTrackerTest, RoundsThenTheFinalSetThenSwitched) {
  FakeVmm vmm(path_);
  vmm.Hello(1024 * 4096, 4096);
  ASSERT_EQ(vmm.Next()["ok"], true);

  std::thread qemu([&] {
    json c = vmm.Next();
    EXPECT_EQ(c["type"], "collect");
    EXPECT_EQ(c["final"], false);
    vmm.Send({{"type", "dirty"}, {"region", 0}, {"ranges", {{3, 2}, {1000, 24}}}});
    vmm.Send({{"type", "unknown-kind"}});  // skipped
    vmm.Send({{"type", "dirty"}, {"region", 1}, {"ranges", {{0, 1}}}});
    vmm.Send({{"type", "collected"}, {"final", false}});
    c = vmm.Next();
    EXPECT_EQ(c["final"], true);
    vmm.Send({{"type", "dirty"}, {"region", 0}, {"ranges", {{7, 1}}}});
    vmm.Send({{"type", "collected"}, {"final", true}});
    EXPECT_EQ(vmm.Next()["type"], "switched");
  });
  std::vector<PageRange> out;
  ASSERT_TRUE(tracker_->Collect(false, &out).ok());
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].region, 0u);
  EXPECT_EQ(out[0].first, 3u);
  EXPECT_EQ(out[0].count, 2u);
  EXPECT_EQ(out[1].first, 1000u);
  EXPECT_EQ(out[1].count, 24u);
  EXPECT_EQ(out[2].region, 1u);
  out.clear();
  ASSERT_TRUE(tracker_->Collect(true, &out).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].first, 7u);
  // A final request asked twice: the guest is stopped for good, nothing more to ask.
  out.clear();
  ASSERT_TRUE(tracker_->Collect(true, &out).ok());
  EXPECT_TRUE(out.empty());
  tracker_->Switched();
  qemu.join();
}

TEST_F(VmmDirtyTrackerTest, ThrottleIsAskedOfAQemuThatOffersIt) {
  FakeVmm vmm(path_);
  vmm.Hello(1024 * 4096, 4096, /*throttle=*/true);
  ASSERT_EQ(vmm.Next()["ok"], true);
  std::thread qemu([&] {
    json t = vmm.Next();
    EXPECT_EQ(t["type"], "throttle");
    EXPECT_EQ(t["percent"], 30);
    vmm.Send({{"type", "throttled"}, {"percent", 30}});
    t = vmm.Next();
    EXPECT_EQ(t["percent"], 0);
    vmm.Send({{"type", "throttled"}, {"percent", 0}});
    t = vmm.Next();  // QEMU clamps what it cannot do: the tracker reports the difference
    EXPECT_EQ(t["percent"], 50);
    vmm.Send({{"type", "throttled"}, {"percent", 20}});
  });
  EXPECT_TRUE(tracker_->Throttle(30).ok());
  EXPECT_TRUE(tracker_->Throttle(0).ok());
  absl::Status s = tracker_->Throttle(50);
  qemu.join();
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "by 20 %, not the 50 %")) << s;
}

TEST_F(VmmDirtyTrackerTest, AQemuWithoutThrottleIsNeverAskedForOne) {
  FakeVmm vmm(path_);
  vmm.Hello(1024 * 4096, 4096);  // an older series: no throttle in its hello
  ASSERT_EQ(vmm.Next()["ok"], true);
  absl::Status s = tracker_->Throttle(30);
  EXPECT_TRUE(absl::IsUnimplemented(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "no throttle requests")) << s;
  // Nothing was sent: the next message QEMU reads is the round's collect.
  std::thread qemu([&] {
    EXPECT_EQ(vmm.Next()["type"], "collect");
    vmm.Send({{"type", "collected"}, {"final", false}});
  });
  std::vector<PageRange> out;
  EXPECT_TRUE(tracker_->Collect(false, &out).ok());
  qemu.join();
}

TEST_F(VmmDirtyTrackerTest, PagesOutsideTheRegionAreAnError) {
  FakeVmm vmm(path_);
  vmm.Hello(1024 * 4096, 4096);
  ASSERT_EQ(vmm.Next()["ok"], true);
  std::thread qemu([&] {
    vmm.Next();
    vmm.Send({{"type", "dirty"}, {"region", 0}, {"ranges", {{1020, 5}}}});
  });
  std::vector<PageRange> out;
  absl::Status s = tracker_->Collect(false, &out);
  qemu.join();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "which has 1024")) << s;
}

TEST_F(VmmDirtyTrackerTest, AVmmThatGoesAwayFailsTheRound) {
  auto vmm = std::make_unique<FakeVmm>(path_);
  vmm->Hello(1024 * 4096, 4096);
  ASSERT_EQ(vmm->Next()["ok"], true);
  vmm.reset();
  std::vector<PageRange> out;
  absl::Status s = tracker_->Collect(false, &out);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "dirty-log connection")) << s;
}

}  // namespace
}  // namespace faultline
