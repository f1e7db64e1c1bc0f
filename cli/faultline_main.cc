// faultline: post-copy live-migration engine. See `faultline --help`.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/demo.h"
#include "cli/handoff_run.h"
#include "cli/local_run.h"
#include "engine/engine.h"
#include "qemu-integration/libvirt/libvirt_migration.h"
#include "transport/page_server.h"
#include "transport/rdma_page_server.h"
#include "transport/rdma_page_source.h"
#include "transport/socket.h"
#include "transport/tcp_page_source.h"
#include "transport/tls.h"

ABSL_FLAG(std::string, kind, "memfd",
          "Destination region kind: anon, memfd, hugetlb, guest_memfd, or 'all' (local).");
ABSL_FLAG(std::string, size, "1G", "Guest memory size (local and dest), e.g. 256M, 1G, 4G.");
ABSL_FLAG(std::string, listen, "127.0.0.1:7470", "source: address to serve pages on.");
ABSL_FLAG(std::string, connect, "127.0.0.1:7470", "dest: the source page server's address.");
ABSL_FLAG(std::string, token, "",
          "Per-migration secret, 64 hex digits, the same on both sides (source: generated and "
          "printed when empty).");
ABSL_FLAG(std::vector<std::string>, region, {},
          "source: NAME=PATH[:SIZE[:PAGE_SIZE[:OFFSET]]], a file, memfd (/proc/PID/fd/N) or "
          "hugetlbfs file holding the frozen VM's RAM; repeat or comma-separate for more.");
ABSL_FLAG(std::string, guest, "seq,random,hot",
          "Thread-guest access patterns, one thread each (seq, random, hot); empty: no guest.");
ABSL_FLAG(int64_t, touches, 20000, "Touches per guest thread.");
ABSL_FLAG(std::string, stats_json, "", "Write the final report as JSON to this file.");
ABSL_FLAG(bool, busy_poll, false,
          "Spin on the urgent socket and the userfaultfd instead of sleeping: lower fault "
          "latency, two busy cores.");
ABSL_FLAG(int32_t, bulk_batch_kib, 1024, "Bytes per background request, KiB.");
ABSL_FLAG(int32_t, bulk_window, 4, "Background requests in flight.");
ABSL_FLAG(bool, progress, true, "Show a progress bar while pages arrive.");
ABSL_FLAG(absl::Duration, reconnect_deadline, absl::Seconds(30),
          "When the connection to the source breaks, keep the guest waiting and reconnect "
          "for up to this long (0: fail at once).");
ABSL_FLAG(std::string, handoff, "/run/faultline.sock",
          "serve: the Unix socket a VMM hands its userfaultfd and memory over on.");
ABSL_FLAG(std::string, state_dir, "/run/faultline",
          "serve: directory of the per-migration page-state files (a tmpfs). If faultline "
          "dies mid-migration, a new `serve` with the same token continues from the file "
          "when the VMM hands the same uffd over again. Empty: keep no state file.");
ABSL_FLAG(int32_t, vcpus, 1, "demo: vCPUs of the guest (1 or 2).");
ABSL_FLAG(std::string, dest_ram, "memfd",
          "demo: destination RAM backing: memfd, anon, or guest_memfd (needs the kernel/ "
          "series: userfaultfd on guest_memfd + vCPU exits for missing pages).");
ABSL_FLAG(int64_t, guest_touches, 4096, "demo: touches per guest phase per vCPU.");
ABSL_FLAG(bool, guest_serial, false, "demo: print the destination guest's serial lines.");
ABSL_FLAG(double, kill_engine_at, 0,
          "demo: SIGKILL the faultline process once this fraction of the pages is present and "
          "let a new `faultline serve` take over the same uffd (engine restart). 0: never.");
