#include "base/unix_socket.h"

#include <sys/socket.h>
#include <sys/time.h>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

absl::Duration SendTimeout(int fd) {
  struct timeval tv = {};
  socklen_t len = sizeof(tv);
  EXPECT_EQ(getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &len), 0);
  return absl::DurationFromTimeval(tv);
}

TEST(SetSendTimeout, SetsAtLeastAMillisecondAndInfiniteClears) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(fd.valid());
  SetSendTimeout(fd.get(), absl::Seconds(3));
  EXPECT_EQ(SendTimeout(fd.get()), absl::Seconds(3));
  SetSendTimeout(fd.get(), absl::ZeroDuration());  // zero would mean forever: 1 ms instead
  EXPECT_GE(SendTimeout(fd.get()), absl::Milliseconds(1));
  EXPECT_LT(SendTimeout(fd.get()), absl::Milliseconds(10));
  SetSendTimeout(fd.get(), absl::InfiniteDuration());
  EXPECT_EQ(SendTimeout(fd.get()), absl::ZeroDuration());
}

TEST(UnixAddress, RefusesEmptyAndOverlongPaths) {
  EXPECT_FALSE(UnixAddress("").ok());
  EXPECT_FALSE(UnixAddress(std::string(200, 'x')).ok());
  absl::StatusOr<struct sockaddr_un> a = UnixAddress("/tmp/x.sock");
  ASSERT_TRUE(a.ok());
  EXPECT_STREQ(a->sun_path, "/tmp/x.sock");
}

}  // namespace
}  // namespace faultline
