#include "cli/common.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "base/cpu_list.h"
#include "base/fix.h"
#include "base/thread_slice.h"
#include "transport/rdma_page_source.h"

ABSL_FLAG(std::string, kind, "memfd",
          "Destination region kind: anon, memfd, hugetlb, guest_memfd, or 'all' (local).");
ABSL_FLAG(std::string, size, "1G", "Guest memory size (local, demo), e.g. 256M, 1G, 4G.");
ABSL_FLAG(std::string, connect, "127.0.0.1:7470", "dest, serve: the source page server's address.");
ABSL_FLAG(std::string, token, "",
          "Per-migration secret, 64 hex digits, the same on both sides (source: generated and "
          "printed when empty).");
ABSL_FLAG(std::string, guest, "seq,random,hot",
          "local, dest: thread-guest access patterns, one thread each (seq, random, hot); "
          "empty: no guest.");
ABSL_FLAG(int64_t, touches, 20000, "local, dest: touches per guest thread.");
ABSL_FLAG(std::string, stats_json, "", "Write the final report as JSON to this file.");
ABSL_FLAG(bool, progress, true, "Show a progress bar while pages arrive.");
ABSL_FLAG(bool, busy_poll, false,
          "Spin on the urgent socket and the userfaultfd instead of sleeping: lower fault "
          "latency, two busy cores.");
ABSL_FLAG(int32_t, bulk_batch_kib, 1024, "Bytes per background request, KiB.");
ABSL_FLAG(int32_t, bulk_window, 4, "Background requests in flight per bulk channel.");
ABSL_FLAG(int32_t, bulk_channels, 1,
          "Bulk connections to the source (1..16), each with its own receiving thread here and "
          "serving thread there: more cores for the background stream. Urgent faults always "
          "have a connection of their own.");
ABSL_FLAG(absl::Duration, bulk_solo_after_fault, absl::ZeroDuration(),
          "With --bulk_channels > 1: for this long after a fault only the first bulk channel "
          "takes new requests, so on a host short of cores the other channels' threads do not "
          "delay the fault's (e.g. 2ms; 0: every channel always). Faster faults, slower "
          "total where it matters: bench/RESULTS.md.");
ABSL_FLAG(absl::Duration, bulk_solo_at_start, absl::Milliseconds(20),
          "With --bulk_channels > 1: only the first bulk channel for this long after the "
          "background pull begins, while the VMM's switch-over (device state that reads guest "
          "RAM) faults (0: every channel from the start).");
ABSL_FLAG(absl::Duration, bulk_hold_at_start, absl::ZeroDuration(),
          "No background request for this long after the pull begins: only faulted pages "
          "move while the VMM finishes its switch-over (0: none). A VMM that says when its "
          "guest runs ends it then; serve's --bulk_hold_until_running sets it for those.");
ABSL_FLAG(absl::Duration, fault_slice, faultline::kDefaultFaultSlice,
          "Scheduler time slice of the fault path's threads (destination: uffd reader and "
          "urgent receiver; source: urgent server), Linux >= 6.12: a fault's wake-up then "
          "preempts bulk work at once. 0: the kernel's default.");
ABSL_FLAG(std::string, bulk_cpus, "",
          "serve, dest, source, local, demo: CPUs the background stream's threads run on (e.g. "
          "2-3 or 4,6): its receive threads here, or the source's serving threads — keep it "
          "off the cores the guests' vCPUs use. Empty: anywhere.");
ABSL_FLAG(
    int32_t, bulk_nice, 0,
    "serve, dest, source, local, demo: nice value of the background stream's threads on "
    "both sides (-20..19). Below 0 the stream takes CPU from the guests' vCPUs where they share "
    "cores: the migration ends sooner, the guest runs less meanwhile; the fault path's "
    "threads then take the same value, never ranking below bulk. Needs CAP_SYS_NICE "
    "below 0. 0: unchanged.");
ABSL_FLAG(absl::Duration, reconnect_deadline, absl::Seconds(30),
          "When the connection to the source breaks, keep the guest waiting and reconnect "
          "for up to this long (0: fail at once).");
ABSL_FLAG(bool, warmup, false,
          "demo, serve, dest: warm-up — pull pages while the guest still runs on the source, "
          "in rounds of what it rewrote, and switch to post-copy after (needs a source that "
          "tracks writes, and memfd, hugetlbfs or guest_memfd RAM here).");
