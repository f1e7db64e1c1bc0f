// The host daemon (serve/daemon.h) end to end, in-process, with real page servers, real
// userfaultfd VMMs (tests/testing/thread_vmm.h) and real sockets: several migrations at once;
// every refusal leaves it serving (checked by a migration that completes afterwards); hostile
// clients on the hand-off socket and the metrics port while migrations run; `faultline status`
// (the real binary) against it. Every migration verifies every page.
#include "serve/daemon.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/region.h"
#include "engine/uffd.h"
#include "gtest/gtest.h"
#include "qemu-integration/handoff/handoff.h"
#include "serve/control.h"
#include "tests/testing/http_get.h"
#include "tests/testing/test_source.h"
#include "tests/testing/thread_vmm.h"
#include "transport/socket.h"

namespace faultline {
namespace {

constexpr uint64_t kSize = 8u << 20;

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A directory of its own under /tmp (Bazel's TEST_TMPDIR is too long for a socket path):
    // runs of this test at the same time, in sandboxes where every pid is 12, must not meet.
    char dir[] = "/tmp/fl-dt-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    log_path_ = Tmp("events.log");
    log_ = fopen(log_path_.c_str(), "w");
    DaemonOptions o;
    o.handoff_socket = Tmp("h.sock");
    o.control_socket = Tmp("c.sock");
    o.socket_dir = dir_;
    o.metrics_listen = "127.0.0.1:0";
    o.state_dir = "";  // in memory: these tests do not restart engines
    o.event_log = log_;
    o.hello_timeout = absl::Seconds(2);
    opts_ = o;
    absl::StatusOr<std::unique_ptr<Daemon>> d = Daemon::Start(o);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    loop_ = std::thread([this] { daemon_->Run(); });
  }
  void TearDown() override {
    if (daemon_) daemon_->Stop();
    if (loop_.joinable()) loop_.join();
    daemon_.reset();
    if (log_) fclose(log_);
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::string Tmp(const std::string& name) const { return absl::StrCat(dir_, "/", name); }
  // Registers a migration served by `src`; returns its own socket ("" if none).
  std::string Expect(const std::string& id, TestSource& src, bool own_socket = true) {
    absl::StatusOr<nlohmann::json> r =
        ControlCall(opts_.control_socket, {{"op", "expect"},
                                           {"id", id},
                                           {"connect", src.options().address},
                                           {"token", TokenToHex(src.token())},
                                           {"own_socket", own_socket}});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return "";
    EXPECT_TRUE(r->value("ok", false)) << r->dump();
    return r->value("handoff_socket", std::string());
  }
  ThreadVmmOptions Vmm(const std::string& socket, const std::string& id) {
    ThreadVmmOptions v;
    v.socket = socket;
    v.migration = id;
    v.size = kSize;
    v.guest.touches_per_thread = 1000;
    v.timeout = absl::Seconds(60);
    return v;
  }
  void ExpectMigrates(const ThreadVmmOptions& v) {
    absl::StatusOr<ThreadVmmResult> r = RunThreadVmm(v);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->verified_pages, kSize / 4096);
    EXPECT_EQ(r->mismatches, 0u);
  }
  // The VMM's side ends when its guest verified every page; the daemon's engine finishes
  // (phase, "complete" event, counters) a moment later. Waits until no migration is waiting or
  // running, for at most 20 s.
  void AwaitSettled() {
    const absl::Time until = absl::Now() + absl::Seconds(20);
    auto settled = [&] {
      for (const MigrationStatus& m : daemon_->Statuses()) {
        if (m.phase == MigrationPhase::kWaiting || m.phase == MigrationPhase::kRunning) {
          return false;
        }
      }
      return true;
    };
    while (!settled() && absl::Now() < until) absl::SleepFor(absl::Milliseconds(10));
  }
  std::string Events() {
    fflush(log_);
    std::ifstream f(log_path_);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
  }
  std::string Metrics() { return HttpGet(daemon_->metrics_port(), "/metrics"); }
  // Whether the event log has an event of `type` for migration `id` (one JSON object a line).
  bool HasEvent(const std::string& type, const std::string& id) {
    std::istringstream in(Events());
    std::string line;
    while (std::getline(in, line)) {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_object() && j.value("event", "") == type && j.value("migration", "") == id) {
        return true;
      }
    }
    return false;
  }

  DaemonOptions opts_;
  std::unique_ptr<Daemon> daemon_;
  std::thread loop_;
  std::string dir_;
  std::string log_path_;
  FILE* log_ = nullptr;
};

