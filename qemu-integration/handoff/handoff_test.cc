// Real Unix sockets, real memfds and a real userfaultfd: both ends of the hand-off in one
// process (the VMM side on a thread, or in a forked child for the credential test).
#include "qemu-integration/handoff/handoff.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/memfd.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/scm_rights.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

using json = nlohmann::json;

constexpr size_t kMemfdSize = 256 * 1024;
constexpr size_t kAnonSize = 128 * 1024;

int CountFds() {
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  int n = 0;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n - 1;  // the directory's own fd
}

std::string FdTarget(int fd) {
  char link[64];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  char target[256];
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  return n < 0 ? "" : std::string(target, static_cast<size_t>(n));
}

ino_t Inode(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

// Joins on scope exit, so a failed ASSERT in the test body does not std::terminate.
class JoiningThread {
 public:
  template <typename F>
  explicit JoiningThread(F f) : t_(std::move(f)) {}
  ~JoiningThread() { Join(); }
  void Join() {
    if (t_.joinable()) t_.join();
  }

 private:
  std::thread t_;
};

class HandoffTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A short path (sun_path is 108 bytes) that other uids can traverse (the SO_PEERCRED test).
    char tmpl[] = "/tmp/handoff_test.XXXXXX";
    if (mkdtemp(tmpl) != nullptr) {
      dir_ = tmpl;
    } else {
      const char* t = getenv("TEST_TMPDIR");
      std::string alt = absl::StrCat(t ? t : ".", "/hoXXXXXX");
      ASSERT_NE(mkdtemp(&alt[0]), nullptr) << strerror(errno);
      dir_ = alt;
    }
    path_ = dir_ + "/faultline.sock";
    ASSERT_LT(path_.size(), sizeof(sockaddr_un::sun_path)) << path_;

    // The syscall, else /dev/userfaultfd (which works inside Bazel's sandbox, where the
    // syscall lacks CAP_SYS_PTRACE in the initial user namespace).
    int u = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (u < 0) {
      const int syscall_errno = errno;
      UniqueFd dev(open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
      if (dev.valid()) u = ioctl(dev.get(), USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
      if (u < 0) {
        GTEST_SKIP() << "userfaultfd unavailable here: syscall: " << strerror(syscall_errno)
                     << "; /dev/userfaultfd: " << strerror(errno);
      }
    }
    uffd_.reset(u);
    struct uffdio_api api = {};
    api.api = UFFD_API;
    ASSERT_EQ(ioctl(uffd_.get(), UFFDIO_API, &api), 0) << strerror(errno);
    features_ = api.features;

    memfd_.reset(memfd_create("handoff-test", MFD_CLOEXEC));
    ASSERT_TRUE(memfd_.valid()) << strerror(errno);
    ASSERT_EQ(ftruncate(memfd_.get(), kMemfdSize), 0);
    mem_ = mmap(nullptr, kMemfdSize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_.get(), 0);
    ASSERT_NE(mem_, MAP_FAILED);
    anon_ = mmap(nullptr, kAnonSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(anon_, MAP_FAILED);
  }

  void TearDown() override {
    if (mem_ != nullptr && mem_ != MAP_FAILED) munmap(mem_, kMemfdSize);
    if (anon_ != nullptr && anon_ != MAP_FAILED) munmap(anon_, kAnonSize);
    if (!path_.empty()) unlink(path_.c_str());
    if (!dir_.empty()) rmdir(dir_.c_str());
  }

  uint64_t mem_addr() const { return reinterpret_cast<uint64_t>(mem_); }
  uint64_t anon_addr() const { return reinterpret_cast<uint64_t>(anon_); }

  std::vector<HandoffClientRegion> Regions() const {
    return {{"pc.ram", mem_addr(), kMemfdSize, 4096, MemoryKind::kMemfd, memfd_.get(), 0},
            {"anon", anon_addr(), kAnonSize, 4096, MemoryKind::kAnonymous, -1, 0}};
  }

  // QEMU 10.2's hello at post-copy ADVISE (version 2, no page before "listen"), same fds.
  json ListenHello() const {
    json h = ValidHello();
    h["version"] = 2;
    h["start"] = "listen";
    return h;
  }

  // A valid hello for fds {uffd_, memfd_}.
  json ValidHello() const {
    return json{{"type", "hello"},
                {"version", 1},
                {"vmm", "test-vmm"},
                {"uffd_features", features_},
                {"registered", true},
                {"uffd_fd", 0},
                {"regions", json::array({json{{"name", "pc.ram"},
                                              {"host_addr", mem_addr()},
                                              {"length", kMemfdSize},
                                              {"page_size", 4096},
                                              {"kind", "memfd"},
                                              {"fd", 1},
                                              {"offset", 0}},
                                         json{{"name", "anon"},
                                              {"host_addr", anon_addr()},
                                              {"length", kAnonSize},
                                              {"page_size", 4096},
                                              {"kind", "anon"},
                                              {"fd", -1},
                                              {"offset", 0}}})}};
  }

  std::string dir_, path_;
  UniqueFd uffd_, memfd_;
  uint64_t features_ = 0;
  void* mem_ = nullptr;
  void* anon_ = nullptr;
};

TEST_F(HandoffTest, RoundTripFaultlineFormat) {
  const int fds_before = CountFds();
  {
    absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
    ASSERT_TRUE(server.ok()) << server.status();
    struct stat st;
    ASSERT_EQ(lstat(path_.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);

    absl::Status client_status;
    absl::StatusOr<json> client_stats = absl::UnknownError("not run");
    std::vector<std::pair<uint64_t, uint64_t>> progress;
    JoiningThread vmm([&] {
      absl::StatusOr<std::unique_ptr<HandoffClient>> c =
          HandoffClient::Connect(path_, uffd_.get(), features_, Regions(), absl::Seconds(10));
      client_status = c.status();
      if (!c.ok()) return;
      client_stats = (*c)->WaitComplete(absl::Seconds(10), [&](uint64_t done, uint64_t total) {
        progress.emplace_back(done, total);
      });
      client_status = (*c)->Bye();
    });

    absl::StatusOr<std::unique_ptr<HandoffSession>> session =
        (*server)->Accept(absl::Seconds(10), getuid());
    ASSERT_TRUE(session.ok()) << session.status();
    HandoffRequest& req = (*session)->request();
    EXPECT_EQ(req.format, HandoffFormat::kFaultline);
    EXPECT_EQ(req.version, 1u);
    EXPECT_EQ(req.vmm, "faultline-vmm");
    EXPECT_EQ(req.uffd_features, features_);
    EXPECT_TRUE(req.registered);
    EXPECT_EQ(req.peer_pid, getpid());
    EXPECT_EQ(req.peer_uid, getuid());
    ASSERT_EQ(req.regions.size(), 2u);
    const HandoffRegion& ram = req.regions[0];
    EXPECT_EQ(ram.name, "pc.ram");
    EXPECT_EQ(ram.kind, MemoryKind::kMemfd);
    EXPECT_EQ(ram.host_addr, mem_addr());
    EXPECT_EQ(ram.length, kMemfdSize);
    EXPECT_EQ(ram.page_size, 4096u);
    EXPECT_EQ(ram.offset, 0u);
    ASSERT_TRUE(ram.fd.valid());
    EXPECT_NE(ram.fd.get(), memfd_.get());
    EXPECT_EQ(Inode(ram.fd.get()), Inode(memfd_.get()));
    const HandoffRegion& anon = req.regions[1];
    EXPECT_EQ(anon.name, "anon");
    EXPECT_EQ(anon.kind, MemoryKind::kAnonymous);
    EXPECT_FALSE(anon.fd.valid());
    EXPECT_EQ(anon.host_addr, anon_addr());

    // The received memfd is the VMM's memory: written through it, read through the VMM's fd
    // and mapping.
    const char text[] = "placed by faultline";
    ASSERT_EQ(pwrite(ram.fd.get(), text, sizeof(text), 8192), static_cast<ssize_t>(sizeof(text)));
    char back[sizeof(text)] = {};
    ASSERT_EQ(pread(memfd_.get(), back, sizeof(back), 8192), static_cast<ssize_t>(sizeof(back)));
    EXPECT_STREQ(back, text);
    EXPECT_STREQ(static_cast<const char*>(mem_) + 8192, text);

    // The received uffd is a working userfaultfd.
    ASSERT_TRUE(req.uffd.valid());
    EXPECT_EQ(FdTarget(req.uffd.get()), "anon_inode:[userfaultfd]");
    struct uffdio_register reg = {};
    reg.range.start = anon_addr();
    reg.range.len = kAnonSize;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    ASSERT_EQ(ioctl(req.uffd.get(), UFFDIO_REGISTER, &reg), 0) << strerror(errno);
    struct uffdio_range range = {anon_addr(), kAnonSize};
    EXPECT_EQ(ioctl(req.uffd.get(), UFFDIO_UNREGISTER, &range), 0) << strerror(errno);

    EXPECT_EQ((*session)->SendProgress(0, 1).code(), absl::StatusCode::kFailedPrecondition);
    ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
    EXPECT_EQ((*session)->Ack(absl::OkStatus()).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_FALSE((*session)->PeerClosed());
    ASSERT_TRUE((*session)->SendProgress(1, 3).ok());
    ASSERT_TRUE((*session)->SendProgress(3, 3).ok());
    ASSERT_TRUE(
        (*session)->SendComplete(absl::OkStatus(), json{{"pages", 3}, {"mode", "test"}}).ok());
    vmm.Join();

    EXPECT_TRUE(client_status.ok()) << client_status;
    ASSERT_TRUE(client_stats.ok()) << client_stats.status();
    EXPECT_EQ((*client_stats)["pages"], 3);
    EXPECT_EQ((*client_stats)["mode"], "test");
    EXPECT_EQ(progress, (std::vector<std::pair<uint64_t, uint64_t>>{{1, 3}, {3, 3}}));

    // The VMM said bye and went away.
    EXPECT_TRUE((*session)->PeerClosed());
    EXPECT_TRUE((*session)->bye_received());
  }
  EXPECT_NE(access(path_.c_str(), F_OK), 0) << "the server should unlink its socket";
  EXPECT_EQ(CountFds(), fds_before);
}

TEST_F(HandoffTest, CompleteWithErrorReachesTheVmm) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<json> result = absl::UnknownError("not run");
  JoiningThread vmm([&] {
    auto c = HandoffClient::Connect(path_, uffd_.get(), features_, Regions(), absl::Seconds(10));
    if (!c.ok()) {
      result = c.status();
      return;
    }
    result = (*c)->WaitComplete(absl::Seconds(10));
  });
  auto session = (*server)->Accept(absl::Seconds(10), getuid());
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
  ASSERT_TRUE((*session)
                  ->SendComplete(absl::DataLossError("page 7 of pc.ram failed its CRC"), nullptr)
                  .ok());
  vmm.Join();
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "page 7 of pc.ram failed its CRC"))
      << result.status();
}

TEST_F(HandoffTest, RegionsMayShareOneMemfd) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  // RAM split in two around a hole, both halves in one memfd (QEMU's pc.ram below/above 4G).
  const uint64_t half = kMemfdSize / 2;
  std::vector<HandoffClientRegion> regions = {
      {"low", mem_addr(), half, 4096, MemoryKind::kMemfd, memfd_.get(), 0},
      {"high", mem_addr() + half, half, 4096, MemoryKind::kMemfd, memfd_.get(), half}};
  absl::Status client_status;
  JoiningThread vmm([&] {
    client_status =
        HandoffClient::Connect(path_, uffd_.get(), features_, regions, absl::Seconds(10)).status();
  });
  auto session = (*server)->Accept(absl::Seconds(10), getuid());
  ASSERT_TRUE(session.ok()) << session.status();
  HandoffRequest& req = (*session)->request();
  ASSERT_EQ(req.regions.size(), 2u);
  EXPECT_EQ(req.regions[0].fd_index, 1);
  EXPECT_EQ(req.regions[1].fd_index, 1);
  EXPECT_NE(req.regions[0].fd.get(), req.regions[1].fd.get());
  EXPECT_EQ(Inode(req.regions[0].fd.get()), Inode(memfd_.get()));
  EXPECT_EQ(Inode(req.regions[1].fd.get()), Inode(memfd_.get()));
  EXPECT_EQ(req.regions[1].offset, half);
  ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
  vmm.Join();
  EXPECT_TRUE(client_status.ok()) << client_status;
}