ABSL_FLAG(int32_t, warmup_rounds, 8, "Warm-up rounds before the final one, at most.");
ABSL_FLAG(int32_t, warmup_rate_mib, 0,
          "Warm-up's bandwidth limit, MiB/s (0: none); lifted at the switch.");
ABSL_FLAG(absl::Duration, warmup_final_copy, absl::Milliseconds(20),
          "Warm-up: fetch the final set before the guest resumes here when that takes at most "
          "this long at the measured pull rate (adds it to the downtime; 0: never, post-copy "
          "fetches it).");
ABSL_FLAG(int32_t, warmup_throttle, 0,
          "Warm-up: when a round's set stops shrinking (the guest rewrites pages as fast as "
          "they move), ask the source to slow its guest down instead of switching — 20 % of "
          "its vCPU time, --warmup_throttle_step more each such round, up to this percent "
          "(1..99; QEMU's auto-converge). 0: never.");
ABSL_FLAG(int32_t, warmup_throttle_step, 10,
          "Warm-up: percent added to the throttle each round that still does not shrink.");
ABSL_FLAG(int64_t, warmup_converge_pages, 256,
          "Warm-up: switch to post-copy once a round's set is at most this many pages.");
ABSL_FLAG(double, warmup_shrink, 0.8,
          "Warm-up: a round whose set is more than this fraction of the previous one's has "
          "stopped shrinking (then the throttle rises, or warm-up switches). 0..1; 0: every "
          "round that finds a written page counts as not shrinking.");
ABSL_FLAG(absl::Duration, warmup_deadline, absl::Minutes(10),
          "Switch to post-copy after this long even if the rounds have not converged.");
ABSL_FLAG(int32_t, churn_permille, -1,
          "demo, local: the source's guest keeps rewriting this many of every 1000 pages while "
          "the destination warms up, until the final round stops it (0: it waits idle; -1: "
          "demo: no churn phase, paused at once, or idle with --warmup; local: 100).");
ABSL_FLAG(std::string, handoff, "/run/faultline.sock",
          "serve, migrate: the Unix socket a VMM hands its userfaultfd and memory over on.");
ABSL_FLAG(std::string, transport, "tcp",
          "source, dest, serve: tcp, or rdma (one-sided RDMA READ over RC queue pairs; the "
          "control connection stays TCP/TLS).");
ABSL_FLAG(std::string, rdma_device, "",
          "--transport=rdma: the RDMA device (default: the first with an active port).");
ABSL_FLAG(std::string, tls_cert, "",
          "TLS certificate (PEM). source, demo: serve TLS 1.3 with it (with --tls_key). dest, "
          "serve: present it to a source that requires client certificates.");
ABSL_FLAG(std::string, tls_key, "", "The private key of --tls_cert (PEM, not encrypted).");
ABSL_FLAG(std::string, tls_ca, "",
          "CA certificate(s) (PEM). dest, serve: connect with TLS and verify the source's "
          "certificate against it. source: require destinations to present a certificate "
          "signed by it (mutual TLS).");
ABSL_FLAG(std::string, tls_server_name, "",
          "dest, serve: the name the source's certificate must carry (default: the host or IP "
          "of --connect).");

