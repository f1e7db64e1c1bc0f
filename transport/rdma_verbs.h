// Thin RAII over libibverbs for the RDMA transport (rdma_page_source.h, rdma_page_server.h):
// a device (context, protection domain, port and GID), memory registrations, and reliable-
// connected queue pairs brought up with the peer's endpoint exchanged over the TCP control
// connection (RDMA_CONNECT / RDMA_ACCEPT, transport/protocol.h).
#ifndef FAULTLINE_TRANSPORT_RDMA_VERBS_H_
#define FAULTLINE_TRANSPORT_RDMA_VERBS_H_

#include <infiniband/verbs.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/protocol.h"

namespace faultline {

struct RdmaDeviceOptions {
  std::string device;  // empty: the first device with an active port
  uint8_t port = 1;
  int gid_index = -1;  // -1: the first IPv4-mapped (RoCEv2) GID, else the first non-zero one
};

// The names of the RDMA devices libibverbs sees (empty on a machine without any).
std::vector<std::string> ListRdmaDevices();
// Why --transport=rdma cannot run here ("" when a device exists): names what was found.
std::string NoRdmaDeviceMessage();

struct MrDeleter {
  void operator()(ibv_mr* mr) const;
};
using MrPtr = std::unique_ptr<ibv_mr, MrDeleter>;

class RdmaDevice {
 public:
  static absl::StatusOr<std::unique_ptr<RdmaDevice>> Open(const RdmaDeviceOptions& opts);
  ~RdmaDevice();

  ibv_context* ctx() const { return ctx_; }
  ibv_pd* pd() const { return pd_; }
  const std::string& name() const { return name_; }
  uint8_t port() const { return port_; }
  int gid_index() const { return gid_index_; }
  // Our side of the RDMA_CONNECT / RDMA_ACCEPT endpoint (QP numbers filled by the caller).
  RdmaEndpoint LocalEndpoint() const;
  // Outstanding RDMA READs a QP may issue / answer.
  int max_rd_atomic() const { return max_rd_atomic_; }
  int max_dest_rd_atomic() const { return max_dest_rd_atomic_; }

  absl::StatusOr<MrPtr> Register(void* addr, size_t len, int access, const std::string& what);

 private:
  RdmaDevice() = default;
  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;
  std::string name_;
  uint8_t port_ = 1;
  int gid_index_ = 0;
  ibv_gid gid_{};
  uint16_t lid_ = 0;
  ibv_mtu mtu_ = IBV_MTU_1024;
  int max_rd_atomic_ = 1, max_dest_rd_atomic_ = 1;
};

// A reliable-connected queue pair with its own completion queue (and, optionally, a
// completion channel for event-driven waiting).
class RcQp {
 public:
  static absl::StatusOr<std::unique_ptr<RcQp>> Create(RdmaDevice* dev, uint32_t max_send_wr,
                                                      bool with_channel);
  ~RcQp();

  ibv_qp* qp() const { return qp_; }
  ibv_cq* cq() const { return cq_; }
  ibv_comp_channel* channel() const { return channel_; }
  RdmaQpInfo info() const { return {qp_->qp_num, psn_}; }
  // INIT → RTR → RTS towards the remote QP. `remote_access`: what the peer may do to our
  // memory through this QP (IBV_ACCESS_REMOTE_READ on the source, 0 on the destination).
  absl::Status Connect(const RdmaEndpoint& remote, const RdmaQpInfo& remote_qp, int remote_access);
  // Moves the QP to the error state: outstanding work is flushed (completes with
  // IBV_WC_WR_FLUSH_ERR); after that flush nothing more is written into local buffers.
  void ToError();
  // Posts one signalled RDMA READ of `len` bytes.
  absl::Status PostRead(uint64_t wr_id, void* local, uint32_t lkey, uint64_t remote, uint32_t rkey,
                        uint32_t len);
  // Event-driven waiting: Arm() asks for an event on the next completion; poll() the
  // channel's fd (non-blocking); AckEvents() takes the events that arrived.
  absl::Status Arm();
  void AckEvents();

 private:
  RcQp() = default;
  RdmaDevice* dev_ = nullptr;
  ibv_comp_channel* channel_ = nullptr;
  ibv_cq* cq_ = nullptr;
  ibv_qp* qp_ = nullptr;
  uint32_t psn_ = 0;
  unsigned unacked_events_ = 0;
};

// A human-readable failed work completion.
std::string WcStatusText(const ibv_wc& wc);

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_RDMA_VERBS_H_
