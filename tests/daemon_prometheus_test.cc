// The host daemon's metrics as a real Prometheus sees them: Debian's prometheus scrapes the
// daemon while two migrations run (and after), and the test asks Prometheus' own HTTP API what
// it stored — phases, pages, bytes by channel, the fault-latency histogram (histogram_quantile
// works on it). Skips, saying why, only where prometheus is not installed (tools/setup.sh
// installs it: counted as a failure by tools/test.sh).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "serve/control.h"
#include "serve/daemon.h"
#include "tests/testing/http_get.h"
#include "tests/testing/test_source.h"
#include "tests/testing/thread_vmm.h"
#include "transport/socket.h"

namespace faultline {
namespace {

// Prometheus' instant query, URL-encoded by hand for the few characters used here.
nlohmann::json Query(int port, const std::string& promql) {
  std::string q;
  for (char c : promql) {
    if (isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.') {
      q += c;
    } else {
      char hex[4];
      snprintf(hex, sizeof(hex), "%%%02X", static_cast<unsigned char>(c));
      q += hex;
    }
  }
  nlohmann::json j =
      nlohmann::json::parse(HttpBody(HttpGet(port, "/api/v1/query?query=" + q)), nullptr, false);
  return j.is_discarded() ? nlohmann::json() : j;
}

// The first sample's value of a query, or -1 when there is none (yet).
double Value(int port, const std::string& promql) {
  nlohmann::json j = Query(port, promql);
  if (!j.is_object() || j.value("status", "") != "success") return -1;
  const nlohmann::json& r = j["data"]["result"];
  if (!r.is_array() || r.empty()) return -1;
  return std::stod(r[0]["value"][1].get<std::string>());
}

TEST(DaemonPrometheus, ScrapedByRealPrometheus) {
  if (system("command -v prometheus >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "no prometheus [setup]: tools/setup.sh installs Debian's prometheus";
  }
  const std::string dir =
      absl::StrCat(getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp", "/prom-", getpid());
  ASSERT_EQ(system(("mkdir -p " + dir).c_str()), 0);
  // Sockets in a directory of their own under /tmp (TEST_TMPDIR is too long for a socket
  // path; in Bazel's sandboxes every test's pid is the same).
  char sock_dir[] = "/tmp/fl-prom-XXXXXX";
  ASSERT_NE(mkdtemp(sock_dir), nullptr);
  DaemonOptions o;
  o.handoff_socket = absl::StrCat(sock_dir, "/h.sock");
  o.control_socket = absl::StrCat(sock_dir, "/c.sock");
  o.socket_dir = sock_dir;
  o.metrics_listen = "127.0.0.1:0";
  o.state_dir = "";
  o.event_log = nullptr;
  absl::StatusOr<std::unique_ptr<Daemon>> d = Daemon::Start(o);
  ASSERT_TRUE(d.ok()) << d.status();
  std::thread loop([&] { (*d)->Run(); });

  // Prometheus, scraping the daemon every 100 ms.
  absl::StatusOr<UniqueFd> probe = ListenTcp("127.0.0.1:0");
  ASSERT_TRUE(probe.ok());
  const int prom_port = *BoundPort(probe->get());
  probe->reset();
  std::ofstream(dir + "/prometheus.yml")
      << "global:\n  scrape_interval: 100ms\n  scrape_timeout: 90ms\n"
      << "scrape_configs:\n  - job_name: faultline\n    static_configs:\n"
      << "      - targets: ['127.0.0.1:" << (*d)->metrics_port() << "']\n";
  pid_t prom = fork();
  if (prom == 0) {
    FILE* f = freopen((dir + "/prometheus.log").c_str(), "w", stderr);
    (void)f;
    execlp("prometheus", "prometheus", ("--config.file=" + dir + "/prometheus.yml").c_str(),
           ("--storage.tsdb.path=" + dir + "/data").c_str(),
           absl::StrCat("--web.listen-address=127.0.0.1:", prom_port).c_str(), nullptr);
    _exit(127);
  }
  ASSERT_GT(prom, 0);

  std::vector<std::unique_ptr<TestSource>> srcs;
  std::vector<std::string> sockets;
  for (const char* id : {"prom-a", "prom-b"}) {
    auto s = TestSource::Start(16u << 20, 4096);
    ASSERT_TRUE(s.ok());
    absl::StatusOr<nlohmann::json> r =
        ControlCall(o.control_socket, {{"op", "expect"},
                                       {"id", id},
                                       {"connect", (*s)->options().address},
                                       {"token", TokenToHex((*s)->token())}});
    ASSERT_TRUE(r.ok() && r->value("ok", false));
    sockets.push_back(r->value("handoff_socket", std::string()));
    srcs.push_back(std::move(*s));
  }
  // Prometheus up, and scraping (the target is up) before the migrations start.
  const absl::Time until = absl::Now() + absl::Seconds(60);
  while (Value(prom_port, "up{job=\"faultline\"}") != 1 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(Value(prom_port, "up{job=\"faultline\"}"), 1)
      << "prometheus did not scrape (log: " << dir << "/prometheus.log)";
  std::vector<std::thread> vmms;
  for (const std::string& sock : sockets) {
    vmms.emplace_back([sock] {
      ThreadVmmOptions v;
      v.socket = sock;
      v.size = 16u << 20;
      v.guest.touches_per_thread = 3000;
      absl::StatusOr<ThreadVmmResult> r = RunThreadVmm(v);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->mismatches, 0u);
    });
  }
  for (auto& t : vmms) t.join();
  // What Prometheus stored after the end: wait for a scrape that saw both migrations finish
  // (the daemon completes a migration a moment after its VMM verified the last page).
  const absl::Time settle = absl::Now() + absl::Seconds(30);
  while (Value(prom_port, "faultline_migrations_succeeded_total") != 2 && absl::Now() < settle) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  for (const char* id : {"prom-a", "prom-b"}) {
    const std::string m = absl::StrCat("{migration=\"", id, "\"}");
    EXPECT_EQ(Value(prom_port, absl::StrCat("faultline_migration_phase{migration=\"", id,
                                            "\",phase=\"complete\"}")),
              1);
    EXPECT_EQ(Value(prom_port, "faultline_migration_present_pages" + m), 4096);
    EXPECT_EQ(Value(prom_port, "faultline_migration_data_remaining_bytes" + m), 0);
    EXPECT_GT(Value(prom_port, absl::StrCat("faultline_migration_received_bytes_total{migration=\"",
                                            id, "\",channel=\"bulk\"}")),
              0);
    EXPECT_GT(Value(prom_port, "faultline_migration_fault_latency_seconds_count" + m), 0);
    const double p99 = Value(
        prom_port,
        absl::StrCat("histogram_quantile(0.99, faultline_migration_fault_latency_seconds_bucket", m,
                     ")"));
    EXPECT_GT(p99, 0);
    EXPECT_LT(p99, 10);  // seconds
    std::printf("%s: Prometheus sees fault p99 %.0f µs\n", id, p99 * 1e6);
  }
  EXPECT_EQ(Value(prom_port, "faultline_migrations_succeeded_total"), 2);
  kill(prom, SIGTERM);
  waitpid(prom, nullptr, 0);
  (*d)->Stop();
  loop.join();
  std::filesystem::remove_all(sock_dir);
}

}  // namespace
}  // namespace faultline