namespace faultline {

void ProgressBar(uint64_t done, uint64_t total) {
  static const bool tty = isatty(STDERR_FILENO);
  static int last_quarter = -1;
  const double f = total ? static_cast<double>(done) / total : 1.0;
  if (tty) {
    const int width = 40, filled = static_cast<int>(f * width);
    std::fprintf(stderr, "\r  [%s%s] %3.0f%%  %llu/%llu MiB", std::string(filled, '#').c_str(),
                 std::string(width - filled, ' ').c_str(), f * 100,
                 static_cast<unsigned long long>(done >> 20),
                 static_cast<unsigned long long>(total >> 20));
    if (done >= total) std::fprintf(stderr, "\n");
  } else if (static_cast<int>(f * 4) > last_quarter) {
    last_quarter = static_cast<int>(f * 4);
    std::fprintf(stderr, "  progress: %3.0f%% (%llu/%llu MiB)\n", f * 100,
                 static_cast<unsigned long long>(done >> 20),
                 static_cast<unsigned long long>(total >> 20));
  }
}

namespace {

// Which flag cures an error a library marked with a Fix (base/fix.h).
const char* FlagHint(Fix f) {
  switch (f) {
    case Fix::kSourceServesTls:
      return "the source must serve TLS: start it with --tls_cert and --tls_key";
    case Fix::kDestUsesTls:
      return "give the destination --tls_ca (the CA that signed the source's certificate)";
    case Fix::kDestClientCertificate:
      return "give the destination --tls_cert and --tls_key (signed by the CA the source got "
             "as --tls_ca)";
    case Fix::kSourceClientCa:
      return "the source's --tls_ca must be the CA that signed the destination's --tls_cert";
    case Fix::kTlsServerName: return "set the name the certificate carries with --tls_server_name";
    case Fix::kTlsCertKeyPair: return "give --tls_cert and --tls_key together";
    case Fix::kSourceServesRdma: return "start the source with --transport=rdma too";
    case Fix::kUseTcp: return "--transport=rdma needs an RDMA device; use --transport=tcp";
  }
  return nullptr;
}

}  // namespace

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "faultline: error: %s\n", std::string(s.message()).c_str());
  if (absl::optional<Fix> f = FixOf(s); f && FlagHint(*f) != nullptr) {
    std::fprintf(stderr, "faultline: %s\n", FlagHint(*f));
  }
  return 1;
}

absl::StatusOr<EngineOptions> EngineOptionsFromFlags(const BulkThreads& bulk) {
  EngineOptions o;
  o.bulk_batch_bytes = static_cast<uint32_t>(absl::GetFlag(FLAGS_bulk_batch_kib)) << 10;
  o.bulk_window = static_cast<uint32_t>(absl::GetFlag(FLAGS_bulk_window));
  o.bulk_solo_after_fault = absl::GetFlag(FLAGS_bulk_solo_after_fault);
  o.bulk_solo_at_start = absl::GetFlag(FLAGS_bulk_solo_at_start);
  o.bulk_hold_at_start = absl::GetFlag(FLAGS_bulk_hold_at_start);
  o.busy_poll = absl::GetFlag(FLAGS_busy_poll);
  o.fault_slice = absl::GetFlag(FLAGS_fault_slice);
  o.fault_nice = bulk.fault_path_nice();
  o.reconnect_deadline = absl::GetFlag(FLAGS_reconnect_deadline);
  o.warmup.enabled = absl::GetFlag(FLAGS_warmup);
  o.warmup.max_rounds = static_cast<uint32_t>(std::max(0, absl::GetFlag(FLAGS_warmup_rounds)));
  o.warmup.rate_bytes_per_s =
      static_cast<uint64_t>(std::max(0, absl::GetFlag(FLAGS_warmup_rate_mib))) << 20;
  o.warmup.deadline = absl::GetFlag(FLAGS_warmup_deadline);
  o.warmup.final_copy = std::max(absl::ZeroDuration(), absl::GetFlag(FLAGS_warmup_final_copy));
  const int32_t throttle = absl::GetFlag(FLAGS_warmup_throttle);
  const int32_t step = absl::GetFlag(FLAGS_warmup_throttle_step);
  if (throttle < 0 || throttle > static_cast<int32_t>(kMaxThrottle)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--warmup_throttle=", throttle, ": expected a percent of the guest's vCPU time, 0..",
        kMaxThrottle, " (0: never slow it down)"));
  }
  if (step < 1 || step > static_cast<int32_t>(kMaxThrottle)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--warmup_throttle_step=", step, ": expected 1..", kMaxThrottle));
  }
  const int64_t converge = absl::GetFlag(FLAGS_warmup_converge_pages);
  if (converge < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--warmup_converge_pages=", converge, ": expected a page count, >= 0"));
  }
  const double shrink = absl::GetFlag(FLAGS_warmup_shrink);
  if (!(shrink >= 0 && shrink <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--warmup_shrink=", shrink, ": expected a fraction of the last set, 0..1"));
  }
  o.warmup.converge_pages = static_cast<uint64_t>(converge);
  o.warmup.shrink = shrink;
  o.warmup.throttle_max = static_cast<uint32_t>(throttle);
  o.warmup.throttle_step = static_cast<uint32_t>(step);
  return o;
}

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsFromFlags(TlsContext::Role role) {
  TlsFiles f;
  f.cert = absl::GetFlag(FLAGS_tls_cert);
  f.key = absl::GetFlag(FLAGS_tls_key);
  f.ca = absl::GetFlag(FLAGS_tls_ca);
  return TlsContext::FromFiles(role, f);
}

