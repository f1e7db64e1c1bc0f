// The daemon's credential check (SO_PEERCRED): a VMM running as a uid not on the allow list is
// refused before a byte of it is read (reason peer_not_allowed) and the daemon serves on; the
// same uid on the allow list gets past the check (its garbage hello is then refused as such).
// Needs root to fork children that become uid 65534: runs outside Bazel's user-namespace
// sandbox (tag no-sandbox), and says why it skips where that uid cannot be had.
#include <grp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "serve/daemon.h"

namespace faultline {
namespace {

// A child that becomes uid 65534, connects, sends junk, and reports what it read back:
// exit 0 = got a refusal naming `expect`, 10 = could not become 65534, others = wrong answer.
int AsNobody(const std::string& socket, const std::string& expect) {
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(10);
    sockaddr_un a = {};
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, socket.c_str(), sizeof(a.sun_path) - 1);
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) _exit(2);
    const char junk[] = "\x10\x00\x00\x00not a hello at all";
    // The daemon may refuse and close before reading: MSG_NOSIGNAL turns that into EPIPE
    // (the refusal is still in our receive buffer) instead of killing the child by SIGPIPE.
    (void)!send(fd, junk, sizeof(junk) - 1, MSG_NOSIGNAL);
    char buf[1024];
    std::string got;
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) got.append(buf, static_cast<size_t>(n));
    _exit(got.find(expect) != std::string::npos ? 0 : 3);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 99;
}

TEST(DaemonPeerCred, UidNotOnTheListIsRefusedTheListedOneGetsIn) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to fork children that become uid 65534";
  for (bool listed : {false, true}) {
    DaemonOptions o;
    o.handoff_socket = absl::StrCat("/tmp/fl-pc-", getpid(), listed, ".sock");
    o.control_socket = "";
    o.state_dir = "";
    o.event_log = nullptr;
    // An allow list of some other uid makes the socket reachable for everyone (SO_PEERCRED
    // is the gate), so uid 65534 can connect and be refused by credentials.
    o.allow_uids = {listed ? 65534u : 4242u};
    auto d = Daemon::Start(o);
    ASSERT_TRUE(d.ok()) << d.status();
    std::thread loop([&] { (*d)->Run(); });
    const int rc = AsNobody(o.handoff_socket, listed ? "hello" : "uid 65534");
    (*d)->Stop();
    loop.join();
    if (rc == 10) GTEST_SKIP() << "a child cannot become uid 65534 here (user namespace?)";
    EXPECT_EQ(rc, 0) << (listed ? "listed uid" : "unlisted uid")
                     << ": 2 no connect, 3 wrong answer";
  }
}

}  // namespace
}  // namespace faultline
