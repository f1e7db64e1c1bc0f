#include "transport/rdma_verbs.h"

#include <fcntl.h>
#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/fix.h"

namespace faultline {
namespace {

absl::Status VerbsError(const std::string& what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(err)));
}

bool Ipv4Mapped(const ibv_gid& g) {
  static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return memcmp(g.raw, prefix, sizeof(prefix)) == 0;
}

bool ZeroGid(const ibv_gid& g) {
  for (uint8_t b : g.raw) {
    if (b) return false;
  }
  return true;
}

}  // namespace

std::vector<std::string> ListRdmaDevices() {
  std::vector<std::string> names;
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) return names;
  for (int i = 0; i < n; ++i) names.push_back(ibv_get_device_name(list[i]));
  ibv_free_device_list(list);
  return names;
}

std::string NoRdmaDeviceMessage() {
  if (!ListRdmaDevices().empty()) return "";
  return "the RDMA transport needs an RDMA device, and this machine has none (RDMA devices "
         "found: none); for soft-RoCE: modprobe rdma_rxe && rdma link add rxe0 type rxe netdev "
         "eth0";
}

void MrDeleter::operator()(ibv_mr* mr) const {
  if (mr) ibv_dereg_mr(mr);
}

absl::StatusOr<std::unique_ptr<RdmaDevice>> RdmaDevice::Open(const RdmaDeviceOptions& opts) {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr || n == 0) {
    if (list) ibv_free_device_list(list);
    return WithFix(absl::FailedPreconditionError(NoRdmaDeviceMessage().empty()
                                                     ? std::string("no RDMA device could be opened")
                                                     : NoRdmaDeviceMessage()),
                   Fix::kUseTcp);
  }
  std::unique_ptr<RdmaDevice> d(new RdmaDevice());
  std::vector<std::string> names;
  std::string why;
  for (int i = 0; i < n && d->ctx_ == nullptr; ++i) {
    const std::string name = ibv_get_device_name(list[i]);
    names.push_back(name);
    if (!opts.device.empty() && name != opts.device) continue;
    ibv_context* ctx = ibv_open_device(list[i]);
    if (ctx == nullptr) {
      why = absl::StrCat(name, ": open failed: ", strerror(errno));
      continue;
    }
    ibv_port_attr pa{};
    if (ibv_query_port(ctx, opts.port, &pa) != 0 || pa.state != IBV_PORT_ACTIVE) {
      why = absl::StrCat(name, " port ", opts.port, " is not active");
      ibv_close_device(ctx);
      continue;
    }
    d->ctx_ = ctx;
    d->name_ = name;
    d->lid_ = pa.lid;
    d->mtu_ = pa.active_mtu;
    for (int j = i + 1; j < n; ++j) names.push_back(ibv_get_device_name(list[j]));
  }
  ibv_free_device_list(list);
  if (d->ctx_ == nullptr) {
    if (!opts.device.empty() && why.empty()) {
      return absl::NotFoundError(
          absl::StrCat("RDMA device '", opts.device,
                       "' not found; devices found: ", absl::StrJoin(names, ", ")));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "no usable RDMA device (", why, "); devices found: ", absl::StrJoin(names, ", ")));
  }
  d->port_ = opts.port;
  ibv_port_attr pa{};
  ibv_query_port(d->ctx_, d->port_, &pa);
  if (opts.gid_index >= 0) {
    d->gid_index_ = opts.gid_index;
    if (ibv_query_gid(d->ctx_, d->port_, opts.gid_index, &d->gid_) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(d->name_, ": no GID at index ", opts.gid_index));
    }
  } else {
    int first_nonzero = -1, mapped = -1;
    for (int i = 0; i < pa.gid_tbl_len; ++i) {
      ibv_gid g;
      if (ibv_query_gid(d->ctx_, d->port_, i, &g) != 0 || ZeroGid(g)) continue;
      if (first_nonzero < 0) first_nonzero = i;
      if (Ipv4Mapped(g)) {
        mapped = i;
        break;
      }
    }
    // IB fabrics (a non-zero LID) address by LID; RoCE needs a GID.
    d->gid_index_ = mapped >= 0 ? mapped : std::max(first_nonzero, 0);
    if (ibv_query_gid(d->ctx_, d->port_, d->gid_index_, &d->gid_) != 0) {
      return absl::FailedPreconditionError(absl::StrCat(d->name_, ": cannot read its GID table"));
    }
    if (first_nonzero < 0 && pa.lid == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          d->name_, " has no GID and no LID: is its network interface up with an address?"));
    }
  }
  ibv_device_attr da{};
  if (ibv_query_device(d->ctx_, &da) == 0) {
    d->max_rd_atomic_ = std::max(1, std::min(16, da.max_qp_init_rd_atom));
    d->max_dest_rd_atomic_ = std::max(1, std::min(16, da.max_qp_rd_atom));
  }
  d->pd_ = ibv_alloc_pd(d->ctx_);
  if (d->pd_ == nullptr) return VerbsError(absl::StrCat(d->name_, ": ibv_alloc_pd"), errno);
  return d;
}

RdmaDevice::~RdmaDevice() {
  if (pd_) ibv_dealloc_pd(pd_);
  if (ctx_) ibv_close_device(ctx_);
}

RdmaEndpoint RdmaDevice::LocalEndpoint() const {
  RdmaEndpoint e;
  memcpy(e.gid.data(), gid_.raw, 16);
  e.lid = lid_;
  e.mtu = static_cast<uint32_t>(mtu_);
  return e;
}

absl::StatusOr<MrPtr> RdmaDevice::Register(void* addr, size_t len, int access,
                                           const std::string& what) {
  ibv_mr* mr = ibv_reg_mr(pd_, addr, len, access);
  if (mr == nullptr) {
    return VerbsError(absl::StrCat("registering ", what, " (", len, " bytes) with ", name_), errno);
  }
  return MrPtr(mr);
}