struct BadHello {
  const char* name;
  std::string text;
  std::vector<int> fds;
  const char* want;  // in both the server's error and the client's
};

TEST_F(HandoffTest, ValidationErrorsAreAckedAndLeakNoFd) {
  UniqueFd extra(memfd_create("extra", MFD_CLOEXEC));
  ASSERT_TRUE(extra.valid());
  ASSERT_EQ(ftruncate(extra.get(), kMemfdSize), 0);
  const std::vector<int> fds = {uffd_.get(), memfd_.get()};
  auto with = [&](auto mutate) {
    json h = ValidHello();
    mutate(h);
    return h.dump();
  };
  std::vector<BadHello> cases = {
      {"wrong version", with([](json& h) { h["version"] = 3; }), fds, "version mismatch"},
      {"bad start", with([](json& h) {
         h["version"] = 2;
         h["start"] = "later";
       }),
       fds, "\"start\" must be \"listen\" or \"now\""},
      {"overlap", with([&](json& h) { h["regions"][1]["host_addr"] = mem_addr() + 4096; }), fds,
       "overlap"},
      {"length not a page multiple", with([](json& h) { h["regions"][0]["length"] = 12388; }), fds,
       "is not a multiple of page_size"},
      {"memfd without fd", with([](json& h) { h["regions"][0]["fd"] = -1; }), fds,
       "kind memfd needs an fd"},
      {"bad fd index", with([](json& h) { h["regions"][0]["fd"] = 7; }), fds,
       "fd index 7 is out of range (2 fds attached)"},
      {"unknown kind", with([](json& h) { h["regions"][0]["kind"] = "pmem"; }), fds,
       "unknown kind \"pmem\""},
      // The command line's aliases (ParseMemoryKind) are not part of the wire format.
      {"alias kind", with([](json& h) { h["regions"][0]["kind"] = "shmem"; }), fds,
       "unknown kind \"shmem\""},
      {"malformed JSON", "{\"type\":\"hello\",\"version\":1,", fds, "not valid JSON"},
      {"string for a number", with([](json& h) { h["regions"][0]["length"] = "262144"; }), fds,
       "\"length\" must be an unsigned integer, got a string"},
      {"negative number", with([](json& h) { h["uffd_features"] = -1; }), fds,
       "\"uffd_features\" must be an unsigned integer, got a negative integer"},
      {"fraction", with([](json& h) { h["regions"][1]["page_size"] = 4096.5; }), fds,
       "got a fraction"},
      {"oversized", ValidHello().dump() + std::string(70000, ' '), fds,
       "bytes exceeds the 65536-byte limit"},
      {"empty", "", fds, "empty hello"},
      {"unclaimed fd",
       ValidHello().dump(),
       {uffd_.get(), memfd_.get(), extra.get()},
       "attached fd #2 of 3 is claimed by neither"},
      {"no fds", ValidHello().dump(), {}, "uffd_fd index 0 is out of range (0 fds attached)"},
      {"uffd is not a userfaultfd", with([](json& h) {
         h["uffd_fd"] = 1;
         h["regions"][0]["fd"] = 0;
       }),
       fds, "is not a userfaultfd"},
      {"memfd too small", with([](json& h) { h["regions"][0]["length"] = 2 * kMemfdSize; }), fds,
       "smaller than offset + length"},
      {"anon with an fd", with([](json& h) { h["regions"][1]["fd"] = 1; }), fds,
       "kind anon has no fd"},
      {"page size not a power of two", with([](json& h) { h["regions"][0]["page_size"] = 6144; }),
       fds, "is not a power of two"},
      {"no regions",
       with([](json& h) { h["regions"] = json::array(); }),
       {uffd_.get()},
       "has 0 regions"},
      {"duplicate names", with([](json& h) { h["regions"][1]["name"] = "pc.ram"; }), fds,
       "two regions are named \"pc.ram\""},
      {"not a hello", json{{"type", "bye"}}.dump(), fds, "expected a hello message first"},
      {"array hello", with([](json& h) { h = json::array({h}); }), fds,
       "hello must be a JSON object"},
      {"migration with a space", with([](json& h) { h["migration"] = "mig 1"; }), fds,
       "\"migration\" contains byte 0x20"},
  };

  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  for (const BadHello& c : cases) {
    SCOPED_TRACE(c.name);
    const int before = CountFds();
    absl::Status client_status;
    {
      JoiningThread vmm([&] {
        client_status =
            HandoffClient::ConnectWithHello(path_, c.text, c.fds, absl::Seconds(10)).status();
      });
      absl::StatusOr<std::unique_ptr<HandoffSession>> session =
          (*server)->Accept(absl::Seconds(10), getuid());
      ASSERT_FALSE(session.ok());
      EXPECT_TRUE(absl::StrContains(session.status().message(), c.want)) << session.status();
    }
    ASSERT_FALSE(client_status.ok());
    EXPECT_TRUE(absl::StrContains(client_status.message(), c.want)) << client_status;
    EXPECT_TRUE(absl::StrContains(client_status.message(), "faultline refused the hand-off"))
        << client_status;
    EXPECT_EQ(CountFds(), before);
  }
}

