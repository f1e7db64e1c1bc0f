// Draining a host: N concurrent migrations through one faultline daemon and one multi-VM source
// process, every page of every migration verified — against one migration alone, in the same
// run. Then the same N at once with one migration's source (its own process) killed mid-way:
// that migration fails with a clear error after its reconnect deadline, the others complete.
//
//   bazel run -c opt //bench:drain_benchmark -- [--vms=8] [--mib=128] [--bulk_channels=1]
//                                               [--guest_threads=1]
//
// Processes: `faultline source --migrations=FILE` (N-1 VMs' RAM on /dev/shm, plus the killed
// one's own `faultline source`), `faultline serve --daemon`, and this process as the N VMMs
// (tests/testing/thread_vmm.h: memfd RAM + userfaultfd handed over, a thread guest reading it).
// Reported: aggregate MB/s vs one alone, each migration's fault latency p50/p99 (faultline's
// own, event read to wake) vs alone, the daemon's memory per migration (VmRSS growth).
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "serve/control.h"
#include "tests/testing/thread_vmm.h"
#include "transport/protocol.h"
#include "transport/socket.h"
#include "workload/pattern.h"

namespace faultline {
namespace {

struct Args {
  int vms = 8;
  uint64_t mib = 128;
  int bulk_channels = 1;
  // Guest threads per VM (uniformly random reads). This machine has 2 cores for everything:
  // every VM running three busy readers (24 threads) measures CPU scheduling, not faultline.
  int guest_threads = 1;
};
int g_guest_threads = 1;

std::string Bin() {
  for (const char* env : {"TEST_SRCDIR", "RUNFILES_DIR"}) {
    if (const char* d = getenv(env)) return absl::StrCat(d, "/faultline/cli/faultline");
  }
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return "faultline";
  exe[n] = 0;
  return absl::StrCat(exe, ".runfiles/faultline/cli/faultline");
}

pid_t Spawn(const std::vector<std::string>& argv, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    FILE* f = freopen(log.c_str(), "w", stdout);
    (void)f;
    dup2(STDOUT_FILENO, STDERR_FILENO);
    std::vector<char*> a;
    for (const std::string& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    execv(a[0], a.data());
    _exit(127);
  }
  return pid;
}

uint64_t RssKib(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      uint64_t v = 0;
      (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(6, line.size() - 9)), &v);
      return v;
    }
  }
  return 0;
}