TEST_F(DaemonTest, ServesSeveralMigrationsAtOnce) {
  std::vector<std::unique_ptr<TestSource>> srcs;
  for (int i = 0; i < 3; ++i) {
    auto s = TestSource::Start(kSize, 4096);
    ASSERT_TRUE(s.ok()) << s.status();
    srcs.push_back(std::move(*s));
  }
  const std::string own0 = Expect("vm-0", *srcs[0]);
  const std::string own1 = Expect("vm-1", *srcs[1]);
  Expect("vm-2", *srcs[2], /*own_socket=*/false);
  EXPECT_EQ(own0, Tmp("faultline-vm-0.sock"));
  // vm-0 and vm-1 on their own sockets (no id in the hello), vm-2 on the shared one naming it.
  std::vector<std::thread> vmms;
  vmms.emplace_back([&] { ExpectMigrates(Vmm(own0, "")); });
  vmms.emplace_back([&] { ExpectMigrates(Vmm(own1, "vm-1")); });
  vmms.emplace_back([&] { ExpectMigrates(Vmm(opts_.handoff_socket, "vm-2")); });
  for (auto& t : vmms) t.join();
  AwaitSettled();
  for (const MigrationStatus& m : daemon_->Statuses()) {
    EXPECT_EQ(m.phase, MigrationPhase::kComplete) << m.id << ": " << m.error;
    EXPECT_EQ(m.pages_present, kSize / 4096) << m.id;
  }
  for (const char* id : {"vm-0", "vm-1", "vm-2"}) {
    EXPECT_TRUE(HasEvent("registered", id)) << Events();
    EXPECT_TRUE(HasEvent("handed_over", id)) << Events();
    EXPECT_TRUE(HasEvent("complete", id)) << Events();
  }
  const std::string m = Metrics();
  EXPECT_NE(m.find("faultline_migration_phase{migration=\"vm-1\",phase=\"complete\"} 1"),
            std::string::npos);
  EXPECT_NE(m.find("faultline_migrations_succeeded_total 3"), std::string::npos);
}

// Each refusal concerns only its client: the daemon keeps serving, checked by a migration
// that completes afterwards.
TEST_F(DaemonTest, RefusalsLeaveTheDaemonServing) {
  auto src = TestSource::Start(kSize, 4096);
  ASSERT_TRUE(src.ok());
  const std::string own = Expect("good", **src);
  // Garbage on the shared socket.
  {
    sockaddr_un a = {};
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, opts_.handoff_socket.c_str(), sizeof(a.sun_path) - 1);
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM, 0));
    ASSERT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    const char junk[] = "\xf0\xff\xff\xf0{not json at all";
    ASSERT_GT(write(fd.get(), junk, sizeof(junk)), 0);
    char buf[512];
    ssize_t n = read(fd.get(), buf, sizeof(buf));  // ack{ok:false} then close
    EXPECT_GT(n, 0);
  }
  // A hello for a migration nobody registered.
  ThreadVmmOptions unknown = Vmm(opts_.handoff_socket, "nobody");
  absl::StatusOr<ThreadVmmResult> r = RunThreadVmm(unknown);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("no migration 'nobody'"), absl::string_view::npos)
      << r.status();
  // A hello naming another migration on a migration's own socket.
  r = RunThreadVmm(Vmm(own, "other"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("on the socket of migration 'good'"), absl::string_view::npos)
      << r.status();
  // A duplicate registration.
  absl::StatusOr<nlohmann::json> dup =
      ControlCall(opts_.control_socket, {{"op", "expect"},
                                         {"id", "good"},
                                         {"connect", "127.0.0.1:1"},
                                         {"token", TokenToHex((*src)->token())}});
  ASSERT_TRUE(dup.ok());
  EXPECT_FALSE(dup->value("ok", true));
  EXPECT_EQ(dup->value("code", std::string()), "ALREADY_EXISTS");
  // A control request that is no JSON.
  {
    sockaddr_un a = {};
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, opts_.control_socket.c_str(), sizeof(a.sun_path) - 1);
    UniqueFd fd(socket(AF_UNIX, SOCK_STREAM, 0));
    ASSERT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ASSERT_GT(write(fd.get(), "}{\n", 3), 0);
    char buf[512];
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    ASSERT_GT(n, 0);
    EXPECT_NE(std::string(buf, n).find("\"ok\":false"), std::string::npos);
  }
  // The real one still migrates.
  ExpectMigrates(Vmm(own, "good"));
  const std::string m = Metrics();
  EXPECT_NE(m.find("faultline_handoffs_refused_total{reason=\"bad_hello\"} 1"), std::string::npos)
      << m;
  EXPECT_NE(m.find("faultline_handoffs_refused_total{reason=\"unknown_migration\"} 1"),
            std::string::npos);
  EXPECT_NE(m.find("faultline_handoffs_refused_total{reason=\"wrong_socket\"} 1"),
            std::string::npos);
  EXPECT_TRUE(HasEvent("refused", "nobody")) << Events();
}