ABSL_FLAG(std::string, domain, "", "migrate: the libvirt domain to migrate.");
ABSL_FLAG(std::string, source_uri, "qemu:///system", "migrate: the source's libvirt URI.");
ABSL_FLAG(std::string, dest_uri, "",
          "migrate: the destination's libvirt URI (e.g. qemu+ssh://host2/system); the source's "
          "libvirtd connects to it (peer-to-peer).");
ABSL_FLAG(std::string, migrate_uri, "",
          "migrate: QEMU's data connection, e.g. tcp://10.0.0.2:49152 (default: libvirt's).");
ABSL_FLAG(bool, pager, true,
          "migrate: post-copy through faultline (the x-postcopy-external-pager capability; "
          "`faultline serve --handoff=SOCKET` must be running on the destination). false: "
          "QEMU's own post-copy.");
ABSL_FLAG(absl::Duration, postcopy_after, absl::ZeroDuration(),
          "migrate: request post-copy after this long (0: after the first pre-copy pass; "
          "with the pager that pass is only device state and small blocks).");
ABSL_FLAG(absl::Duration, migrate_timeout, absl::Minutes(10),
          "migrate: abort a migration still pre-copying after this long (the domain stays on "
          "the source; post-copy is never aborted).");
ABSL_FLAG(uint64_t, bandwidth_mib, 0,
          "migrate: limit pre-copy to this many MiB/s (libvirt's --bandwidth; 0: no limit). "
          "Post-copy is never limited.");