absl::StatusOr<std::unique_ptr<RcQp>> RcQp::Create(RdmaDevice* dev, uint32_t max_send_wr,
                                                   bool with_channel) {
  std::unique_ptr<RcQp> q(new RcQp());
  q->dev_ = dev;
  if (with_channel) {
    q->channel_ = ibv_create_comp_channel(dev->ctx());
    if (q->channel_ == nullptr) return VerbsError("ibv_create_comp_channel", errno);
    int fl = fcntl(q->channel_->fd, F_GETFL);
    fcntl(q->channel_->fd, F_SETFL, fl | O_NONBLOCK);
  }
  q->cq_ = ibv_create_cq(dev->ctx(), static_cast<int>(max_send_wr) + 1, nullptr, q->channel_, 0);
  if (q->cq_ == nullptr) return VerbsError("ibv_create_cq", errno);
  ibv_qp_init_attr ia{};
  ia.send_cq = q->cq_;
  ia.recv_cq = q->cq_;
  ia.qp_type = IBV_QPT_RC;
  ia.sq_sig_all = 0;
  ia.cap.max_send_wr = max_send_wr;
  ia.cap.max_recv_wr = 1;
  ia.cap.max_send_sge = 1;
  ia.cap.max_recv_sge = 1;
  q->qp_ = ibv_create_qp(dev->pd(), &ia);
  if (q->qp_ == nullptr) return VerbsError("ibv_create_qp (RC)", errno);
  uint32_t r = 0;
  (void)!getrandom(&r, sizeof(r), 0);
  q->psn_ = r & 0xffffff;
  return q;
}

RcQp::~RcQp() {
  if (qp_) ibv_destroy_qp(qp_);
  if (cq_) {
    if (unacked_events_) ibv_ack_cq_events(cq_, unacked_events_);
    ibv_destroy_cq(cq_);
  }
  if (channel_) ibv_destroy_comp_channel(channel_);
}

absl::Status RcQp::Connect(const RdmaEndpoint& remote, const RdmaQpInfo& remote_qp,
                           int remote_access) {
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_INIT;
  a.pkey_index = 0;
  a.port_num = dev_->port();
  a.qp_access_flags = remote_access;
  if (int e = ibv_modify_qp(qp_, &a,
                            IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) {
    return VerbsError("queue pair → INIT", e);
  }
  const RdmaEndpoint local = dev_->LocalEndpoint();
  a = {};
  a.qp_state = IBV_QPS_RTR;
  a.path_mtu = static_cast<ibv_mtu>(std::min(local.mtu, remote.mtu));
  a.dest_qp_num = remote_qp.qpn;
  a.rq_psn = remote_qp.psn;
  a.max_dest_rd_atomic = static_cast<uint8_t>(dev_->max_dest_rd_atomic());
  a.min_rnr_timer = 12;
  a.ah_attr.dlid = static_cast<uint16_t>(remote.lid);
  a.ah_attr.port_num = dev_->port();
  a.ah_attr.is_global = 1;
  memcpy(a.ah_attr.grh.dgid.raw, remote.gid.data(), 16);
  a.ah_attr.grh.sgid_index = static_cast<uint8_t>(dev_->gid_index());
  a.ah_attr.grh.hop_limit = 64;
  if (int e = ibv_modify_qp(qp_, &a,
                            IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)) {
    return VerbsError("queue pair → RTR (is the peer reachable over this device's GID?)", e);
  }
  a = {};
  a.qp_state = IBV_QPS_RTS;
  a.sq_psn = psn_;
  a.timeout = 14;  // 4.096 µs × 2^14 ≈ 67 ms per try
  a.retry_cnt = 7;
  a.rnr_retry = 7;
  a.max_rd_atomic = static_cast<uint8_t>(dev_->max_rd_atomic());
  if (int e = ibv_modify_qp(qp_, &a,
                            IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                                IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC)) {
    return VerbsError("queue pair → RTS", e);
  }
  return absl::OkStatus();
}

void RcQp::ToError() {
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_ERR;
  ibv_modify_qp(qp_, &a, IBV_QP_STATE);
}

absl::Status RcQp::PostRead(uint64_t wr_id, void* local, uint32_t lkey, uint64_t remote,
                            uint32_t rkey, uint32_t len) {
  ibv_sge sge{};
  sge.addr = reinterpret_cast<uintptr_t>(local);
  sge.length = len;
  sge.lkey = lkey;
  ibv_send_wr wr{};
  wr.wr_id = wr_id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_RDMA_READ;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.rdma.remote_addr = remote;
  wr.wr.rdma.rkey = rkey;
  ibv_send_wr* bad = nullptr;
  if (int e = ibv_post_send(qp_, &wr, &bad)) return VerbsError("posting an RDMA READ", e);
  return absl::OkStatus();
}

absl::Status RcQp::Arm() {
  if (int e = ibv_req_notify_cq(cq_, 0)) return VerbsError("ibv_req_notify_cq", e);
  return absl::OkStatus();
}

void RcQp::AckEvents() {
  ibv_cq* cq = nullptr;
  void* ctx = nullptr;
  while (ibv_get_cq_event(channel_, &cq, &ctx) == 0) ++unacked_events_;  // non-blocking fd
  if (unacked_events_ >= 64) {
    ibv_ack_cq_events(cq_, unacked_events_);
    unacked_events_ = 0;
  }
}

std::string WcStatusText(const ibv_wc& wc) {
  return absl::StrCat(ibv_wc_status_str(wc.status), " (status ", wc.status, ", vendor error 0x",
                      absl::Hex(wc.vendor_err), ")");
}

}  // namespace faultline
