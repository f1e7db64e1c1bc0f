// faultline source: serves a frozen VM's memory (files or memfds, mapped read-only) to a
// destination: the page server (transport/page_server.h), over TCP, TLS or RDMA.
#include <sys/stat.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/common.h"
#include "transport/page_server.h"
#include "transport/rdma_page_server.h"
#include "transport/socket.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7470", "source: address to serve pages on.");
ABSL_FLAG(std::vector<std::string>, region, {},
          "source: NAME=PATH[:SIZE[:PAGE_SIZE[:OFFSET]]], a file, memfd (/proc/PID/fd/N) or "
          "hugetlbfs file holding the frozen VM's RAM; repeat or comma-separate for more.");

namespace faultline {
namespace {

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
  absl::StatusOr<std::shared_ptr<const TlsContext>> tls = TlsFromFlags(TlsContext::Role::kServer);
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