ABSL_FLAG(bool, persist_dest, false, "migrate: define the domain persistently on the destination.");
ABSL_FLAG(bool, undefine_source, false, "migrate: undefine the domain on the source afterwards.");
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
namespace {

constexpr char kUsage[] =
    "faultline — post-copy live-migration engine (destination side + source page server)\n"
    "\n"
    "Usage:\n"
    "  faultline local  [--kind=memfd|anon|hugetlb|guest_memfd|all] [--size=1G]\n"
    "                   [--guest=seq,random,hot] [--stats_json=FILE]\n"
    "      A self-contained migration on this machine: a source page server (child process)\n"
    "      serves memory filled with a known pattern over loopback TCP; the destination engine\n"
    "      catches userfaultfd faults of a thread guest reading the memory while it arrives,\n"
    "      pulls the rest in the background, then compares every page with the source.\n"
    "  faultline source --listen=HOST:PORT --region=ram=/dev/shm/vm-ram [--token=HEX]\n"
    "      Serve a frozen VM's memory (files or memfds, mapped read-only) to one destination.\n"
    "  faultline dest   --connect=HOST:PORT --token=HEX [--kind=memfd] [--guest=...]\n"
    "      Create destination memory matching the source's regions, run the thread guest on\n"
    "      it while post-copy fills it, verify every page by CRC32C against the source.\n"
    "  faultline serve  --handoff=/run/faultline.sock --connect=HOST:PORT --token=HEX\n"
    "                   [--state_dir=/run/faultline]\n"
    "      Wait for one VMM to hand over its userfaultfd and guest memory (faultline's\n"
    "      hand-off or Firecracker's), then serve its faults from the source page server.\n"
    "      Restart: the page-state map is kept in STATE_DIR/<hash of token>.state; if this\n"
    "      process dies mid-migration, start `serve` again with the same flags and let the\n"
    "      VMM hand over the same uffd again: the new engine adopts the file automatically\n"
    "      and continues (no page lost, none placed twice); the file is removed at the end.\n"
    "  faultline demo   [--size=1G] [--vcpus=1|2] [--dest_ram=memfd|anon|guest_memfd]\n"
    "      The main job: a real KVM guest (reference VMM, /dev/kvm) dirties its memory on a\n"
    "      source VMM, is paused, and resumes at once on a destination VMM whose empty RAM\n"
    "      faultline fills by post-copy over loopback; then every page is verified. Without\n"
    "      /dev/kvm it says why and runs `local` with the thread guest instead.\n"
    "  faultline migrate --domain=NAME --dest_uri=URI [--source_uri=qemu:///system]\n"
    "                   [--migrate_uri=tcp://HOST:PORT] [--handoff=/run/faultline.sock]\n"
    "                   [--pager=true|false] [--stats_json=FILE]\n"
    "      Live-migrate a libvirt domain with post-copy through libvirt's API. With the pager\n"
    "      (default) the domain's QEMU must carry faultline's x-postcopy-external-pager series,\n"
    "      its RAM must be shared memfd/file memory, and on the destination `faultline serve\n"
    "      --handoff=SOCKET` must be waiting, connected to `faultline source` serving the\n"
    "      source QEMU's RAM (qemu-integration/libvirt/README.md). Prints libvirt's events\n"
    "      and job statistics; --pager=false runs QEMU's own post-copy for comparison.\n"
    "\n"
    "TLS (source, dest, serve, demo; default: plain TCP):\n"
    "  source --tls_cert=PEM --tls_key=PEM      serve TLS 1.3 only\n"
    "  dest   --tls_ca=PEM                      connect with TLS, verify the source's certificate\n"
    "         [--tls_server_name=NAME]          and its name (default: the host/IP of --connect)\n"
    "  source --tls_ca=PEM + dest --tls_cert=PEM --tls_key=PEM   mutual TLS: destinations need a\n"
    "                                           certificate signed by the source's CA\n"
    "  The token handshake runs inside TLS unchanged. Making certificates: README.md, \"TLS\".\n"
    "\n"
    "RDMA (source, dest, serve): --transport=rdma on both sides [--rdma_device=NAME]. Pages move\n"
    "  by one-sided RDMA READ; HELLO/WELCOME, VERIFY and DONE stay on the TCP (or TLS) control\n"
    "  connection. Without an RDMA device it says so and lists the devices found.\n"
    "\n"
    "Requires userfaultfd (root, or vm.unprivileged_userfaultfd=1). hugetlb needs reserved\n"
    "2 MiB pages: echo N > /proc/sys/vm/nr_hugepages.\n";

absl::StatusOr<uint64_t> ParseSize(const std::string& s) {
  if (s.empty()) return absl::InvalidArgumentError("empty size");
  uint64_t mult = 1;
  std::string num = s;
  switch (s.back()) {
    case 'K': case 'k': mult = 1ull << 10; num.pop_back(); break;
    case 'M': case 'm': mult = 1ull << 20; num.pop_back(); break;
    case 'G': case 'g': mult = 1ull << 30; num.pop_back(); break;
    default: break;
  }
  uint64_t v;
  if (!absl::SimpleAtoi(num, &v) || v == 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad size '", s, "' (e.g. 512M, 1G)"));
  }
  return v * mult;
}

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

EngineOptions EngineOpts() {
  EngineOptions o;
  o.bulk_batch_bytes = static_cast<uint32_t>(absl::GetFlag(FLAGS_bulk_batch_kib)) << 10;
  o.bulk_window = static_cast<uint32_t>(absl::GetFlag(FLAGS_bulk_window));
  o.busy_poll = absl::GetFlag(FLAGS_busy_poll);
  o.reconnect_deadline = absl::GetFlag(FLAGS_reconnect_deadline);
  return o;
}

absl::StatusOr<GuestOptions> GuestOpts() {
  GuestOptions g;
  absl::StatusOr<std::vector<AccessPattern>> p = ParsePatterns(absl::GetFlag(FLAGS_guest));
  if (!p.ok()) return p.status();
  g.threads = *p;
  g.touches_per_thread = static_cast<uint64_t>(absl::GetFlag(FLAGS_touches));
  return g;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "faultline: error: %s\n", std::string(s.message()).c_str());
  return 1;
}

// The --tls_* flags as a context for one side; null without any of them (plain TCP).
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