TEST_F(HandoffTest, VersionMismatchKeepsItsCode) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  json h = ValidHello();
  h["version"] = 9;
  absl::Status client_status;
  {
    JoiningThread vmm([&] {
      const int fds[] = {uffd_.get(), memfd_.get()};
      client_status =
          HandoffClient::ConnectWithHello(path_, h.dump(), fds, absl::Seconds(10)).status();
    });
    auto session = (*server)->Accept(absl::Seconds(10), getuid());
    ASSERT_FALSE(session.ok());
    EXPECT_EQ(session.status().code(), absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(client_status.code(), absl::StatusCode::kFailedPrecondition) << client_status;
  EXPECT_TRUE(absl::StrContains(client_status.message(),
                                "the VMM speaks version 9, faultline speaks versions 1 to 2"))
      << client_status;
}

// A hello whose length's low byte is '[' must not be taken for Firecracker's JSON array.
TEST_F(HandoffTest, LengthPrefixStartingWithBracketIsStillOurs) {
  std::string text = ValidHello().dump();
  size_t want = text.size();
  while ((want & 0xff) != '[') ++want;
  text.append(want - text.size(), ' ');
  ASSERT_EQ(text.size() & 0xff, static_cast<size_t>('['));

  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  absl::Status client_status;
  JoiningThread vmm([&] {
    const int fds[] = {uffd_.get(), memfd_.get()};
    client_status = HandoffClient::ConnectWithHello(path_, text, fds, absl::Seconds(10)).status();
  });
  auto session = (*server)->Accept(absl::Seconds(10), getuid());
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ((*session)->format(), HandoffFormat::kFaultline);
  EXPECT_EQ((*session)->request().vmm, "test-vmm");
  ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
  vmm.Join();
  EXPECT_TRUE(client_status.ok()) << client_status;
}

TEST_F(HandoffTest, FirecrackerFormat) {
  const int fds_before = CountFds();
  {
    absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
    ASSERT_TRUE(server.ok()) << server.status();
    std::vector<HandoffClientRegion> regions = {
        {"", anon_addr(), kAnonSize, 4096, MemoryKind::kAnonymous, -1, 0},
        {"", mem_addr(), kMemfdSize, 4096, MemoryKind::kAnonymous, -1, kAnonSize}};
    absl::StatusOr<UniqueFd> fc = SendFirecrackerHandoff(path_, uffd_.get(), regions);
    ASSERT_TRUE(fc.ok()) << fc.status();

    auto session = (*server)->Accept(absl::Seconds(10), getuid());
    ASSERT_TRUE(session.ok()) << session.status();
    HandoffRequest& req = (*session)->request();
    EXPECT_EQ(req.format, HandoffFormat::kFirecracker);
    EXPECT_EQ(req.vmm, "firecracker");
    EXPECT_EQ(req.peer_pid, getpid());
    ASSERT_TRUE(req.uffd.valid());
    EXPECT_EQ(FdTarget(req.uffd.get()), "anon_inode:[userfaultfd]");
    ASSERT_EQ(req.regions.size(), 2u);
    EXPECT_EQ(req.regions[0].name, "fc-0");
    EXPECT_EQ(req.regions[0].host_addr, anon_addr());
    EXPECT_EQ(req.regions[0].length, kAnonSize);
    EXPECT_EQ(req.regions[0].page_size, 4096u);
    EXPECT_EQ(req.regions[0].offset, 0u);
    EXPECT_EQ(req.regions[0].kind, MemoryKind::kAnonymous);
    EXPECT_FALSE(req.regions[0].fd.valid());
    EXPECT_EQ(req.regions[1].name, "fc-1");
    EXPECT_EQ(req.regions[1].host_addr, mem_addr());
    EXPECT_EQ(req.regions[1].offset, kAnonSize);

    // Firecracker expects no reply: these send nothing.
    EXPECT_TRUE((*session)->Ack(absl::OkStatus()).ok());
    EXPECT_TRUE((*session)->SendProgress(1, 2).ok());
    EXPECT_TRUE((*session)->SendComplete(absl::OkStatus(), json::object()).ok());
    struct pollfd p = {fc->get(), POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 50), 0) << "Firecracker must not receive anything";

    EXPECT_FALSE((*session)->PeerClosed());
    fc->reset();
    EXPECT_TRUE((*session)->PeerClosed());
  }
  EXPECT_EQ(CountFds(), fds_before);
}

TEST_F(HandoffTest, FirecrackerWithTwoFdsIsRefused) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  const int before = CountFds();
  {
    UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    struct sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path_.data(), path_.size());
    ASSERT_EQ(connect(s.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)), 0);
    std::string text = absl::StrCat("[{\"base_host_virt_addr\":", anon_addr(),
                                    ",\"size\":4096,\"offset\":0,\"page_size\":4096}]");
    const int fds[] = {uffd_.get(), memfd_.get()};
    ASSERT_TRUE(SendWithFds(s.get(), text, fds).ok());
    auto session = (*server)->Accept(absl::Seconds(10), getuid());
    ASSERT_FALSE(session.ok());
    EXPECT_TRUE(absl::StrContains(session.status().message(), "carries 2 fds; expected exactly 1"))
        << session.status();
  }
  EXPECT_EQ(CountFds(), before);
}

TEST_F(HandoffTest, RootPeerIsAllowedWhateverAllowedUid) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root: checks that uid 0 is always let in";
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  absl::Status client_status;
  JoiningThread vmm([&] {
    client_status =
        HandoffClient::Connect(path_, uffd_.get(), features_, Regions(), absl::Seconds(10))
            .status();
  });
  auto session = (*server)->Accept(absl::Seconds(10), /*allowed_uid=*/4242);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ((*session)->request().peer_uid, 0u);
  ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
  vmm.Join();
  EXPECT_TRUE(client_status.ok()) << client_status;
}

TEST_F(HandoffTest, OtherUidIsRefused) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to fork a child that setuid()s to 65534";
  }
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  // Let uid 65534 reach the socket at all (the server creates it 0600, the dir is 0700).
  ASSERT_EQ(chmod(dir_.c_str(), 0711), 0);
  ASSERT_EQ(chmod(path_.c_str(), 0666), 0);
  int pipefd[2];
  ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
  UniqueFd rd(pipefd[0]), wr(pipefd[1]);
  const std::vector<HandoffClientRegion> regions = Regions();
  pid_t pid = fork();
  ASSERT_GE(pid, 0) << strerror(errno);
  if (pid == 0) {
    rd.reset();
    int err = 0;
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) err = errno;
    (void)!write(wr.get(), &err, sizeof(err));
    if (err != 0) _exit(10);
    absl::StatusOr<std::unique_ptr<HandoffClient>> c =
        HandoffClient::Connect(path_, uffd_.get(), features_, regions, absl::Seconds(10));
    if (c.ok()) _exit(2);
    if (c.status().code() != absl::StatusCode::kPermissionDenied) _exit(3);
    if (!absl::StrContains(c.status().message(), "faultline refused the hand-off")) _exit(4);
    if (!absl::StrContains(c.status().message(), "uid 65534")) _exit(5);
    _exit(0);
  }
  wr.reset();
  int err = 0;
  ASSERT_EQ(read(rd.get(), &err, sizeof(err)), static_cast<ssize_t>(sizeof(err)));
  if (err != 0) {
    int st;
    waitpid(pid, &st, 0);
    std::string uid_map;
    if (FILE* f = fopen("/proc/self/uid_map", "r")) {
      char line[128];
      while (fgets(line, sizeof(line), f)) uid_map += line;
      fclose(f);
    }
    GTEST_SKIP() << "the child cannot become uid 65534 (" << strerror(err)
                 << "); a user namespace without that uid? uid_map: " << uid_map;
  }
  auto session = (*server)->Accept(absl::Seconds(10), /*allowed_uid=*/4242);
  ASSERT_FALSE(session.ok());
  EXPECT_EQ(session.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(session.status().message(), "uid 65534")) << session.status();
  EXPECT_TRUE(absl::StrContains(session.status().message(), "uid 4242")) << session.status();
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 0) << "child: 2 accepted, 3 wrong code, 4/5 wrong message";
}

