#include "transport/rdma_page_server.h"

#include "absl/strings/str_cat.h"

namespace faultline {

absl::StatusOr<std::unique_ptr<RdmaPageServer>> RdmaPageServer::Create(
    PageServer* server, const RdmaDeviceOptions& opts) {
  std::unique_ptr<RdmaPageServer> r(new RdmaPageServer());
  absl::StatusOr<std::unique_ptr<RdmaDevice>> dev = RdmaDevice::Open(opts);
  if (!dev.ok()) return dev.status();
  r->dev_ = std::move(*dev);
  for (const SourceRegion& reg : server->regions()) {
    // Read-only memory, remote read only: no local or remote write access is asked for, so
    // the registration neither needs nor grants write access to the source VM's memory.
    absl::StatusOr<MrPtr> mr =
        r->dev_->Register(const_cast<uint8_t*>(reg.base()), reg.info().size, IBV_ACCESS_REMOTE_READ,
                          absl::StrCat("source region '", reg.info().name, "'"));
    if (!mr.ok()) return mr.status();
    r->keys_.push_back(
        RdmaRegionKey{reinterpret_cast<uintptr_t>(reg.base()), reg.info().size, (*mr)->rkey});
    r->mrs_.push_back(std::move(*mr));
  }
  server->SetExtension(r.get());
  return r;
}

RdmaPageServer::~RdmaPageServer() {
  std::lock_guard<std::mutex> l(mu_);
  qps_.clear();  // before the registrations and the device
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