int Local() {
  absl::StatusOr<uint64_t> size = ParseSize(absl::GetFlag(FLAGS_size));
  if (!size.ok()) return Fail(size.status());
  absl::StatusOr<GuestOptions> guest = GuestOpts();
  if (!guest.ok()) return Fail(guest.status());
  std::vector<RegionKind> kinds;
  if (absl::GetFlag(FLAGS_kind) == "all") {
    kinds = {RegionKind::kAnonymous, RegionKind::kMemfd, RegionKind::kHugetlb};
  } else {
    absl::StatusOr<RegionKind> k = ParseRegionKind(absl::GetFlag(FLAGS_kind));
    if (!k.ok()) return Fail(k.status());
    kinds = {*k};
  }
  std::vector<LocalRunReport> reports;
  bool bad = false;
  for (RegionKind k : kinds) {
    std::printf("faultline local: %s, %llu MiB, guest threads: %s\n", RegionKindName(k),
                static_cast<unsigned long long>(*size >> 20),
                absl::GetFlag(FLAGS_guest).empty() ? "none" : absl::GetFlag(FLAGS_guest).c_str());
    std::fflush(stdout);
    LocalRunOptions o;
    o.kind = k;
    o.size = *size;
    o.guest = *guest;
    o.run_guest = !guest->threads.empty();
    o.engine = EngineOpts();
    o.transport_busy_poll = absl::GetFlag(FLAGS_busy_poll);
    if (absl::GetFlag(FLAGS_progress)) o.progress = ProgressBar;
    absl::StatusOr<LocalRunReport> r = RunLocalMigration(o);
    if (!r.ok()) {
      std::fprintf(stderr, "faultline local (%s): error: %s\n", RegionKindName(k),
                   std::string(r.status().message()).c_str());
      bad = true;
      continue;
    }
    std::printf("%s\n", ReportTable(*r).c_str());
    if (r->mismatches) bad = true;
    reports.push_back(std::move(*r));
  }
  if (!absl::GetFlag(FLAGS_stats_json).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_stats_json)) << ReportJson(reports) << "\n";
  }
  return bad ? 1 : 0;
}

// --transport: null for tcp; an RDMA extension of `server` for rdma.
absl::StatusOr<std::unique_ptr<RdmaPageServer>> RdmaServerFromFlags(PageServer* server) {
  const std::string t = absl::GetFlag(FLAGS_transport);
  if (t == "tcp") return std::unique_ptr<RdmaPageServer>();
  if (t != "rdma") {
    return absl::InvalidArgumentError(absl::StrCat("--transport=", t, ": expected tcp or rdma"));
  }
  RdmaDeviceOptions o;
  o.device = absl::GetFlag(FLAGS_rdma_device);
  return RdmaPageServer::Create(server, o);
}

// --transport for the destination: a TCP or an RDMA transport to the source.
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