// Counts the source's HELLOs (one per connection) and refuses every one after the first
// `allow`.
class HelloCounter : public FaultInjector {
 public:
  explicit HelloCounter(int allow) : allow_(allow) {}
  absl::Status OnHello(Channel) override {
    if (hellos_.fetch_add(1) < allow_) return absl::OkStatus();
    return absl::UnavailableError("this test's source takes no further connection");
  }
  int hellos() const { return hellos_.load(); }
  // Waits (at most 10 s) until `n` connections said HELLO.
  bool Await(int n) const {
    const absl::Time until = absl::Now() + absl::Seconds(10);
    while (hellos() < n && absl::Now() < until) absl::SleepFor(absl::Milliseconds(5));
    return hellos() >= n;
  }

 private:
  const int allow_;
  std::atomic<int> hellos_{0};
};

// The source is connected when the migration is registered, not when its VMM hands over (the
// source VMM waits for the acknowledgement): the hand-off opens no connection — this source
// refuses any after the registration's urgent connection and bulk lane — and the migration
// completes and verifies.
TEST_F(DaemonTest, SourceIsConnectedAtRegistration) {
  HelloCounter hellos(/*allow=*/2);  // urgent + the one default bulk lane
  auto src = TestSource::Start(kSize, 4096, {}, nullptr, &hellos);
  ASSERT_TRUE(src.ok()) << src.status();
  const std::string s = Expect("ahead", **src);
  ASSERT_TRUE(hellos.Await(2)) << "the registration connected nothing";
  ExpectMigrates(Vmm(s, ""));
  EXPECT_EQ(hellos.hellos(), 2);
}

// The connections made at registration died before the hand-off (the source's page server
// restarted): they are not trusted — the hand-off connects again, and the migration completes
// and verifies.
TEST_F(DaemonTest, DeadConnectionsFromRegistrationAreMadeAgain) {
  HelloCounter hellos(/*allow=*/1000);
  auto src = TestSource::Start(kSize, 4096, {}, nullptr, &hellos);
  ASSERT_TRUE(src.ok()) << src.status();
  const std::string s = Expect("again", **src);
  ASSERT_TRUE(hellos.Await(2)) << "the registration connected nothing";
  ASSERT_TRUE((*src)->Restart().ok());  // closes both connections; same port, same token
  ExpectMigrates(Vmm(s, ""));
  EXPECT_EQ(hellos.hellos(), 4);
  // Checked before the acknowledgement, not found broken by the running engine afterwards.
  AwaitSettled();
  const MigrationStatus* m = nullptr;
  const std::vector<MigrationStatus> all = daemon_->Statuses();
  for (const MigrationStatus& x : all) {
    if (x.id == "again") m = &x;
  }
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->phase, MigrationPhase::kComplete);
  EXPECT_EQ(m->reconnects, 0u);
}

// A migration whose source is gone fails alone, with the reason in its status; the others go on.
TEST_F(DaemonTest, VanishedSourceFailsOnlyItsMigration) {
  auto gone = TestSource::Start(kSize, 4096);
  auto good = TestSource::Start(kSize, 4096);
  ASSERT_TRUE(gone.ok() && good.ok());
  const std::string s1 = Expect("gone", **gone);
  const std::string s2 = Expect("fine", **good);
  (*gone)->Stop();
  absl::StatusOr<ThreadVmmResult> r = RunThreadVmm(Vmm(s1, ""));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("cannot reach the source"), absl::string_view::npos);
  ExpectMigrates(Vmm(s2, ""));
  absl::StatusOr<nlohmann::json> st =
      ControlCall(opts_.control_socket, {{"op", "status"}, {"id", "gone"}});
  ASSERT_TRUE(st.ok());
  ASSERT_EQ((*st)["migrations"].size(), 1u);
  EXPECT_EQ((*st)["migrations"][0]["phase"], "failed");
  EXPECT_NE((*st)["migrations"][0]["error"].get<std::string>().find("cannot reach the source"),
            std::string::npos);
  // A failed migration can be forgotten, and registered anew.
  st = ControlCall(opts_.control_socket, {{"op", "forget"}, {"id", "gone"}});
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(st->value("ok", false)) << st->dump();
  EXPECT_TRUE(daemon_->Find("gone") == nullptr);
}