TEST_F(HandoffTest, PeerClosedAfterClientIsDestroyed) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<std::unique_ptr<HandoffClient>> client = absl::UnknownError("not run");
  JoiningThread vmm([&] {
    client = HandoffClient::Connect(path_, uffd_.get(), features_, Regions(), absl::Seconds(10));
  });
  auto session = (*server)->Accept(absl::Seconds(10), getuid());
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
  vmm.Join();
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_FALSE((*session)->PeerClosed());

  // Nothing to read yet: the client's Next times out; then faultline goes quiet for good.
  absl::StatusOr<json> m = (*client)->Next(absl::Milliseconds(50));
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDeadlineExceeded) << m.status();

  client->reset();
  EXPECT_TRUE((*session)->PeerClosed());
  EXPECT_FALSE((*session)->bye_received());
  EXPECT_TRUE((*session)->PeerClosed());  // and stays so
}

TEST_F(HandoffTest, ClientSeesFaultlineGoAway) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<std::unique_ptr<HandoffClient>> client = absl::UnknownError("not run");
  JoiningThread vmm([&] {
    client = HandoffClient::Connect(path_, uffd_.get(), features_, Regions(), absl::Seconds(10));
  });
  {
    auto session = (*server)->Accept(absl::Seconds(10), getuid());
    ASSERT_TRUE(session.ok()) << session.status();
    ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
    ASSERT_TRUE((*session)->SendProgress(5, 10).ok());
    vmm.Join();
  }  // faultline's session ends without "complete"
  ASSERT_TRUE(client.ok()) << client.status();
  uint64_t last_done = 0;
  absl::StatusOr<json> r =
      (*client)->WaitComplete(absl::Seconds(5), [&](uint64_t done, uint64_t) { last_done = done; });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_EQ(last_done, 5u);
  EXPECT_EQ((*client)->Next(absl::Seconds(1)).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(HandoffTest, AcceptTimesOut) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  absl::Time start = absl::Now();
  auto session = (*server)->Accept(absl::Milliseconds(100), getuid());
  EXPECT_EQ(session.status().code(), absl::StatusCode::kDeadlineExceeded) << session.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST_F(HandoffTest, SilentAndPartialPeersTimeOutWithAnAck) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  (*server)->set_hello_timeout(absl::Milliseconds(200));
  const int before = CountFds();
  for (int partial = 0; partial < 2; ++partial) {
    SCOPED_TRACE(partial ? "partial hello" : "silent peer");
    UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    struct sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path_.data(), path_.size());
    ASSERT_EQ(connect(s.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)), 0);
    if (partial) {
      const char part[] = {100, 0, 0, 0, '{', '"'};  // promises 100 bytes, sends 2
      ASSERT_EQ(send(s.get(), part, sizeof(part), MSG_NOSIGNAL), 6);
    }
    auto session = (*server)->Accept(absl::Seconds(5), getuid());
    EXPECT_EQ(session.status().code(), absl::StatusCode::kDeadlineExceeded) << session.status();
    // The ack{ok:false} is waiting for the peer.
    char buf[512];
    ssize_t n = recv(s.get(), buf, sizeof(buf), 0);
    ASSERT_GT(n, 4);
    std::string body(buf + 4, n - 4);
    EXPECT_TRUE(absl::StrContains(body, "\"ok\":false")) << body;
    EXPECT_TRUE(absl::StrContains(body, "did not arrive in time")) << body;
  }
  EXPECT_EQ(CountFds(), before);
}

TEST_F(HandoffTest, ListenReplacesStaleSocketButNotLiveOnesOrFiles) {
  // A stale socket file: bound, never unlinked, nobody listening.
  {
    UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    struct sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path_.data(), path_.size());
    ASSERT_EQ(bind(s.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)), 0);
  }
  {
    absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
    ASSERT_TRUE(server.ok()) << server.status();
    EXPECT_EQ((*server)->path(), path_);
    absl::StatusOr<std::unique_ptr<HandoffServer>> second = HandoffServer::Listen(path_);
    EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
    EXPECT_TRUE(absl::StrContains(second.status().message(), "another process is listening"));
    // The probe's connection is pending on the first server: Accept skips it.
    EXPECT_EQ((*server)->Accept(absl::Milliseconds(100), getuid()).status().code(),
              absl::StatusCode::kDeadlineExceeded);
    (void)HandoffServer::Listen(path_);  // probe again, then a real VMM behind it
    absl::Status client_status;
    JoiningThread vmm([&] {
      client_status =
          HandoffClient::Connect(path_, uffd_.get(), features_, Regions(), absl::Seconds(10))
              .status();
    });
    auto session = (*server)->Accept(absl::Seconds(10), getuid());
    ASSERT_TRUE(session.ok()) << session.status();
    ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
    vmm.Join();
    EXPECT_TRUE(client_status.ok()) << client_status;
  }
  EXPECT_NE(access(path_.c_str(), F_OK), 0);

  UniqueFd f(open(path_.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  ASSERT_TRUE(f.valid());
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kAlreadyExists) << server.status();
  EXPECT_EQ(access(path_.c_str(), F_OK), 0) << "a regular file must be left alone";

  std::string long_path = dir_ + "/" + std::string(120, 'x');
  EXPECT_EQ(HandoffServer::Listen(long_path).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(HandoffTest, HugetlbRegionIsCheckedAgainstItsFd) {
  UniqueFd huge(memfd_create("handoff-huge", MFD_CLOEXEC | MFD_HUGETLB | MFD_HUGE_2MB));
  if (!huge.valid()) GTEST_SKIP() << "no 2 MiB hugetlb memfd here: " << strerror(errno);
  ASSERT_EQ(ftruncate(huge.get(), 4 << 20), 0) << strerror(errno);
  UniqueFd plain(memfd_create("handoff-plain", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(plain.get(), 4 << 20), 0);
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  const uint64_t kGiB = 1ull << 30;
  struct Case {
    uint32_t page_size;
    uint64_t length;
    int fd;
    const char* want;  // nullptr: accepted
  } cases[] = {
      {2u << 20, 4u << 20, huge.get(), nullptr},
      {1u << 30, kGiB, huge.get(), "page_size 1073741824 but the fd's huge pages are 2097152"},
      {2u << 20, 2u << 20, plain.get(), "kind hugetlb, but the fd is not on hugetlbfs"},
      {2u << 20, 8u << 20, huge.get(), "smaller than offset + length"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.want ? c.want : "ok");
    std::vector<HandoffClientRegion> regions = {
        {"huge", 1ull << 40, c.length, c.page_size, MemoryKind::kHugetlb, c.fd, 0}};
    absl::Status client_status;
    JoiningThread vmm([&] {
      client_status =
          HandoffClient::Connect(path_, uffd_.get(), features_, regions, absl::Seconds(10))
              .status();
    });
    auto session = (*server)->Accept(absl::Seconds(10), getuid());
    if (c.want == nullptr) {
      ASSERT_TRUE(session.ok()) << session.status();
      EXPECT_EQ((*session)->request().regions[0].page_size, 2u << 20);
      ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
      vmm.Join();
      EXPECT_TRUE(client_status.ok()) << client_status;
    } else {
      ASSERT_FALSE(session.ok());
      EXPECT_TRUE(absl::StrContains(session.status().message(), c.want)) << session.status();
      vmm.Join();
      EXPECT_TRUE(absl::StrContains(client_status.message(), c.want)) << client_status;
    }
  }
}

TEST_F(HandoffTest, ConnectWithoutServerFailsAfterTimeout) {
  absl::Time start = absl::Now();
  auto c =
      HandoffClient::Connect(path_, uffd_.get(), features_, Regions(), absl::Milliseconds(100));
  EXPECT_FALSE(c.ok());
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(90));
  EXPECT_TRUE(absl::StrContains(c.status().message(), "connect to")) << c.status();
}

TEST_F(HandoffTest, MigrationIdRoundTrips) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  for (const std::string id : {"mig-2024.06_07:a", ""}) {
    SCOPED_TRACE(id);
    absl::Status client_status;
    JoiningThread vmm([&] {
      client_status = HandoffClient::Connect(path_, uffd_.get(), features_, Regions(),
                                             absl::Seconds(10), "faultline-vmm", false, id)
                          .status();
    });
    auto session = (*server)->Accept(absl::Seconds(10), getuid());
    ASSERT_TRUE(session.ok()) << session.status();
    EXPECT_EQ((*session)->request().migration, id);
    ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
    vmm.Join();
    EXPECT_TRUE(client_status.ok()) << client_status;
  }
}

// The calls a daemon serving many VMMs uses: AcceptConnection (non-blocking), then Open or
// Refuse.
TEST_F(HandoffTest, NonBlockingAcceptOpenAndRefuse) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  const int before = CountFds();
  absl::StatusOr<AcceptedConnection> none = (*server)->AcceptConnection();
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable) << none.status();
  auto next = [&]() -> absl::StatusOr<AcceptedConnection> {
    struct pollfd p = {(*server)->fd(), POLLIN, 0};
    if (poll(&p, 1, 10000) != 1) return absl::DeadlineExceededError("nobody connected");
    return (*server)->AcceptConnection();
  };

  {  // Open: a VMM's hello, with its credentials.
    absl::Status client_status;
    JoiningThread vmm([&] {
      client_status =
          HandoffClient::Connect(path_, uffd_.get(), features_, Regions(), absl::Seconds(10))
              .status();
    });
    absl::StatusOr<AcceptedConnection> c = next();
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->peer.pid, getpid());
    EXPECT_EQ(c->peer.uid, getuid());
    EXPECT_EQ(c->peer.gid, getgid());
    bool silent = true;
    absl::StatusOr<std::unique_ptr<HandoffSession>> session =
        HandoffSession::Open(std::move(*c), absl::Now() + absl::Seconds(10), &silent);
    ASSERT_TRUE(session.ok()) << session.status();
    EXPECT_FALSE(silent);
    EXPECT_EQ((*session)->peer().pid, getpid());
    EXPECT_EQ((*session)->peer().uid, getuid());
    EXPECT_EQ((*session)->peer().gid, getgid());
    EXPECT_EQ((*session)->request().peer_pid, getpid());
    EXPECT_EQ((*session)->request().peer_uid, getuid());
    EXPECT_EQ((*session)->request().regions.size(), 2u);
    ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
    vmm.Join();
    EXPECT_TRUE(client_status.ok()) << client_status;
  }
  {  // Refuse: the VMM hears why, nothing of its is read.
    absl::Status client_status;
    JoiningThread vmm([&] {
      client_status =
          HandoffClient::Connect(path_, uffd_.get(), features_, Regions(), absl::Seconds(10))
              .status();
    });
    absl::StatusOr<AcceptedConnection> c = next();
    ASSERT_TRUE(c.ok()) << c.status();
    HandoffSession::Refuse(std::move(*c),
                           absl::PermissionDeniedError("migration \"m1\" is not registered"));
    vmm.Join();
    EXPECT_EQ(client_status.code(), absl::StatusCode::kPermissionDenied) << client_status;
    EXPECT_TRUE(absl::StrContains(client_status.message(), "migration \"m1\" is not registered"))
        << client_status;
  }
  {  // A validation error: acked as Accept does, and returned.
    absl::Status client_status;
    JoiningThread vmm([&] {
      json h = ValidHello();
      h["migration"] = std::string(65, 'm');
      const int fds[] = {uffd_.get(), memfd_.get()};
      client_status =
          HandoffClient::ConnectWithHello(path_, h.dump(), fds, absl::Seconds(10)).status();
    });
    absl::StatusOr<AcceptedConnection> c = next();
    ASSERT_TRUE(c.ok()) << c.status();
    bool silent = true;
    absl::StatusOr<std::unique_ptr<HandoffSession>> session =
        HandoffSession::Open(std::move(*c), absl::Now() + absl::Seconds(10), &silent);
    EXPECT_FALSE(silent);
    ASSERT_FALSE(session.ok());
    EXPECT_TRUE(absl::StrContains(session.status().message(), "\"migration\" is 65 bytes"))
        << session.status();
    vmm.Join();
    EXPECT_TRUE(absl::StrContains(client_status.message(), "\"migration\" is 65 bytes"))
        << client_status;
  }
  {  // A probe that closes without a byte is silent.
    UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    struct sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path_.data(), path_.size());
    ASSERT_EQ(connect(s.get(), reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)), 0);
    s.reset();
    absl::StatusOr<AcceptedConnection> c = next();
    ASSERT_TRUE(c.ok()) << c.status();
    bool silent = false;
    absl::StatusOr<std::unique_ptr<HandoffSession>> session =
        HandoffSession::Open(std::move(*c), absl::Now() + absl::Seconds(10), &silent);
    EXPECT_FALSE(session.ok());
    EXPECT_TRUE(silent);
  }
  EXPECT_EQ((*server)->AcceptConnection().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CountFds(), before);
}