int Source() {
  std::vector<SourceRegion> regions;
  for (const std::string& spec : absl::GetFlag(FLAGS_region)) {
    std::vector<std::string> nv = absl::StrSplit(spec, absl::MaxSplits('=', 1));
    if (nv.size() != 2) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--region '", spec, "': expected NAME=PATH[:SIZE[:PAGE_SIZE[:OFFSET]]]")));
    }
    std::vector<std::string> parts = absl::StrSplit(nv[1], ':');
    uint64_t size = 0, page_size = 4096, offset = 0;
    if (parts.size() > 1) {
      absl::StatusOr<uint64_t> s = ParseSize(parts[1]);
      if (!s.ok()) return Fail(s.status());
      size = *s;
    }
    if (parts.size() > 2) {
      absl::StatusOr<uint64_t> s = ParseSize(parts[2]);
      if (!s.ok()) return Fail(s.status());
      page_size = *s;
    }
    if (parts.size() > 3 && !absl::SimpleAtoi(parts[3], &offset)) {
      return Fail(absl::InvalidArgumentError("bad offset in --region"));
    }
    if (size == 0) {
      struct stat st;
      if (stat(parts[0].c_str(), &st) != 0) return Fail(absl::NotFoundError(parts[0]));
      size = static_cast<uint64_t>(st.st_size) - offset;
    }
    absl::StatusOr<SourceRegion> r =
        SourceRegion::MapFile(nv[0], parts[0], offset, size, static_cast<uint32_t>(page_size));
    if (!r.ok()) return Fail(r.status());
    regions.push_back(std::move(*r));
  }
  if (regions.empty()) {
    return Fail(absl::InvalidArgumentError("source: give at least one --region NAME=PATH"));
  }
  Token token;
  if (absl::GetFlag(FLAGS_token).empty()) {
    token = RandomToken();
    std::printf("token: %s\n", TokenToHex(token).c_str());
  } else {
    absl::StatusOr<Token> t = ParseToken(absl::GetFlag(FLAGS_token));
    if (!t.ok()) return Fail(t.status());
    token = *t;
  }
  absl::StatusOr<std::shared_ptr<const TlsContext>> tls =
      TlsFromFlags(TlsContext::Role::kServer);
  if (!tls.ok()) return Fail(tls.status());
  absl::StatusOr<UniqueFd> listen = ListenTcp(absl::GetFlag(FLAGS_listen));
  if (!listen.ok()) return Fail(listen.status());
  PageServer server(std::move(regions), token, *tls);
  absl::StatusOr<std::unique_ptr<RdmaPageServer>> rdma = RdmaServerFromFlags(&server);
  if (!rdma.ok()) return Fail(rdma.status());
  std::printf("serving %zu region(s) on %s (%s)\n", server.region_table().size(),
              absl::GetFlag(FLAGS_listen).c_str(), TlsMode(*tls).c_str());
  if (*rdma) {
    std::printf("RDMA: device %s, every region registered for remote read only\n",
                (*rdma)->device_name().c_str());
  }
  std::fflush(stdout);
  absl::Status s = server.Serve(listen->get());
  const ServerStats& st = server.stats();
  std::printf("pages sent: urgent %llu, bulk %llu, zero %llu; %.1f MiB; refused requests %llu, "
              "connections %llu\n",
              (unsigned long long)st.urgent_pages.load(), (unsigned long long)st.bulk_pages.load(),
              (unsigned long long)st.zero_pages.load(), st.bytes.load() / 1048576.0,
              (unsigned long long)st.refused_requests.load(),
              (unsigned long long)st.refused_connections.load());
  if (st.refused_connections.load() > 0) {
    std::printf("last refused connection: %s\n", server.last_refusal().c_str());
  }
  return s.ok() ? 0 : Fail(s);
}

int Dest();

int Serve() {
  absl::StatusOr<Token> token = ParseToken(absl::GetFlag(FLAGS_token));
  if (!token.ok()) return Fail(token.status());
  absl::StatusOr<std::unique_ptr<HandoffServer>> server =
      HandoffServer::Listen(absl::GetFlag(FLAGS_handoff));
  if (!server.ok()) return Fail(server.status());
  std::printf("waiting for a VMM on %s\n", absl::GetFlag(FLAGS_handoff).c_str());
  std::fflush(stdout);
  absl::StatusOr<std::unique_ptr<HandoffSession>> session =
      (*server)->Accept(absl::Hours(24), getuid());
  if (!session.ok()) return Fail(session.status());
  HandoffRunOptions ho;
  ho.source.address = absl::GetFlag(FLAGS_connect);
  ho.source.token = *token;
  ho.source.busy_poll = absl::GetFlag(FLAGS_busy_poll);
  absl::StatusOr<std::shared_ptr<const TlsContext>> tls = TlsFromFlags(TlsContext::Role::kClient);
  if (!tls.ok()) return Fail(tls.status());
  ho.source.tls = *tls;
  ho.source.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  ho.engine = EngineOpts();
  ho.state_dir = absl::GetFlag(FLAGS_state_dir);
  ho.connect = ConnectSource;
  ho.log = [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };
  nlohmann::json stats;
  absl::Status s = RunHandoff(**session, ho, &stats);
  if (!s.ok()) return Fail(s);
  std::printf("%s\n", stats.dump(2).c_str());
  return 0;
}