// Random bytes at the hand-off socket and the metrics port, while two migrations run: both
// complete and verify, and the daemon still answers.
TEST_F(DaemonTest, HostileClientsWhileMigrationsRun) {
  auto a = TestSource::Start(kSize, 4096);
  auto b = TestSource::Start(kSize, 4096);
  ASSERT_TRUE(a.ok() && b.ok());
  const std::string sa = Expect("a", **a), sb = Expect("b", **b);
  std::atomic<bool> stop{false};
  std::atomic<int> thrown{0};
  auto hostile = [&](bool http, uint64_t seed) {
    std::mt19937_64 rng(seed);
    while (!stop.load()) {
      UniqueFd fd;
      if (http) {
        absl::StatusOr<UniqueFd> c =
            ConnectTcp(absl::StrCat("127.0.0.1:", daemon_->metrics_port()), absl::Seconds(1));
        if (!c.ok()) continue;
        fd = std::move(*c);
      } else {
        sockaddr_un addr = {};
        addr.sun_family = AF_UNIX;
        strncpy(addr.sun_path, opts_.handoff_socket.c_str(), sizeof(addr.sun_path) - 1);
        fd.reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) continue;
      }
      std::string junk(rng() % 3000, '\0');
      for (char& c : junk) c = static_cast<char>(rng());
      if (rng() % 4 == 0) junk = "GET /metrics HTTP/1.1\r\nHost: x\r\n" + junk;  // half valid
      (void)send(fd.get(), junk.data(), junk.size(), MSG_NOSIGNAL);
      if (rng() % 2) {
        char buf[256];
        struct timeval tv = {0, 50000};
        setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        (void)!read(fd.get(), buf, sizeof(buf));
      }
      thrown.fetch_add(1);
    }
  };
  std::vector<std::thread> threads;
  threads.emplace_back(hostile, false, 1);
  threads.emplace_back(hostile, true, 2);
  std::thread ma([&] { ExpectMigrates(Vmm(sa, "")); });
  std::thread mb([&] { ExpectMigrates(Vmm(sb, "")); });
  ma.join();
  mb.join();
  AwaitSettled();
  stop.store(true);
  for (auto& t : threads) t.join();
  EXPECT_GT(thrown.load(), 10);
  std::printf("hostile connections during the migrations: %d\n", thrown.load());
  // Still serving: status, metrics, and a third migration.
  absl::StatusOr<nlohmann::json> st = ControlCall(opts_.control_socket, {{"op", "status"}});
  ASSERT_TRUE(st.ok());
  EXPECT_EQ((*st)["migrations"].size(), 2u);
  EXPECT_NE(Metrics().find("faultline_migrations_succeeded_total 2"), std::string::npos);
  auto c = TestSource::Start(kSize, 4096);
  ASSERT_TRUE(c.ok());
  ExpectMigrates(Vmm(Expect("c", **c), ""));
}

// `faultline status` — the real binary — against the live daemon.
TEST_F(DaemonTest, StatusCommandReportsTheMigrations) {
  auto src = TestSource::Start(kSize, 4096);
  ASSERT_TRUE(src.ok());
  ExpectMigrates(Vmm(Expect("vm-s", **src), ""));
  Expect("vm-waiting", **src, false);
  const std::string bin =
      absl::StrCat(getenv("TEST_SRCDIR"), "/", getenv("TEST_WORKSPACE"), "/cli/faultline");
  auto run = [&](const std::string& args) {
    FILE* p = popen((bin + " " + args + " 2>&1").c_str(), "r");
    std::string out;
    char buf[1024];
    while (p && fgets(buf, sizeof(buf), p)) out += buf;
    if (p) pclose(p);
    return out;
  };
  const std::string table = run("status --control=" + opts_.control_socket);
  EXPECT_NE(table.find("vm-s"), std::string::npos) << table;
  EXPECT_NE(table.find("complete"), std::string::npos) << table;
  EXPECT_NE(table.find("2048/2048"), std::string::npos) << table;
  EXPECT_NE(table.find("waiting"), std::string::npos) << table;
  const std::string json = run("status --json --id=vm-s --control=" + opts_.control_socket);
  nlohmann::json j = nlohmann::json::parse(json, nullptr, false);
  ASSERT_TRUE(j.is_array()) << json;
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["pages_present"], 2048);
  EXPECT_GT(j[0]["faults"].get<uint64_t>() + j[0]["bulk_pages"].get<uint64_t>(), 0u);
  const std::string missing = run("status --id=nope --control=" + opts_.control_socket);
  EXPECT_NE(missing.find("no migration 'nope'"), std::string::npos) << missing;
}