// ---- The pure parsers ----

TEST(HandoffParse, FaultlineHelloFields) {
  const std::string text = R"({"type":"hello","version":1,"vmm":"qemu","uffd_features":513,
    "registered":false,"uffd_fd":2,"future_field":{"x":1},
    "regions":[{"name":"pc.ram","host_addr":1073741824,"length":2097152,"page_size":2097152,
                "kind":"hugetlb","fd":0,"offset":4194304},
               {"name":"gmem","host_addr":0,"length":4096,"page_size":4096,
                "kind":"guest_memfd","fd":1,"offset":0}]})";
  absl::StatusOr<HandoffRequest> r = ParseFaultlineHello(text, 3);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->format, HandoffFormat::kFaultline);
  EXPECT_EQ(r->vmm, "qemu");
  EXPECT_EQ(r->uffd_features, 513u);
  EXPECT_FALSE(r->registered);
  EXPECT_EQ(r->uffd_index, 2);
  ASSERT_EQ(r->regions.size(), 2u);
  EXPECT_EQ(r->regions[0].page_size, 2097152u);
  EXPECT_EQ(r->regions[0].offset, 4194304u);
  EXPECT_EQ(r->regions[0].fd_index, 0);
  EXPECT_EQ(r->regions[1].kind, MemoryKind::kGuestMemfd);
  EXPECT_FALSE(r->regions[0].fd.valid());
  EXPECT_FALSE(r->resume);  // optional, false when absent

  // "resume": a boolean or nothing.
  std::string resumed = text;
  resumed.replace(resumed.find("\"registered\""), 0, "\"resume\":true,");
  absl::StatusOr<HandoffRequest> rr = ParseFaultlineHello(resumed, 3);
  ASSERT_TRUE(rr.ok()) << rr.status();
  EXPECT_TRUE(rr->resume);
  resumed = text;
  resumed.replace(resumed.find("\"registered\""), 0, "\"resume\":1,");
  EXPECT_TRUE(absl::StrContains(ParseFaultlineHello(resumed, 3).status().message(), "resume"))
      << ParseFaultlineHello(resumed, 3).status();

  // Misaligned host_addr and offset for the 2 MiB page size.
  std::string bad = text;
  bad.replace(bad.find("1073741824"), 10, "1073745920");
  EXPECT_TRUE(absl::StrContains(ParseFaultlineHello(bad, 3).status().message(),
                                "host_addr 0x40001000 is not aligned to page_size 2097152"));
  bad = text;
  bad.replace(bad.find("4194304"), 7, "4198400");
  EXPECT_TRUE(absl::StrContains(ParseFaultlineHello(bad, 3).status().message(),
                                "offset 4198400 is not a multiple"));
  // Wraps around the address space.
  bad = text;
  bad.replace(bad.find("1073741824"), 10, "18446744073707454464");
  EXPECT_TRUE(absl::StrContains(ParseFaultlineHello(bad, 3).status().message(), "overflows"));
  // Name rules.
  bad = text;
  bad.replace(bad.find("pc.ram"), 6, std::string(65, 'n'));
  EXPECT_TRUE(absl::StrContains(ParseFaultlineHello(bad, 3).status().message(), "65 bytes"));
  bad = text;
  bad.replace(bad.find("pc.ram"), 6, "pc\\nram");
  EXPECT_TRUE(
      absl::StrContains(ParseFaultlineHello(bad, 3).status().message(), "control characters"));
  // Too many fds to ever be claimed.
  EXPECT_TRUE(
      absl::StrContains(ParseFaultlineHello(text, 1000).status().message(), "1000 fds attached"));
}