int Demo() {
  std::string why;
  if (!DemoAvailable(&why)) {
    std::printf("faultline demo: no real KVM guest here (%s);\n"
                "running the self-contained migration with the thread guest instead.\n\n",
                why.c_str());
    return Local();
  }
  absl::StatusOr<uint64_t> size = ParseSize(absl::GetFlag(FLAGS_size));
  if (!size.ok()) return Fail(size.status());
  DemoOptions o;
  o.ram_size = *size;
  o.vcpus = static_cast<uint32_t>(absl::GetFlag(FLAGS_vcpus));
  o.dest_backing = absl::GetFlag(FLAGS_dest_ram);
  o.touches = static_cast<uint64_t>(absl::GetFlag(FLAGS_guest_touches));
  o.kill_engine_at = absl::GetFlag(FLAGS_kill_engine_at);
  if (!absl::GetFlag(FLAGS_tls_cert).empty() || !absl::GetFlag(FLAGS_tls_key).empty() ||
      !absl::GetFlag(FLAGS_tls_ca).empty()) {
    // Both ends are here: the page server serves --tls_cert; faultline verifies it with
    // --tls_ca and presents the same certificate (the source, given the CA, requires one).
    absl::StatusOr<std::shared_ptr<const TlsContext>> server =
        TlsFromFlags(TlsContext::Role::kServer);
    if (!server.ok()) return Fail(server.status());
    absl::StatusOr<std::shared_ptr<const TlsContext>> client =
        TlsFromFlags(TlsContext::Role::kClient);
    if (!client.ok()) return Fail(client.status());
    o.server_tls = *server;
    o.client_tls = *client;
    o.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  }
  o.engine = EngineOpts();
  if (absl::GetFlag(FLAGS_progress)) {
    o.progress = [](uint64_t done, uint64_t total) { ProgressBar(done * 4096, total * 4096); };
  }
  if (absl::GetFlag(FLAGS_guest_serial)) {
    o.guest_line = [](const std::string& l) { std::printf("  [dest guest] %s\n", l.c_str()); };
  }
  std::printf("faultline demo: a %llu MiB KVM guest, %u vCPU(s); source VMM → faultline → "
              "destination VMM (%s RAM) over loopback\n",
              static_cast<unsigned long long>(o.ram_size >> 20), o.vcpus, o.dest_backing.c_str());
  std::printf("  the source guest dirties every page first (emulated KVM here: ~15 s per "
              "GiB)...\n");
  std::fflush(stdout);
  absl::StatusOr<DemoReport> r = RunDemo(o);
  if (!r.ok()) return Fail(r.status());
  std::printf("\n%s", DemoReportTable(*r).c_str());
  if (!absl::GetFlag(FLAGS_stats_json).empty()) {
    nlohmann::json phases = nlohmann::json::array();
    for (const GuestPhase& p : r->phases) {
      phases.push_back({{"cpu", p.cpu}, {"phase", p.phase}, {"touches", p.touches},
                        {"cycles_p50", p.cycles_p50}, {"cycles_p99", p.cycles_p99},
                        {"cycles_max", p.cycles_max}, {"cycles_total", p.cycles_total},
                        {"slow", p.slow}, {"bad", p.bad}});
    }
    nlohmann::json j = {{"guest_phases", phases},
                        {"tsc_khz", r->tsc_khz},
                        {"downtime_ms", r->downtime_ms},
                        {"missing_exits", r->missing_exits},
                        {"total_seconds", r->total_seconds},
                        {"guest_seconds", r->guest_seconds},
                        {"verified_pages", r->verified_pages},
                        {"mismatches", r->mismatches},
                        {"guest_bad_reads", r->guest_bad},
                        {"engine", r->engine}};
    std::ofstream(absl::GetFlag(FLAGS_stats_json)) << j.dump(2) << "\n";
  }
  return r->mismatches == 0 && r->guest_bad == 0 ? 0 : 1;
}