// Hand-off version 2 (QEMU 10.2 hands over at post-copy ADVISE): a VMM whose migration fails in
// pre-copy says bye before "listen". Its migration fails with that reason, nothing placed; the
// daemon serves on — the same migration handed over again completes. A VMM that attached and
// has not sent its hello yet does not hold up the daemon's shutdown.
TEST_F(DaemonTest, Version2ByeBeforeListenFailsOnlyThatHandOff) {
  auto src = TestSource::Start(kSize, 4096);
  ASSERT_TRUE(src.ok());
  const std::string own = Expect("v2", **src);
  {
    auto ram = GuestRegion::Create("ram", RegionKind::kMemfd, kSize);
    ASSERT_TRUE(ram.ok());
    auto uffd = Userfaultfd::Open();
    ASSERT_TRUE(uffd.ok());
    ASSERT_TRUE(uffd->Register((*ram)->base(), kSize, true, true).ok());
    const nlohmann::json hello = {{"type", "hello"},
                                  {"version", 2},
                                  {"start", "listen"},
                                  {"vmm", "qemu-test"},
                                  {"uffd_features", uffd->features()},
                                  {"registered", true},
                                  {"uffd_fd", 0},
                                  {"regions",
                                   {{{"name", "pc.ram"},
                                     {"host_addr", reinterpret_cast<uint64_t>((*ram)->base())},
                                     {"length", kSize},
                                     {"page_size", 4096},
                                     {"kind", "memfd"},
                                     {"fd", 1},
                                     {"offset", 0}}}}};
    const int fds[] = {uffd->fd(), (*ram)->fd()};
    auto client = HandoffClient::ConnectWithHello(own, hello.dump(), fds, absl::Seconds(20));
    ASSERT_TRUE(client.ok()) << client.status();
    absl::SleepFor(absl::Milliseconds(200));
    ASSERT_TRUE((*client)->Bye().ok());
    AwaitSettled();
    EXPECT_LT(lseek((*ram)->fd(), 0, SEEK_DATA), 0);  // no page placed
    ASSERT_TRUE(uffd->Unregister((*ram)->base(), kSize).ok());
  }
  MigrationStatus st = daemon_->Find("v2")->Snapshot();
  EXPECT_EQ(st.phase, MigrationPhase::kFailed);
  EXPECT_NE(st.error.find("said bye before \"listen\""), std::string::npos) << st.error;
  EXPECT_EQ((*src)->server().stats().bytes.load(), 0u);
  // The daemon serves on: the migration handed over again (a version 1 VMM) completes.
  ExpectMigrates(Vmm(own, ""));
  AwaitSettled();  // the VMM's side ends first; the daemon's engine finishes a moment later
  EXPECT_EQ(daemon_->Find("v2")->Snapshot().phase, MigrationPhase::kComplete);

  // An attached VMM waiting to send its hello, left connected: TearDown's Stop() ends the wait.
  sockaddr_un a = {};
  a.sun_family = AF_UNIX;
  strncpy(a.sun_path, opts_.handoff_socket.c_str(), sizeof(a.sun_path) - 1);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  const std::string body = R"({"type":"attach","version":2})";
  std::string frame(4, '\0');
  frame[0] = static_cast<char>(body.size());
  ASSERT_EQ(write(fd.get(), (frame + body).data(), frame.size() + body.size()),
            static_cast<ssize_t>(frame.size() + body.size()));
  char buf[256];
  ASSERT_GT(read(fd.get(), buf, sizeof(buf)), 4);  // attached
  EXPECT_NE(std::string(buf + 4, 60).find("\"attached\""), std::string::npos);
  absl::SleepFor(opts_.hello_timeout + absl::Milliseconds(500));  // past the plain deadline
  const absl::Time t0 = absl::Now();
  daemon_->Stop();
  loop_.join();
  daemon_.reset();  // joins the worker waiting for the hello
  EXPECT_LT(absl::Now() - t0, absl::Seconds(5));
  ssize_t n = read(fd.get(), buf, sizeof(buf));  // the refusal: faultline stopped
  ASSERT_GT(n, 4);
  EXPECT_NE(std::string(buf + 4, n - 4).find("CANCELLED"), std::string::npos)
      << std::string(buf + 4, n - 4);
}

}  // namespace
}  // namespace faultline
