#include "base/scm_rights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace faultline {
namespace {

struct Pair {
  UniqueFd a, b;
};

Pair SocketPair(int type) {
  int sv[2] = {-1, -1};
  EXPECT_EQ(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0) << strerror(errno);
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

UniqueFd Memfd(const char* name, off_t size) {
  UniqueFd fd(memfd_create(name, MFD_CLOEXEC));
  EXPECT_TRUE(fd.valid()) << strerror(errno);
  EXPECT_EQ(ftruncate(fd.get(), size), 0);
  return fd;
}

struct stat Stat(int fd) {
  struct stat st = {};
  EXPECT_EQ(fstat(fd, &st), 0) << "fd " << fd << ": " << strerror(errno);
  return st;
}

bool SameFile(int a, int b) {
  struct stat x = Stat(a), y = Stat(b);
  return x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

TEST(ScmRights, SeveralFdsRoundTripAsDistinctOpenFiles) {
  for (int type : {SOCK_STREAM, SOCK_SEQPACKET}) {
    SCOPED_TRACE(type == SOCK_STREAM ? "stream" : "seqpacket");
    Pair p = SocketPair(type);
    UniqueFd m1 = Memfd("one", 4096), m2 = Memfd("two", 8192), m3 = Memfd("three", 12288);
    const int sent[] = {m1.get(), m2.get(), m3.get()};
    ASSERT_TRUE(SendWithFds(p.a.get(), "hello", sent).ok());

    std::vector<UniqueFd> fds;
    fds.emplace_back(dup(0));  // already there: received fds are appended after it
    char buf[64];
    absl::StatusOr<size_t> n = RecvWithFds(p.b.get(), buf, sizeof(buf), &fds);
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(std::string(buf, *n), "hello");
    ASSERT_EQ(fds.size(), 4u);
    for (size_t i = 0; i < 3; ++i) {
      const int got = fds[i + 1].get();
      ASSERT_GE(got, 0);
      EXPECT_NE(got, sent[i]);
      EXPECT_TRUE(SameFile(got, sent[i])) << i;
      EXPECT_EQ(Stat(got).st_size, static_cast<off_t>(4096 * (i + 1)));
      EXPECT_TRUE(fcntl(got, F_GETFD) & FD_CLOEXEC) << "MSG_CMSG_CLOEXEC";
      for (size_t j = 0; j < i; ++j) EXPECT_FALSE(SameFile(got, fds[j + 1].get())) << i << j;
    }
    // The received fds are the same open files: a write through one shows through the other.
    ASSERT_EQ(pwrite(fds[2].get(), "x", 1, 100), 1);
    char c = 0;
    ASSERT_EQ(pread(m2.get(), &c, 1, 100), 1);
    EXPECT_EQ(c, 'x');
  }
}

TEST(ScmRights, MessageWithoutFds) {
  Pair p = SocketPair(SOCK_STREAM);
  ASSERT_TRUE(SendWithFds(p.a.get(), "plain bytes", {}).ok());
  std::vector<UniqueFd> fds;
  char buf[64];
  absl::StatusOr<size_t> n = RecvWithFds(p.b.get(), buf, sizeof(buf), &fds);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(std::string(buf, *n), "plain bytes");
  EXPECT_TRUE(fds.empty());
}

TEST(ScmRights, EofAndNothingPending) {
  Pair p = SocketPair(SOCK_STREAM);
  std::vector<UniqueFd> fds;
  char buf[16];
  absl::StatusOr<size_t> n = RecvWithFds(p.b.get(), buf, sizeof(buf), &fds, MSG_DONTWAIT);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kDeadlineExceeded) << n.status();
  p.a.reset();
  n = RecvWithFds(p.b.get(), buf, sizeof(buf), &fds);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 0u);
  EXPECT_TRUE(fds.empty());
  // And sending to a closed peer is Unavailable, not SIGPIPE.
  EXPECT_EQ(SendWithFds(p.b.get(), "x", {}).code(), absl::StatusCode::kUnavailable);
}

TEST(ScmRights, TooManyFdsIsRefused) {
  Pair p = SocketPair(SOCK_STREAM);
  std::vector<int> many(kMaxScmRightsFds + 1, p.a.get());
  absl::Status s = SendWithFds(p.a.get(), "x", many);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

// A message bigger than the socket buffer goes out in several sendmsg calls; the fds ride on
// the first, and every byte arrives in order.
TEST(ScmRights, ShortWritesAreRetriedWithoutFds) {
  Pair p = SocketPair(SOCK_STREAM);
  int small = 4096;
  ASSERT_EQ(setsockopt(p.a.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
  std::string big(1 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + i / 251);
  UniqueFd m = Memfd("big", 4096);
  const int sent[] = {m.get()};
  absl::Status send_status;
  std::thread sender([&] { send_status = SendWithFds(p.a.get(), big, sent); });
  std::string got;
  std::vector<UniqueFd> fds;
  std::vector<char> buf(64 * 1024);
  while (got.size() < big.size()) {
    absl::StatusOr<size_t> n = RecvWithFds(p.b.get(), buf.data(), buf.size(), &fds);
    ASSERT_TRUE(n.ok()) << n.status();
    ASSERT_GT(*n, 0u);
    if (got.empty()) {
      EXPECT_EQ(fds.size(), 1u) << "the fds come with the first bytes";
    }
    got.append(buf.data(), *n);
  }
  sender.join();
  EXPECT_TRUE(send_status.ok()) << send_status;
  EXPECT_TRUE(got == big);
  ASSERT_EQ(fds.size(), 1u);
  EXPECT_TRUE(SameFile(fds[0].get(), m.get()));
}

// When the receiver cannot take every fd (its fd limit), the kernel truncates the control
// message: an error, and the fds that did arrive are closed.
TEST(ScmRights, TruncatedControlMessageIsAnErrorAndLeaksNothing) {
  Pair p = SocketPair(SOCK_STREAM);
  UniqueFd m1 = Memfd("one", 4096), m2 = Memfd("two", 4096), m3 = Memfd("three", 4096);
  const int sent[] = {m1.get(), m2.get(), m3.get()};
  ASSERT_TRUE(SendWithFds(p.a.get(), "abc", sent).ok());

  const int lowest_free = dup(0);
  ASSERT_GE(lowest_free, 0);
  close(lowest_free);
  struct rlimit old;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  struct rlimit tight = old;
  tight.rlim_cur = static_cast<rlim_t>(lowest_free) + 1;  // room for exactly one more fd
  if (setrlimit(RLIMIT_NOFILE, &tight) != 0) GTEST_SKIP() << "setrlimit: " << strerror(errno);
  std::vector<UniqueFd> fds;
  char buf[16];
  absl::StatusOr<size_t> n = RecvWithFds(p.b.get(), buf, sizeof(buf), &fds);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kDataLoss) << n.status();
  EXPECT_TRUE(fds.empty());
  EXPECT_EQ(fcntl(lowest_free, F_GETFD), -1) << "the one fd that arrived must be closed";
}

}  // namespace
}  // namespace faultline