int Migrate() {
  LibvirtMigrateOptions o;
  o.domain = absl::GetFlag(FLAGS_domain);
  o.source_uri = absl::GetFlag(FLAGS_source_uri);
  o.dest_uri = absl::GetFlag(FLAGS_dest_uri);
  o.migrate_uri = absl::GetFlag(FLAGS_migrate_uri);
  o.pager = absl::GetFlag(FLAGS_pager);
  o.pager_socket = absl::GetFlag(FLAGS_handoff);
  o.postcopy_after = absl::GetFlag(FLAGS_postcopy_after);
  o.timeout = absl::GetFlag(FLAGS_migrate_timeout);
  o.bandwidth_mib = absl::GetFlag(FLAGS_bandwidth_mib);
  o.persist_dest = absl::GetFlag(FLAGS_persist_dest);
  o.undefine_source = absl::GetFlag(FLAGS_undefine_source);
  o.log = [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };
  absl::StatusOr<LibvirtMigrateReport> r = MigrateDomain(o);
  if (!r.ok()) return Fail(r.status());
  auto ms = [](int64_t v) { return v < 0 ? std::string("?") : absl::StrCat(v, " ms"); };
  auto mib = [](int64_t v) {
    return v < 0 ? std::string("?") : absl::StrFormat("%.1f MiB", v / 1048576.0);
  };
  std::printf(
      "\nmigrated '%s' (%s): %.2f s (libvirt: %s), downtime %s, post-copy from %.2f s, "
      "stream %s (memory %s, %lld pre-copy passes, %lld post-copy requests)%s\n",
      o.domain.c_str(), r->pager ? "post-copy through faultline" : "QEMU's own post-copy",
      r->seconds, ms(r->time_elapsed_ms).c_str(), ms(r->downtime_ms).c_str(), r->postcopy_at,
      mib(r->data_processed).c_str(), mib(r->memory_processed).c_str(),
      static_cast<long long>(r->memory_iteration), static_cast<long long>(r->postcopy_requests),
      r->pager ? (r->dest_pager_capability ? "; destination QEMU ran with the pager"
                                           : "; WARNING: the destination QEMU does not report "
                                             "the pager capability")
               : "");
  if (!absl::GetFlag(FLAGS_stats_json).empty()) {
    std::ofstream f(absl::GetFlag(FLAGS_stats_json));
    f << ReportJson(*r) << "\n";
    if (!f) return Fail(absl::InternalError("cannot write --stats_json"));
  }
  return r->pager && !r->dest_pager_capability ? 1 : 0;
}

}  // namespace
}  // namespace faultline

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(faultline::kUsage);
  // Accept --stats-json as well as --stats_json: dashes in a flag's name become underscores.
  std::vector<std::string> normalized(argv, argv + argc);
  std::vector<char*> raw;
  for (std::string& a : normalized) {
    if (a.rfind("--", 0) == 0) {
      const size_t end = std::min(a.find('='), a.size());
      for (size_t i = 2; i < end; ++i) {
        if (a[i] == '-') a[i] = '_';
      }
    }
    raw.push_back(a.data());
  }
  std::vector<char*> args = absl::ParseCommandLine(static_cast<int>(raw.size()), raw.data());
  if (args.size() < 2) {
    std::fputs(faultline::kUsage, stderr);
    return 2;
  }
  const std::string cmd = args[1];
  if (cmd == "local") return faultline::Local();
  if (cmd == "source") return faultline::Source();
  if (cmd == "dest") return faultline::Dest();
  if (cmd == "serve") return faultline::Serve();
  if (cmd == "demo") return faultline::Demo();
  if (cmd == "migrate") return faultline::Migrate();
  std::fprintf(stderr, "faultline: unknown command '%s'\n\n%s", cmd.c_str(), faultline::kUsage);
  return 2;
}

