#include "bench/forked_peer.h"

#include <linux/memfd.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "base/unique_fd.h"
#include "tests/testing/test_source.h"
#include "transport/socket.h"

namespace faultline {
namespace {

struct PeerHello {
  int32_t port;  // <= 0: the child failed
  Token token;
};

// Child of kRawSender: serve the pattern's bytes to every connection, one at a time.
[[noreturn]] void RawSenderChild(int ctl, uint64_t size, const PatternSpec& pattern) {
  PeerHello h{};
  UniqueFd fd(memfd_create("raw-sender", MFD_CLOEXEC));
  void* p = MAP_FAILED;
  if (fd.valid() && ftruncate(fd.get(), static_cast<off_t>(size)) == 0) {
    p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  }
  absl::StatusOr<UniqueFd> listen = ListenTcp("127.0.0.1:0");
  if (p == MAP_FAILED || !listen.ok()) {
    (void)!write(ctl, &h, sizeof(h));
    _exit(1);
  }
  FillPattern(pattern, static_cast<uint8_t*>(p), size);
  h.port = *BoundPort(listen->get());
  (void)!write(ctl, &h, sizeof(h));
  // Send from a reused 1 MiB buffer filled with pread(), as the page server reads (its
  // SourceRead::kCopy): write() straight from the mapping would make the raw link pay the
  // first-touch faults the page server no longer pays (on a shadow-paging machine ~3 us of
  // sender CPU per page, which held the "ceiling" below the engine).
  munmap(p, size);
  std::vector<uint8_t> buf(1 << 20);
  for (;;) {
    UniqueFd c(accept(listen->get(), nullptr, nullptr));
    if (!c.valid()) continue;
    for (uint64_t off = 0; off < size;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - off));
      if (pread(fd.get(), buf.data(), n, static_cast<off_t>(off)) != static_cast<ssize_t>(n) ||
          !WriteAll(c.get(), buf.data(), n).ok()) {
        break;
      }
      off += n;
    }
  }
}

[[noreturn]] void PageServerChild(int ctl, uint64_t size, const PatternSpec& pattern) {
  PeerHello h{};
  absl::StatusOr<std::unique_ptr<TestSource>> src = TestSource::Start(size, 4096, pattern);
  if (src.ok()) {
    h.port = (*src)->port();
    h.token = (*src)->token();
  }
  (void)!write(ctl, &h, sizeof(h));
  if (!src.ok()) _exit(1);
  for (;;) pause();  // the server thread serves until the parent kills us
}

}  // namespace

absl::StatusOr<std::unique_ptr<ForkedPeer>> ForkedPeer::Start(Kind kind, uint64_t size,
                                                              PatternSpec pattern) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return ErrnoStatus("socketpair");
  UniqueFd parent(sv[0]), child(sv[1]);
  std::unique_ptr<ForkedPeer> peer(new ForkedPeer());
  peer->pid_ = fork();
  if (peer->pid_ < 0) return ErrnoStatus("fork");
  if (peer->pid_ == 0) {
    parent.reset();
    if (kind == Kind::kRawSender) RawSenderChild(child.get(), size, pattern);
    PageServerChild(child.get(), size, pattern);
  }
  child.reset();
  PeerHello h{};
  if (absl::Status s = ReadAll(parent.get(), &h, sizeof(h)); !s.ok()) return s;
  if (h.port <= 0) return absl::InternalError("the sending child could not start");
  peer->port_ = h.port;
  peer->token_ = h.token;
  return peer;
}

ForkedPeer::~ForkedPeer() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

std::string ForkedPeer::address() const { return absl::StrCat("127.0.0.1:", port_); }

TcpSourceOptions ForkedPeer::options() const {
  TcpSourceOptions o;
  o.address = address();
  o.token = token_;
  o.connect_timeout = absl::Seconds(10);
  return o;
}

CpuSample CpuSample::Now() {
  auto ns = [](clockid_t c) {
    timespec t{};
    clock_gettime(c, &t);
    return static_cast<uint64_t>(t.tv_sec) * 1000000000ull + static_cast<uint64_t>(t.tv_nsec);
  };
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto tv = [](const timeval& t) {
    return static_cast<uint64_t>(t.tv_sec) * 1000000000ull +
           static_cast<uint64_t>(t.tv_usec) * 1000;
  };
  CpuSample s;
  s.process_ns = ns(CLOCK_PROCESS_CPUTIME_ID);
  s.thread_ns = ns(CLOCK_THREAD_CPUTIME_ID);
  s.user_ns = tv(ru.ru_utime);
  s.sys_ns = tv(ru.ru_stime);
  return s;
}

uint64_t ForkedPeer::CpuNs() const {
  // /proc/PID/stat fields 14 and 15: utime and stime in clock ticks.
  std::ifstream f("/proc/" + std::to_string(pid_) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream rest(stat.substr(paren + 2));
  std::string field;
  uint64_t utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return (utime + stime) * (1000000000ull / static_cast<uint64_t>(sysconf(_SC_CLK_TCK)));
}

}  // namespace faultline