// The region's "kind" on the wire is exactly MemoryKindName's string, for every kind.
TEST(HandoffParse, EveryMemoryKindByItsWireName) {
  const std::pair<const char*, MemoryKind> wire[] = {{"anon", MemoryKind::kAnonymous},
                                                     {"memfd", MemoryKind::kMemfd},
                                                     {"hugetlb", MemoryKind::kHugetlb},
                                                     {"guest_memfd", MemoryKind::kGuestMemfd}};
  for (const auto& [name, kind] : wire) {
    EXPECT_STREQ(MemoryKindName(kind), name);
    const bool fd = kind != MemoryKind::kAnonymous;
    const std::string text = absl::StrCat(
        R"({"type":"hello","version":1,"vmm":"t","uffd_features":0,"registered":true,)",
        R"("uffd_fd":0,"regions":[{"name":"r","host_addr":0,"length":2097152,)",
        R"("page_size":4096,"kind":")", name, R"(","fd":)", fd ? 1 : -1, R"(,"offset":0}]})");
    absl::StatusOr<HandoffRequest> r = ParseFaultlineHello(text, fd ? 2 : 1);
    ASSERT_TRUE(r.ok()) << name << ": " << r.status();
    ASSERT_EQ(r->regions.size(), 1u);
    EXPECT_EQ(r->regions[0].kind, kind) << name;
  }
}

TEST(HandoffParse, MigrationId) {
  const std::string base =
      R"({"type":"hello","version":1,"vmm":"v","uffd_features":0,"registered":true,)"
      R"("uffd_fd":0,"regions":[{"name":"r","host_addr":4096,"length":8192,"page_size":4096,)"
      R"("kind":"anon","fd":-1,"offset":0}])";
  auto with = [&](const std::string& value) { return base + R"(,"migration":)" + value + "}"; };
  absl::StatusOr<HandoffRequest> r = ParseFaultlineHello(base + "}", 1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->migration, "");  // optional
  r = ParseFaultlineHello(with(R"("vm-42.host_b:7")"), 1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->migration, "vm-42.host_b:7");
  const std::string longest(kMaxHandoffMigrationId, 'a');
  r = ParseFaultlineHello(with("\"" + longest + "\""), 1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->migration, longest);

  const std::pair<std::string, const char*> bad[] = {
      {R"("")", "\"migration\" is empty"},
      {"\"" + std::string(kMaxHandoffMigrationId + 1, 'a') + "\"", "\"migration\" is 65 bytes"},
      {R"("a\nb")", "\"migration\" contains byte 0x0a"},
      {R"("a\u007fb")", "\"migration\" contains byte 0x7f"},
      {R"("caf\u00e9")", "\"migration\" contains byte 0xc3"},
      {R"("a b")", "\"migration\" contains byte 0x20"},
      {R"("a/b")", "\"migration\" contains byte 0x2f"},
      {"7", "\"migration\" must be a string, got an unsigned integer"},
      {"null", "\"migration\" must be a string, got null"},
  };
  for (const auto& [value, want] : bad) {
    SCOPED_TRACE(value);
    absl::StatusOr<HandoffRequest> b = ParseFaultlineHello(with(value), 1);
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(b.status().message(), want)) << b.status();
  }
}

TEST(HandoffParse, TooManyRegions) {
  json h = {{"type", "hello"},    {"version", 1},       {"vmm", "v"},
            {"uffd_features", 0}, {"registered", true}, {"uffd_fd", 0}};
  json regions = json::array();
  for (int i = 0; i < 65; ++i) {
    regions.push_back(json{{"name", absl::StrCat("r", i)},
                           {"host_addr", (i + 1) * 4096},
                           {"length", 4096},
                           {"page_size", 4096},
                           {"kind", "anon"},
                           {"fd", -1},
                           {"offset", 0}});
  }
  h["regions"] = regions;
  EXPECT_TRUE(absl::StrContains(ParseFaultlineHello(h.dump(), 1).status().message(),
                                "has 65 regions, want 1..64"));
  h["regions"].erase(64);
  EXPECT_TRUE(ParseFaultlineHello(h.dump(), 1).ok());
}

TEST(HandoffParse, FirecrackerMessage) {
  // Exactly what Firecracker sends (page_size_kib carries bytes, despite its name).
  const std::string fc =
      R"([{"base_host_virt_addr":140000000000000,"size":134217728,"offset":0,"page_size":4096,)"
      R"("page_size_kib":4096},{"base_host_virt_addr":140000134217728,"size":4096,)"
      R"("offset":134217728,"page_size":4096,"page_size_kib":4096}])";
  absl::StatusOr<HandoffRequest> r = ParseFirecrackerMessage(fc);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->format, HandoffFormat::kFirecracker);
  EXPECT_EQ(r->uffd_index, 0);
  ASSERT_EQ(r->regions.size(), 2u);
  EXPECT_EQ(r->regions[0].name, "fc-0");
  EXPECT_EQ(r->regions[0].host_addr, 140000000000000u);
  EXPECT_EQ(r->regions[0].length, 134217728u);
  EXPECT_EQ(r->regions[1].offset, 134217728u);
  EXPECT_EQ(r->regions[1].kind, MemoryKind::kAnonymous);

  auto page_size_of = [](const std::string& fields) -> absl::StatusOr<uint32_t> {
    absl::StatusOr<HandoffRequest> r = ParseFirecrackerMessage(absl::StrCat(
        R"([{"base_host_virt_addr":1073741824,"size":4194304,"offset":0,)", fields, "}]"));
    if (!r.ok()) return r.status();
    return r->regions[0].page_size;
  };
  EXPECT_EQ(*page_size_of(R"("page_size_kib":4096)"), 4096u);        // older Firecracker: bytes
  EXPECT_EQ(*page_size_of(R"("page_size_kib":2097152)"), 2097152u);  // 2 MiB hugetlbfs, bytes
  EXPECT_EQ(*page_size_of(R"("page_size_kib":4)"), 4096u);           // really KiB
  EXPECT_EQ(*page_size_of(R"("page_size_kib":2048)"), 2097152u);
  EXPECT_EQ(*page_size_of(R"("page_size":2097152,"page_size_kib":0)"), 2097152u);
  EXPECT_EQ(*page_size_of(R"("page_size":4096,"extra":[1,2],"page_size_kib":4096)"), 4096u);
  EXPECT_TRUE(absl::StrContains(
      page_size_of(R"("page_size":4096,"page_size_kib":2097152)").status().message(), "disagree"));
  EXPECT_TRUE(
      absl::StrContains(page_size_of(R"("x":1)").status().message(), "missing \"page_size\""));
  EXPECT_TRUE(absl::StrContains(page_size_of(R"("page_size":"4096")").status().message(),
                                "\"page_size\" must be an unsigned integer, got a string"));

  EXPECT_FALSE(ParseFirecrackerMessage("[]").ok());
  EXPECT_FALSE(ParseFirecrackerMessage("[1]").ok());
  EXPECT_FALSE(ParseFirecrackerMessage(R"({"base_host_virt_addr":0})").ok());
  EXPECT_TRUE(absl::StrContains(
      ParseFirecrackerMessage(
          R"([{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},)"
          R"({"base_host_virt_addr":8192,"size":4096,"offset":0,"page_size":4096}])")
          .status()
          .message(),
      "overlap"));
}

// Random bytes, truncations and single-byte mutations: always a status, never a crash.
TEST(HandoffParse, FuzzStyle) {
  std::mt19937 rng(20240607);
  const std::string alphabet = "{}[]\":,-.0123456789eE truefalsn\\u";
  for (int i = 0; i < 400; ++i) {
    std::string s(rng() % 200, '\0');
    for (char& c : s) {
      c = (rng() % 2) ? alphabet[rng() % alphabet.size()] : static_cast<char>(rng());
    }
    (void)ParseFaultlineHello(s, rng() % 4);
    (void)ParseFirecrackerMessage(s);
  }
  const std::string hello =
      R"({"type":"hello","version":1,"vmm":"v","uffd_features":0,"registered":true,)"
      R"("uffd_fd":0,"regions":[{"name":"r","host_addr":4096,"length":8192,"page_size":4096,)"
      R"("kind":"memfd","fd":1,"offset":0}]})";
  const std::string fc = R"([{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096,)"
                         R"("page_size_kib":4096}])";
  ASSERT_TRUE(ParseFaultlineHello(hello, 2).ok());
  ASSERT_TRUE(ParseFirecrackerMessage(fc).ok());
  for (size_t n = 0; n < hello.size(); ++n) {
    EXPECT_FALSE(ParseFaultlineHello(hello.substr(0, n), 2).ok()) << n;
  }
  for (size_t n = 0; n < fc.size(); ++n) {
    EXPECT_FALSE(ParseFirecrackerMessage(fc.substr(0, n)).ok()) << n;
  }
  for (int i = 0; i < 400; ++i) {
    std::string h = hello, f = fc;
    h[rng() % h.size()] = static_cast<char>(rng());
    f[rng() % f.size()] = static_cast<char>(rng());
    (void)ParseFaultlineHello(h, rng() % 3);
    (void)ParseFirecrackerMessage(f);
  }
  // Deep nesting inside the 64 KiB limit.
  std::string deep = std::string(30000, '[') + std::string(30000, ']');
  EXPECT_FALSE(ParseFirecrackerMessage(deep).ok());
  EXPECT_FALSE(ParseFaultlineHello(deep, 1).ok());
}