std::string TlsMode(const std::shared_ptr<const TlsContext>& tls) {
  if (!tls) return "plain TCP";
  return tls->mutual() ? "TLS 1.3, client certificates required" : "TLS 1.3";
}

absl::StatusOr<GuestOptions> GuestOptionsFromFlags() {
  GuestOptions g;
  absl::StatusOr<std::vector<AccessPattern>> p = ParsePatterns(absl::GetFlag(FLAGS_guest));
  if (!p.ok()) return absl::InvalidArgumentError(absl::StrCat("--guest: ", p.status().message()));
  g.threads = *p;
  g.touches_per_thread = static_cast<uint64_t>(absl::GetFlag(FLAGS_touches));
  return g;
}

absl::StatusOr<BulkThreads> BulkThreadsFromFlags() {
  BulkThreads b;
  const std::string text = absl::GetFlag(FLAGS_bulk_cpus);
  absl::StatusOr<std::vector<int>> cpus = ParseCpuList(text);
  if (cpus.ok()) {
    if (absl::Status s = CheckCpusAllowed(*cpus); !s.ok()) cpus = s;
  }
  if (!cpus.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--bulk_cpus=", text, ": ", cpus.status().message(),
                     " (a list like 2-3,6 of CPUs this process may use; empty: anywhere)"));
  }
  b.cpus = *std::move(cpus);
  b.nice = absl::GetFlag(FLAGS_bulk_nice);
  if (b.nice == 0) return b;  // unchanged: nothing to check (the process may run at any nice)
  if (absl::Status s = CheckNiceAllowed(b.nice); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--bulk_nice=", b.nice, ": ", s.message(),
        absl::IsPermissionDenied(s) ? "; run with CAP_SYS_NICE, or use --bulk_nice=0 or above"
                                    : "; use a value in -20..19 (0: unchanged)"));
  }
  return b;
}

absl::StatusOr<TcpSourceOptions> SourceOptionsFromFlags(const BulkThreads& bulk) {
  TcpSourceOptions o;
  absl::StatusOr<Token> token = ParseToken(absl::GetFlag(FLAGS_token));
  if (!token.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--token: ", token.status().message(), " (the 64 hex digits `faultline source` printed)"));
  }
  o.address = absl::GetFlag(FLAGS_connect);
  o.token = *token;
  o.busy_poll = absl::GetFlag(FLAGS_busy_poll);
  o.urgent_slice = absl::GetFlag(FLAGS_fault_slice);
  o.bulk_threads = bulk;
  const int32_t lanes = absl::GetFlag(FLAGS_bulk_channels);
  if (lanes < 1 || lanes > static_cast<int32_t>(kMaxBulkLanes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--bulk_channels=", lanes, ": expected 1..", kMaxBulkLanes));
  }
  o.bulk_lanes = static_cast<uint32_t>(lanes);
  absl::StatusOr<std::shared_ptr<const TlsContext>> tls = TlsFromFlags(TlsContext::Role::kClient);
  if (!tls.ok()) return tls.status();
  o.tls = *tls;
  o.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  return o;
}

absl::StatusOr<std::unique_ptr<PageSource>> ConnectSource(const TcpSourceOptions& topts) {
  const std::string t = absl::GetFlag(FLAGS_transport);
  if (t == "tcp") {
    absl::StatusOr<std::unique_ptr<TcpPageSource>> s = TcpPageSource::Connect(topts);
    if (!s.ok()) return s.status();
    return std::unique_ptr<PageSource>(std::move(*s));
  }
  if (t != "rdma") {
    return absl::InvalidArgumentError(absl::StrCat("--transport=", t, ": expected tcp or rdma"));
  }
  RdmaSourceOptions o;
  o.control = topts;
  o.device.device = absl::GetFlag(FLAGS_rdma_device);
  absl::StatusOr<std::unique_ptr<RdmaPageSource>> s = RdmaPageSource::Connect(o);
  if (!s.ok()) return s.status();
  return std::unique_ptr<PageSource>(std::move(*s));
}

}  // namespace faultline