namespace faultline {
namespace {

int Dest() {
  absl::StatusOr<Token> token = ParseToken(absl::GetFlag(FLAGS_token));
  if (!token.ok()) return Fail(token.status());
  absl::StatusOr<RegionKind> kind = ParseRegionKind(absl::GetFlag(FLAGS_kind));
  if (!kind.ok()) return Fail(kind.status());
  absl::StatusOr<GuestOptions> guest = GuestOpts();
  if (!guest.ok()) return Fail(guest.status());
  TcpSourceOptions topts;
  topts.address = absl::GetFlag(FLAGS_connect);
  topts.token = *token;
  topts.busy_poll = absl::GetFlag(FLAGS_busy_poll);
  absl::StatusOr<std::shared_ptr<const TlsContext>> tls = TlsFromFlags(TlsContext::Role::kClient);
  if (!tls.ok()) return Fail(tls.status());
  topts.tls = *tls;
  topts.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  absl::StatusOr<std::unique_ptr<PageSource>> source = ConnectSource(topts);
  if (!source.ok()) return Fail(source.status());
  std::vector<std::unique_ptr<GuestRegion>> owned;
  std::vector<GuestRegion*> regions;
  uint64_t total = 0;
  for (const RegionInfo& ri : (*source)->regions()) {
    RegionKind k = *kind;
    if (ri.page_size == (2u << 20)) k = RegionKind::kHugetlb;
    absl::StatusOr<std::unique_ptr<GuestRegion>> r = GuestRegion::Create(ri.name, k, ri.size);
    if (!r.ok()) return Fail(r.status());
    regions.push_back(r->get());
    owned.push_back(std::move(*r));
    total += ri.size;
  }
  absl::StatusOr<Userfaultfd> uffd = Userfaultfd::Open();
  if (!uffd.ok()) return Fail(uffd.status());
  EngineOptions eo = EngineOpts();
  eo.finish_source = false;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(regions, std::move(*uffd), eo);
  if (!engine.ok()) return Fail(engine.status());
  std::vector<std::unique_ptr<ThreadGuest>> guests;
  if (!guest->threads.empty()) {
    for (GuestRegion* r : regions) {
      guests.push_back(std::make_unique<ThreadGuest>(r->base(), r->size(), r->page_size(),
                                                     *guest));
    }
  }
  std::atomic<bool> running{true};
  std::thread progress([&] {
    while (running.load() && absl::GetFlag(FLAGS_progress)) {
      ProgressBar(total - (*engine)->remaining_pages() * 4096, total);
      usleep(100000);
    }
  });
  const absl::Time t0 = absl::Now();
  absl::Status s = (*engine)->Run(source->get());
  running.store(false);
  progress.join();
  if (!s.ok()) return Fail(s);
  for (auto& g : guests) g->Join();
  const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
  std::vector<const uint8_t*> bases;
  for (GuestRegion* r : regions) bases.push_back(r->base());
  uint64_t verified = 0;
  absl::StatusOr<uint64_t> bad = VerifyAgainstSource(topts, bases, &verified, true);
  if (!bad.ok()) return Fail(bad.status());
  const EngineCounters& c = (*engine)->counters();
  LatencyHistogram h = (*engine)->fault_stats().Overall();
  std::printf("pages urgent/bulk/zero %llu/%llu/%llu, %.3f s, fault latency %s\n"
              "verified %llu pages, %llu mismatches\n",
              (unsigned long long)c.urgent_pages.load(), (unsigned long long)c.bulk_pages.load(),
              (unsigned long long)c.zero_pages.load(), secs, h.Summary().c_str(),
              (unsigned long long)verified, (unsigned long long)*bad);
  return *bad == 0 ? 0 : 1;
}

}  // namespace
}  // namespace faultline