// ---- Version 2 (QEMU 10.2's x-postcopy-external-pager): attach, hello at ADVISE, listen ----

UniqueFd ConnectRaw(const std::string& path) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct sockaddr_un a = {};
  a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
  for (int i = 0; i < 200; ++i) {
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) return fd;
    usleep(10000);
  }
  return UniqueFd();
}

std::string FrameOf(const json& m) {
  std::string body = m.dump();
  std::string frame(4, '\0');
  for (int i = 0; i < 4; ++i) frame[i] = static_cast<char>((body.size() >> (8 * i)) & 0xff);
  return frame + body;
}

bool SendFrame(int fd, const json& m, absl::Span<const int> fds = {}) {
  return SendWithFds(fd, FrameOf(m), fds).ok();
}

// The next framed message (null at EOF).
json ReadFrameJson(int fd) {
  unsigned char hdr[4];
  if (recv(fd, hdr, 4, MSG_WAITALL) != 4) return json();
  const uint32_t n = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | static_cast<uint32_t>(hdr[3]) << 24;
  std::string body(n, '\0');
  if (recv(fd, &body[0], n, MSG_WAITALL) != static_cast<ssize_t>(n)) return json();
  return json::parse(body, nullptr, false);
}

json Attach(int version) {
  return {{"type", "attach"}, {"version", version}, {"vmm", "qemu-10.2.2"}};
}

TEST_F(HandoffTest, Version2AttachThenHelloThenListen) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  // An attached VMM may hand over much later than a plain one must (post-copy ADVISE).
  (*server)->set_hello_timeout(absl::Milliseconds(300));
  json attached, ack;
  std::atomic<bool> listen_sent{false};
  JoiningThread vmm([&] {
    UniqueFd c = ConnectRaw(path_);
    ASSERT_TRUE(c.valid());
    ASSERT_TRUE(SendFrame(c.get(), Attach(2)));
    attached = ReadFrameJson(c.get());
    absl::SleepFor(absl::Milliseconds(600));  // twice the hello timeout
    const int fds[] = {uffd_.get(), memfd_.get()};
    ASSERT_TRUE(SendFrame(c.get(), ListenHello(), fds));
    ack = ReadFrameJson(c.get());
    absl::SleepFor(absl::Milliseconds(300));
    ASSERT_TRUE(SendFrame(c.get(), {{"type", "x-unknown"}}));  // skipped
    listen_sent.store(true);
    ASSERT_TRUE(SendFrame(c.get(), {{"type", "listen"}}));
    ReadFrameJson(c.get());  // until faultline hangs up
  });
  auto session = (*server)->Accept(absl::Seconds(10), getuid());
  ASSERT_TRUE(session.ok()) << session.status();
  HandoffRequest& req = (*session)->request();
  EXPECT_EQ(req.version, 2u);
  EXPECT_TRUE(req.attached);
  EXPECT_TRUE(req.start_on_listen);
  EXPECT_EQ(Inode(req.regions[0].fd.get()), Inode(memfd_.get()));
  ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
  absl::Status s = (*session)->WaitListen();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(listen_sent.load());  // it waited for "listen"
  EXPECT_FALSE((*session)->PeerClosed());
  session->reset();
  vmm.Join();
  EXPECT_EQ(attached, (json{{"type", "attached"}, {"version", 2}, {"pager", "faultline"}}));
  EXPECT_EQ(ack, (json{{"type", "ack"}, {"ok", true}}));
}

TEST_F(HandoffTest, Version2StartNowAndNoAttachIsVersion1) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  json h = ValidHello();
  h["version"] = 2;  // "start" left out: "now"
  JoiningThread vmm([&] {
    const int fds[] = {uffd_.get(), memfd_.get()};
    auto c = HandoffClient::ConnectWithHello(path_, h.dump(), fds, absl::Seconds(10));
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE((*c)->WaitComplete(absl::Seconds(10)).ok());
  });
  auto session = (*server)->Accept(absl::Seconds(10), getuid());
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ((*session)->request().version, 2u);
  EXPECT_FALSE((*session)->request().attached);
  EXPECT_FALSE((*session)->request().start_on_listen);
  ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
  ASSERT_TRUE((*session)->SendComplete(absl::OkStatus(), json::object()).ok());
}

// The VMM's migration failed or was cancelled in pre-copy: bye, or just gone, before listen.
TEST_F(HandoffTest, Version2ByeOrCloseBeforeListen) {
  for (const bool bye : {true, false}) {
    SCOPED_TRACE(bye ? "bye" : "close");
    absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
    ASSERT_TRUE(server.ok()) << server.status();
    json ack;
    JoiningThread vmm([&] {
      UniqueFd c = ConnectRaw(path_);
      const int fds[] = {uffd_.get(), memfd_.get()};
      ASSERT_TRUE(SendFrame(c.get(), ListenHello(), fds));
      ack = ReadFrameJson(c.get());
      absl::SleepFor(absl::Milliseconds(250));
      if (bye) {
        ASSERT_TRUE(SendFrame(c.get(), {{"type", "bye"}}));
        EXPECT_TRUE(ReadFrameJson(c.get()).is_null());  // faultline sends nothing more
      }
    });
    auto session = (*server)->Accept(absl::Seconds(10), getuid());
    ASSERT_TRUE(session.ok()) << session.status();
    ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
    absl::Status s = (*session)->WaitListen();
    EXPECT_EQ(s.code(), bye ? absl::StatusCode::kAborted : absl::StatusCode::kUnavailable) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), bye ? "said bye before \"listen\""
                                                   : "closed the hand-off connection before "
                                                     "\"listen\""))
        << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "failed or was cancelled before post-copy")) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "placed no page")) << s;
    EXPECT_TRUE((*session)->PeerClosed());
    EXPECT_EQ((*session)->bye_received(), bye);
    session->reset();
    vmm.Join();
    EXPECT_TRUE(ack.value("ok", false)) << ack.dump();
  }
}

TEST_F(HandoffTest, Version2WaitListenEndsOnStop) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  std::atomic<bool> done{false};
  JoiningThread vmm([&] {
    UniqueFd c = ConnectRaw(path_);
    const int fds[] = {uffd_.get(), memfd_.get()};
    ASSERT_TRUE(SendFrame(c.get(), ListenHello(), fds));
    ReadFrameJson(c.get());  // the ack; then a long pre-copy
    while (!done.load()) absl::SleepFor(absl::Milliseconds(10));
  });
  auto session = (*server)->Accept(absl::Seconds(10), getuid());
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
  const absl::Time t0 = absl::Now();
  absl::Status s =
      (*session)->WaitListen([&] { return absl::Now() - t0 > absl::Milliseconds(300); });
  done.store(true);
  EXPECT_TRUE(absl::IsCancelled(s)) << s;
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
}

