// RdmaPageServer: the source side of --transport=rdma. Plugs into a PageServer (which keeps
// doing the authenticated HELLO/WELCOME handshake, VERIFY and DONE over TCP) and answers a
// destination's RDMA_CONNECT on its control connection: two reliable-connected queue pairs
// (urgent, bulk) brought up towards the destination's, and one memory registration per region
// with IBV_ACCESS_REMOTE_READ only (the frozen source memory is mapped read-only; nothing can
// write it) sent back in RDMA_ACCEPT. After that the source's CPU is not involved in moving
// pages: the destination pulls them with one-sided RDMA READs.
//
// The rkeys travel over the control connection after the token check; use TLS for the control
// connection where the network between the hosts is not trusted.
#ifndef FAULTLINE_TRANSPORT_RDMA_PAGE_SERVER_H_
#define FAULTLINE_TRANSPORT_RDMA_PAGE_SERVER_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "transport/page_server.h"
#include "transport/rdma_verbs.h"

namespace faultline {

class RdmaPageServer : public ServerExtension {
 public:
  // Registers every region of `server` with the device and installs itself in `server`
  // (SetExtension). Must outlive server->Serve(). Fails with a message naming the devices
  // found when there is no usable RDMA device.
  static absl::StatusOr<std::unique_ptr<RdmaPageServer>> Create(PageServer* server,
                                                                const RdmaDeviceOptions& opts);
  ~RdmaPageServer() override;

  bool Handles(FrameType t) const override { return t == FrameType::kRdmaConnect; }
  absl::Status Handle(Stream& stream, FrameType t, absl::Span<const uint8_t> payload) override;

  const std::string& device_name() const { return dev_->name(); }
  int connections() const { return connections_.load(); }

 private:
  RdmaPageServer() = default;
  std::unique_ptr<RdmaDevice> dev_;                 // destroyed last
  std::vector<MrPtr> mrs_;                          // one per region
  std::vector<std::pair<uint8_t*, size_t>> twins_;  // writable twins pinned (Linux < 6.2)
  std::vector<RdmaRegionKey> keys_;
  std::mutex mu_;
  std::vector<std::unique_ptr<RcQp>> qps_;  // every connection's, until the end of the migration
  std::atomic<int> connections_{0};
};

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_RDMA_PAGE_SERVER_H_