bool WaitForFile(const std::string& path, const std::string& needle, absl::Duration d) {
  const absl::Time until = absl::Now() + d;
  while (absl::Now() < until) {
    std::ifstream f(path);
    std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (all.find(needle) != std::string::npos) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

struct Vm {
  std::string id, ram, token;
  PatternSpec pattern;
  std::string socket;
};

struct Outcome {
  bool ok = false;
  std::string error;
  double seconds = 0;
  uint64_t p50_us = 0, p99_us = 0, faults = 0, mismatches = 0;
};

Outcome Migrate(const Vm& vm, uint64_t bytes, const std::string& control) {
  Outcome o;
  ThreadVmmOptions v;
  v.socket = vm.socket;
  v.size = bytes;
  v.pattern = vm.pattern;
  v.guest.touches_per_thread = 4000;
  v.guest.threads.assign(g_guest_threads, AccessPattern::kRandom);
  v.timeout = absl::Seconds(120);
  absl::StatusOr<ThreadVmmResult> r = RunThreadVmm(v);
  if (!r.ok()) {
    o.error = std::string(r.status().message());
    return o;
  }
  o.ok = r->mismatches == 0;
  o.mismatches = r->mismatches;
  o.seconds = r->seconds;
  const nlohmann::json& fl = r->stats["fault_latency"];
  o.p50_us = fl.value("p50_ns", 0ull) / 1000;
  o.p99_us = fl.value("p99_ns", 0ull) / 1000;
  o.faults = r->stats.value("faults", 0ull);
  return o;
}

int Main(const Args& a) {
  const std::string bin = Bin(), dir = absl::StrCat("/tmp/fl-drain-", getpid());
  mkdir(dir.c_str(), 0700);
  const uint64_t bytes = a.mib << 20;
  // N VMs + one more for the "alone" run; the last of the N has its own source process.
  std::vector<Vm> vms;
  for (int i = 0; i <= a.vms; ++i) {
    Vm vm;
    vm.id = i == a.vms ? "alone" : absl::StrCat("vm-", i);
    vm.ram = absl::StrCat("/dev/shm/fl-drain-", getpid(), "-", i);
    vm.token = TokenToHex(RandomToken());
    vm.pattern.seed = 100 + i;
    std::vector<uint8_t> page(4096);
    FILE* f = fopen(vm.ram.c_str(), "w");
    for (uint64_t p = 0; p < bytes / 4096; ++p) {
      FillPatternPage(vm.pattern, p, page.data());
      fwrite(page.data(), 1, 4096, f);
    }
    fclose(f);
    vms.push_back(vm);
  }
  const int killed = a.vms - 1;
  nlohmann::json list = nlohmann::json::array();
  for (int i = 0; i <= a.vms; ++i) {
    if (i == killed) continue;
    list.push_back({{"id", vms[i].id},
                    {"token", vms[i].token},
                    {"regions", {absl::StrCat("ram=", vms[i].ram)}}});
  }
  const std::string mfile = dir + "/migrations.json";
  std::ofstream(mfile) << list.dump();
  const int port = 17000 + getpid() % 20000, port2 = port + 1;
  pid_t source =
      Spawn({bin, "source", absl::StrCat("--listen=127.0.0.1:", port), "--migrations=" + mfile},
            dir + "/source.log");
  pid_t source2 = Spawn({bin, "source", absl::StrCat("--listen=127.0.0.1:", port2),
                         "--region=ram=" + vms[killed].ram, "--token=" + vms[killed].token},
                        dir + "/source2.log");
  const std::string control = dir + "/c.sock", handoff = dir + "/h.sock";
  pid_t daemon = Spawn({bin, "serve", "--daemon", "--control=" + control, "--handoff=" + handoff,
                        "--state_dir=", "--reconnect_deadline=3s",
                        absl::StrCat("--bulk_channels=", a.bulk_channels)},
                       dir + "/daemon.log");
  if (!WaitForFile(dir + "/daemon.log", "faultline daemon", absl::Seconds(20)) ||
      !WaitForFile(dir + "/source.log", "serving", absl::Seconds(20)) ||
      !WaitForFile(dir + "/source2.log", "serving", absl::Seconds(20))) {
    std::fprintf(stderr, "processes did not start (logs in %s)\n", dir.c_str());
    return 1;
  }
  const uint64_t rss0 = RssKib(daemon);
  for (int i = 0; i <= a.vms; ++i) {
    absl::StatusOr<nlohmann::json> r =
        ControlCall(control, {{"op", "expect"},
                              {"id", vms[i].id},
                              {"connect", absl::StrCat("127.0.0.1:", i == killed ? port2 : port)},
                              {"token", vms[i].token},
                              {"bulk_channels", a.bulk_channels}});
    if (!r.ok() || !r->value("ok", false)) {
      std::fprintf(stderr, "expect %s failed: %s\n", vms[i].id.c_str(),
                   r.ok() ? r->dump().c_str() : std::string(r.status().message()).c_str());
      return 1;
    }
    vms[i].socket = r->value("handoff_socket", std::string());
  }

  // 1. One migration alone.
  Outcome alone = Migrate(vms[a.vms], bytes, control);

  // 2. N at once; the killed one's source dies after a short while.
  std::vector<Outcome> outs(a.vms);
  std::vector<std::thread> threads;
  uint64_t rss_peak = 0;
  std::atomic<bool> running{true};
  std::thread rss([&] {
    while (running.load()) {
      rss_peak = std::max(rss_peak, RssKib(daemon));
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  for (int i = 0; i < a.vms; ++i) {
    threads.emplace_back([&, i] { outs[i] = Migrate(vms[i], bytes, control); });
  }
  absl::SleepFor(absl::Milliseconds(150));
  kill(source2, SIGKILL);
  for (auto& t : threads) t.join();
  running.store(false);
  rss.join();

  uint64_t done = 0, total_bytes = 0;
  double slowest = 0;  // the migrations start together: the last to complete ends the drain
  std::printf("%-8s %-6s %9s %9s %9s %8s  %s\n", "vm", "ok", "seconds", "p50 µs", "p99 µs",
              "faults", "error");
  std::printf("%-8s %-6s %9.2f %9llu %9llu %8llu\n", "alone", alone.ok ? "yes" : "NO",
              alone.seconds, (unsigned long long)alone.p50_us, (unsigned long long)alone.p99_us,
              (unsigned long long)alone.faults);
  for (int i = 0; i < a.vms; ++i) {
    const Outcome& o = outs[i];
    std::printf("%-8s %-6s %9.2f %9llu %9llu %8llu  %s\n", vms[i].id.c_str(), o.ok ? "yes" : "no",
                o.seconds, (unsigned long long)o.p50_us, (unsigned long long)o.p99_us,
                (unsigned long long)o.faults,
                i == killed ? absl::StrCat("(source killed) ", o.error).c_str() : o.error.c_str());
    if (o.ok) {
      ++done;
      total_bytes += bytes;
      slowest = std::max(slowest, o.seconds);
    }
  }
  std::vector<uint64_t> p99s;
  for (int i = 0; i < a.vms; ++i) {
    if (outs[i].ok) p99s.push_back(outs[i].p99_us);
  }
  std::sort(p99s.begin(), p99s.end());
  const uint64_t worst_p99 = p99s.empty() ? 0 : p99s.back();
  std::printf(
      "\n%d migrations of %llu MiB at once (one with its source killed): %llu completed and "
      "verified; the killed one %s\n"
      "aggregate %.0f MB/s (the %llu that completed, %.2f s to the last) vs one alone %.0f MB/s "
      "(%.2f s): %.2fx\n"
      "fault latency p99: worst of the %llu %llu µs vs alone %llu µs (%.2fx; target <= 2x)\n"
      "daemon memory: %llu KiB before, %llu KiB peak: %.0f KiB per running migration\n",
      a.vms, (unsigned long long)a.mib, (unsigned long long)done,
      outs[killed].ok ? "completed too (the source died after its last page?)"
                      : "failed with a clear error",
      total_bytes / slowest / 1e6, (unsigned long long)done, slowest, bytes / alone.seconds / 1e6,
      alone.seconds, (total_bytes / slowest) / (bytes / alone.seconds),
      (unsigned long long)p99s.size(), (unsigned long long)worst_p99,
      (unsigned long long)alone.p99_us,
      alone.p99_us ? static_cast<double>(worst_p99) / alone.p99_us : 0.0, (unsigned long long)rss0,
      (unsigned long long)rss_peak, a.vms ? static_cast<double>(rss_peak - rss0) / a.vms : 0.0);
  kill(daemon, SIGTERM);
  kill(source, SIGTERM);
  waitpid(daemon, nullptr, 0);
  waitpid(source, nullptr, 0);
  waitpid(source2, nullptr, 0);
  for (const Vm& vm : vms) unlink(vm.ram.c_str());
  const bool good = done == static_cast<uint64_t>(a.vms - 1) && alone.ok && !outs[killed].ok;
  std::printf("%s (logs in %s)\n", good ? "PASS" : "FAIL", dir.c_str());
  return good ? 0 : 1;
}

}  // namespace
}  // namespace faultline

int main(int argc, char** argv) {
  faultline::Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto val = [&](const char* k) { return s.substr(strlen(k)); };
    if (s.rfind("--vms=", 0) == 0) a.vms = std::stoi(val("--vms="));
    if (s.rfind("--mib=", 0) == 0) a.mib = std::stoull(val("--mib="));
    if (s.rfind("--bulk_channels=", 0) == 0) a.bulk_channels = std::stoi(val("--bulk_channels="));
    if (s.rfind("--guest_threads=", 0) == 0) a.guest_threads = std::stoi(val("--guest_threads="));
  }
  signal(SIGPIPE, SIG_IGN);
  faultline::g_guest_threads = a.guest_threads;
  return faultline::Main(a);
}