// "notify_running": after "listen" the VMM says "running" when its guest runs; the wait for it
// is bounded, skips other messages, and ends on a bye.
TEST_F(HandoffTest, Version2WaitRunning) {
  for (const bool bye : {false, true}) {
    SCOPED_TRACE(bye ? "bye instead" : "running");
    absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
    ASSERT_TRUE(server.ok()) << server.status();
    json h = ListenHello();
    h["notify_running"] = true;
    std::atomic<bool> timed_out{false};
    JoiningThread vmm([&] {
      UniqueFd c = ConnectRaw(path_);
      const int fds[] = {uffd_.get(), memfd_.get()};
      ASSERT_TRUE(SendFrame(c.get(), h, fds));
      ReadFrameJson(c.get());  // the ack
      ASSERT_TRUE(SendFrame(c.get(), {{"type", "listen"}}));
      while (!timed_out.load()) absl::SleepFor(absl::Milliseconds(5));
      ASSERT_TRUE(SendFrame(c.get(), {{"type", "progress"}}));  // not ours to send: skipped
      ASSERT_TRUE(SendFrame(c.get(), {{"type", bye ? "bye" : "running"}}));
      ReadFrameJson(c.get());  // until faultline hangs up
    });
    auto session = (*server)->Accept(absl::Seconds(10), getuid());
    ASSERT_TRUE(session.ok()) << session.status();
    EXPECT_TRUE((*session)->request().notify_running);
    ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
    ASSERT_TRUE((*session)->WaitListen().ok());
    absl::Status s = (*session)->WaitRunning(absl::Now() + absl::Milliseconds(150));
    EXPECT_TRUE(absl::IsDeadlineExceeded(s)) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "did not say \"running\"")) << s;
    timed_out.store(true);
    s = (*session)->WaitRunning(absl::Now() + absl::Seconds(10));
    if (bye) {
      EXPECT_TRUE(absl::IsAborted(s)) << s;
      EXPECT_TRUE(absl::StrContains(s.message(), "said bye before \"running\"")) << s;
    } else {
      EXPECT_TRUE(s.ok()) << s;
    }
    session->reset();
  }
  // Without it in the hello nobody promised a "running"; a version 1 hello does not speak of it.
  absl::StatusOr<HandoffRequest> plain = ParseFaultlineHello(ListenHello().dump(), 2);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->notify_running);
  json v1 = ValidHello();
  v1["notify_running"] = true;
  absl::StatusOr<HandoffRequest> old = ParseFaultlineHello(v1.dump(), 2);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_FALSE(old->notify_running);
}

TEST_F(HandoffTest, Version2HelloRightBehindItsAttach) {
  // Attach and hello in one write burst: the hello's fds are the hello's, not the attach's.
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  JoiningThread vmm([&] {
    UniqueFd c = ConnectRaw(path_);
    json h = ValidHello();
    h["version"] = 2;
    ASSERT_TRUE(SendFrame(c.get(), Attach(2)));
    const int fds[] = {uffd_.get(), memfd_.get()};
    ASSERT_TRUE(SendFrame(c.get(), h, fds));
    EXPECT_EQ(ReadFrameJson(c.get()).value("type", ""), "attached");
    EXPECT_TRUE(ReadFrameJson(c.get()).value("ok", false));
  });
  absl::SleepFor(absl::Milliseconds(100));  // both messages are queued before faultline reads
  auto session = (*server)->Accept(absl::Seconds(10), getuid());
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_TRUE((*session)->request().attached);
  ASSERT_TRUE((*session)->Ack(absl::OkStatus()).ok());
}

TEST_F(HandoffTest, Version2WaitForHelloAfterAttachEndsOnStop) {
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  std::atomic<bool> done{false};
  json attached, reply;
  JoiningThread vmm([&] {
    UniqueFd c = ConnectRaw(path_);
    ASSERT_TRUE(SendFrame(c.get(), Attach(2)));
    attached = ReadFrameJson(c.get());
    reply = ReadFrameJson(c.get());  // faultline stops: its refusal
  });
  absl::StatusOr<AcceptedConnection> conn;
  for (int i = 0; i < 500 && !conn.ok(); ++i) {
    conn = (*server)->AcceptConnection();
    if (!conn.ok()) absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_TRUE(conn.ok()) << conn.status();
  const absl::Time t0 = absl::Now();
  auto session =
      HandoffSession::Open(std::move(*conn), absl::Now() + absl::Milliseconds(100), nullptr,
                           [&] { return absl::Now() - t0 > absl::Milliseconds(400); });
  ASSERT_FALSE(session.ok());
  EXPECT_TRUE(absl::IsCancelled(session.status())) << session.status();  // not the 100 ms
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(400));
  vmm.Join();
  EXPECT_EQ(attached.value("type", ""), "attached");
  EXPECT_FALSE(reply.value("ok", true)) << reply.dump();
  EXPECT_EQ(reply.value("code", ""), "CANCELLED") << reply.dump();
}

TEST_F(HandoffTest, Version2Refusals) {
  struct Case {
    const char* name;
    std::vector<json> messages;  // the last one carries {uffd_, memfd_} when it is a hello
    const char* error;
    const char* code;
  };
  json h3 = ValidHello();
  h3["version"] = 3;
  json resume_listen = ListenHello();
  resume_listen["resume"] = true;
  json running_text = ListenHello();
  running_text["notify_running"] = "yes";
  std::vector<Case> cases = {
      {"hello of version 3",
       {h3},
       "the VMM speaks version 3, faultline speaks versions 1 to 2",
       "FAILED_PRECONDITION"},
      {"attach of version 3",
       {Attach(3)},
       "the VMM speaks version 3, faultline speaks versions 1 to 2",
       "FAILED_PRECONDITION"},
      {"attach of version 1", {Attach(1)}, "version 1 has no attach", "FAILED_PRECONDITION"},
      {"version 1 hello after an attach",
       {Attach(2), ValidHello()},
       "hello: version 1 after an attach of version 2",
       "INVALID_ARGUMENT"},
      {"two attaches",
       {Attach(2), Attach(2)},
       "expected a hello message first, got type \"attach\"",
       "INVALID_ARGUMENT"},
      {"resume with start listen",
       {resume_listen},
       "\"resume\" with \"start\":\"listen\"",
       "INVALID_ARGUMENT"},
      {"notify_running not a boolean", {running_text}, "notify_running", "INVALID_ARGUMENT"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const int before = CountFds();
    absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
    ASSERT_TRUE(server.ok()) << server.status();
    json reply;
    {
      JoiningThread vmm([&] {
        UniqueFd fd = ConnectRaw(path_);
        for (const json& m : c.messages) {
          if (m.value("type", "") == "hello") {
            const int fds[] = {uffd_.get(), memfd_.get()};
            ASSERT_TRUE(SendFrame(fd.get(), m, fds));
          } else {
            ASSERT_TRUE(SendFrame(fd.get(), m));
          }
          reply = ReadFrameJson(fd.get());
          if (reply.value("type", "") != "attached") break;
        }
      });
      auto session = (*server)->Accept(absl::Seconds(10), getuid());
      ASSERT_FALSE(session.ok());
    }
    EXPECT_EQ(reply.value("type", ""), "ack") << reply.dump();
    EXPECT_FALSE(reply.value("ok", true));
    EXPECT_TRUE(absl::StrContains(reply.value("error", ""), c.error)) << reply.dump();
    EXPECT_EQ(reply.value("code", ""), c.code) << reply.dump();
    server->reset();
    EXPECT_EQ(CountFds(), before);  // every fd received was closed
  }
}

TEST_F(HandoffTest, AttachWithFdsIsRefusedAndLeaksNone) {
  const int before = CountFds();
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path_);
  ASSERT_TRUE(server.ok()) << server.status();
  json reply;
  {
    JoiningThread vmm([&] {
      UniqueFd c = ConnectRaw(path_);
      const int fds[] = {memfd_.get()};
      ASSERT_TRUE(SendFrame(c.get(), Attach(2), fds));
      reply = ReadFrameJson(c.get());
    });
    auto session = (*server)->Accept(absl::Seconds(10), getuid());
    ASSERT_FALSE(session.ok());
  }
  EXPECT_TRUE(absl::StrContains(reply.value("error", ""), "attach: carries 1 fds")) << reply.dump();
  server->reset();
  EXPECT_EQ(CountFds(), before);
}

TEST(HandoffParse, Attach) {
  EXPECT_EQ(*ParseFaultlineAttach(R"({"type":"attach","version":2})", 0), 2u);
  EXPECT_EQ(*ParseFaultlineAttach(R"({"type":"attach","version":2,"vmm":"q","x":1})", 0), 2u);
  EXPECT_FALSE(ParseFaultlineAttach(R"({"type":"attach","version":"2"})", 0).ok());
  EXPECT_FALSE(ParseFaultlineAttach(R"({"type":"attach"})", 0).ok());
  EXPECT_FALSE(ParseFaultlineAttach(R"({"type":"attach","version":2,"vmm":""})", 0).ok());
  EXPECT_FALSE(ParseFaultlineAttach(R"({"type":"hello","version":2})", 0).ok());
  EXPECT_FALSE(ParseFaultlineAttach(R"([1])", 0).ok());
  EXPECT_FALSE(ParseFaultlineAttach("{", 0).ok());
  EXPECT_EQ(ParseFaultlineAttach(R"({"type":"attach","version":3})", 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace faultline
