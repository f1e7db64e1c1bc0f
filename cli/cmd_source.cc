// faultline source: serves a frozen VM's memory (files or memfds, mapped read-only) to a
// destination: the page server (transport/page_server.h), over TCP, TLS or RDMA.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/common.h"
#include "cli/setup.h"
#include "nlohmann/json.hpp"
#include "qemu-integration/handoff/vmm_dirty_tracker.h"
#include "transport/page_server.h"
#include "transport/rdma_page_server.h"
#include "transport/socket.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7470", "source: address to serve pages on.");
ABSL_FLAG(std::vector<std::string>, region, {},
          "source: NAME=PATH[:SIZE[:PAGE_SIZE[:OFFSET]]], a file, memfd (/proc/PID/fd/N) or "
          "hugetlbfs file holding the frozen VM's RAM; repeat or comma-separate for more.");

ABSL_FLAG(std::string, vmm_dirty_socket, "",
          "source: warm-up of a QEMU guest — listen on this Unix socket for the source QEMU's "
          "dirty-log connection (hand it to QEMU with getfd + x-postcopy-external-pager-fd "
          "before migrate); pages are served live and the destination must run --warmup.");
ABSL_FLAG(std::string, source_read, "auto",
          "source: how pages are read before they are checked and sent — copy (pread() into a "
          "buffer: no page fault in this process), map (straight from the read-only mapping), "
          "or auto (copy for 4 KiB pages, map for huge pages).");
ABSL_FLAG(
    std::string, migrations, "",
    "source: serve several VMs' memory from this one process (a host being drained): a "
    "JSON file [{\"id\":\"vm-1\",\"token\":\"<64 hex>\",\"regions\":[\"ram=PATH[:SIZE...]\"]}, "
    "...]; each destination gets the VM its token names. Runs until SIGTERM.");

namespace faultline {
namespace {

std::atomic<PageServer*> g_server{nullptr};
void OnSignal(int) {
  if (PageServer* s = g_server.load()) s->Shutdown();
}

absl::StatusOr<SourceRead> SourceReadFromFlag() {
  absl::StatusOr<SourceRead> r = ParseSourceRead(absl::GetFlag(FLAGS_source_read));
  if (!r.ok())
    return absl::InvalidArgumentError(absl::StrCat("--source_read: ", r.status().message()));
  return r;
}

// --migrations: several VMs, one page server.
int RunMultiSource(const std::string& file) {
  std::ifstream f(file);
  if (!f) return Fail(absl::NotFoundError(absl::StrCat("--migrations: cannot read ", file)));
  nlohmann::json list = nlohmann::json::parse(f, nullptr, false);
  if (!list.is_array() || list.empty()) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--migrations: ", file, " must hold a non-empty JSON array")));
  }
  absl::StatusOr<std::shared_ptr<const TlsContext>> tls = TlsFromFlags(TlsContext::Role::kServer);
  if (!tls.ok()) return Fail(tls.status());
  absl::StatusOr<SourceRead> read = SourceReadFromFlag();
  if (!read.ok()) return Fail(read.status());
  absl::StatusOr<BulkThreads> bulk = BulkThreadsFromFlags();
  if (!bulk.ok()) return Fail(bulk.status());
  PageServer server(*tls);
  server.SetUrgentSlice(absl::GetFlag(FLAGS_fault_slice));
  server.SetSourceRead(*read);
  server.SetBulkThreads(*bulk);
  for (const nlohmann::json& m : list) {
    const std::string id = m.value("id", std::string());
    absl::StatusOr<Token> token = ParseToken(m.value("token", std::string()));
    if (id.empty() || !token.ok() || !m.contains("regions") || !m["regions"].is_array()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
          "--migrations: every entry needs \"id\", \"token\" (64 hex) and \"regions\" (", file,
          ")")));
    }
    std::vector<std::string> specs;
    for (const nlohmann::json& spec : m["regions"]) {
      specs.push_back(spec.is_string() ? spec.get<std::string>() : std::string());
    }
    absl::StatusOr<std::vector<SourceRegion>> regions = SourceRegionsFromSpecs(specs);
    if (!regions.ok()) return Fail(regions.status());
    if (absl::Status s = server.AddMigration(id, std::move(*regions), *token); !s.ok()) {
      return Fail(s);
    }
  }
  absl::StatusOr<UniqueFd> listen = ListenTcp(absl::GetFlag(FLAGS_listen));
  if (!listen.ok()) return Fail(listen.status());
  std::printf("serving %zu migrations on %s (%s)\n", list.size(),
              absl::GetFlag(FLAGS_listen).c_str(), TlsMode(*tls).c_str());
  std::fflush(stdout);
  g_server.store(&server);
  signal(SIGTERM, OnSignal);
  signal(SIGINT, OnSignal);
  absl::Status s = server.Serve(listen->get());
  g_server.store(nullptr);
  const ServerStats& st = server.stats();
  std::printf("pages sent: urgent %llu, bulk %llu, zero %llu; %.1f MiB\n",
              (unsigned long long)st.urgent_pages.load(), (unsigned long long)st.bulk_pages.load(),
              (unsigned long long)st.zero_pages.load(), st.bytes.load() / 1048576.0);
  return s.ok() || s.code() == absl::StatusCode::kCancelled ? 0 : Fail(s);
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

}  // namespace

int RunSource() {
  if (!absl::GetFlag(FLAGS_migrations).empty())
    return RunMultiSource(absl::GetFlag(FLAGS_migrations));
  absl::StatusOr<SourceRead> read = SourceReadFromFlag();
  if (!read.ok()) return Fail(read.status());
  absl::StatusOr<BulkThreads> bulk = BulkThreadsFromFlags();
  if (!bulk.ok()) return Fail(bulk.status());
  absl::StatusOr<std::vector<SourceRegion>> regions =
      SourceRegionsFromSpecs(absl::GetFlag(FLAGS_region));
  if (!regions.ok()) return Fail(regions.status());
  if (regions->empty()) {
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
  absl::StatusOr<std::shared_ptr<const TlsContext>> tls = TlsFromFlags(TlsContext::Role::kServer);
  if (!tls.ok()) return Fail(tls.status());
  absl::StatusOr<UniqueFd> listen = ListenTcp(absl::GetFlag(FLAGS_listen));
  if (!listen.ok()) return Fail(listen.status());
  std::unique_ptr<VmmDirtyTracker> tracker;
  if (const std::string path = absl::GetFlag(FLAGS_vmm_dirty_socket); !path.empty()) {
    std::vector<RegionInfo> table;
    for (const SourceRegion& r : *regions) table.push_back(r.info());
    absl::StatusOr<std::unique_ptr<VmmDirtyTracker>> t = VmmDirtyTracker::Listen(path, table);
    if (!t.ok()) {
      return Fail(absl::Status(t.status().code(),
                               absl::StrCat("--vmm_dirty_socket: ", t.status().message())));
    }
    tracker = std::move(*t);
    std::printf("warm-up: waiting for the source VMM's dirty-log connection on %s\n", path.c_str());
  }
  PageServer server(std::move(*regions), token, *tls, tracker.get());
  server.SetUrgentSlice(absl::GetFlag(FLAGS_fault_slice));
  server.SetSourceRead(*read);
  server.SetBulkThreads(*bulk);
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
  std::printf(
      "pages sent: urgent %llu, bulk %llu, zero %llu; %.1f MiB; refused requests %llu, "
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

}  // namespace faultline
