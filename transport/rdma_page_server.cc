#include "transport/rdma_page_server.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "base/unique_fd.h"

namespace faultline {
namespace {

// Linux before 6.2 pins every user memory registration with FOLL_WRITE | FOLL_FORCE, which a
// shared read-only mapping refuses (EFAULT), whatever access the registration asks for. There
// the source registers a second, writable shared mapping of the same file range instead: it
// only pins the same page-cache pages. The registration still grants remote read only, and
// nothing ever writes through the twin.
absl::StatusOr<std::pair<uint8_t*, size_t>> WritableTwin(const uint8_t* base, size_t len) {
  FILE* maps = fopen("/proc/self/maps", "re");
  if (maps == nullptr) return ErrnoStatus("open /proc/self/maps");
  char line[4096];
  unsigned long start = 0, end = 0, offset = 0;
  bool found = false;
  while (fgets(line, sizeof(line), maps)) {
    if (sscanf(line, "%lx-%lx %*s %lx", &start, &end, &offset) == 3 &&
        start == reinterpret_cast<uintptr_t>(base)) {
      found = true;
      break;
    }
  }
  fclose(maps);
  if (!found) return absl::NotFoundError("the source region's mapping is not in /proc/self/maps");
  const std::string path =
      absl::StrCat("/proc/self/map_files/", absl::Hex(start), "-", absl::Hex(end));
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(absl::StrCat("reopen ", path, " for pinning"));
  void* p =
      mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), static_cast<off_t>(offset));
  if (p == MAP_FAILED) return ErrnoStatus("map the source region for pinning");
  return std::make_pair(static_cast<uint8_t*>(p), len);
}

}  // namespace

absl::StatusOr<std::unique_ptr<RdmaPageServer>> RdmaPageServer::Create(
    PageServer* server, const RdmaDeviceOptions& opts) {
  std::unique_ptr<RdmaPageServer> r(new RdmaPageServer());
  absl::StatusOr<std::unique_ptr<RdmaDevice>> dev = RdmaDevice::Open(opts);
  if (!dev.ok()) return dev.status();
  r->dev_ = std::move(*dev);
  for (const SourceRegion& reg : server->regions()) {
    // Read-only memory, remote read only: no local or remote write access is asked for, so
    // the registration grants no write access to the source VM's memory.
    const std::string what = absl::StrCat("source region '", reg.info().name, "'");
    uint8_t* addr = const_cast<uint8_t*>(reg.base());
    absl::StatusOr<MrPtr> mr =
        r->dev_->Register(addr, reg.info().size, IBV_ACCESS_REMOTE_READ, what);
    if (!mr.ok() && mr.status().message().find(strerror(EFAULT)) != absl::string_view::npos) {
      absl::StatusOr<std::pair<uint8_t*, size_t>> twin = WritableTwin(reg.base(), reg.info().size);
      if (!twin.ok()) {
        return absl::Status(twin.status().code(),
                            absl::StrCat(mr.status().message(),
                                         "; with a writable twin for pinning (Linux < 6.2): ",
                                         twin.status().message()));
      }
      r->twins_.push_back(*twin);
      addr = twin->first;
      mr = r->dev_->Register(addr, reg.info().size, IBV_ACCESS_REMOTE_READ, what);
    }
    if (!mr.ok()) return mr.status();
    r->keys_.push_back(
        RdmaRegionKey{reinterpret_cast<uintptr_t>(addr), reg.info().size, (*mr)->rkey});
    r->mrs_.push_back(std::move(*mr));
  }
  server->SetExtension(r.get());
  return r;
}

RdmaPageServer::~RdmaPageServer() {
  {
    std::lock_guard<std::mutex> l(mu_);
    qps_.clear();  // before the registrations and the device
  }
  mrs_.clear();
  for (const auto& [p, len] : twins_) munmap(p, len);
}

absl::Status RdmaPageServer::Handle(Stream& stream, FrameType t,
                                    absl::Span<const uint8_t> payload) {
  absl::StatusOr<RdmaEndpoint> remote = DecodeRdmaConnect(payload);
  if (!remote.ok()) return remote.status();
  RdmaAccept accept;
  accept.endpoint = dev_->LocalEndpoint();
  accept.regions = keys_;
  std::vector<std::unique_ptr<RcQp>> qps;
  for (int ch = 0; ch < 2; ++ch) {
    // The source posts no work of its own: its QPs only answer the destination's READs.
    absl::StatusOr<std::unique_ptr<RcQp>> qp = RcQp::Create(dev_.get(), 1, false);
    if (!qp.ok()) return qp.status();
    if (absl::Status s = (*qp)->Connect(*remote, remote->qps[ch], IBV_ACCESS_REMOTE_READ);
        !s.ok()) {
      return s;
    }
    accept.endpoint.qps[ch] = (*qp)->info();
    qps.push_back(std::move(*qp));
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& q : qps) qps_.push_back(std::move(q));
  }
  connections_.fetch_add(1);
  std::string out;
  EncodeRdmaAccept(accept, &out);
  return stream.WriteAll(out.data(), out.size());
}

}  // namespace faultline
