// The RDMA frames of the wire protocol (RDMA_CONNECT, RDMA_ACCEPT): queue-pair endpoints and
// the source's memory keys, exchanged on the TCP control connection (transport/rdma_*.h).
#include <string>

#include "absl/strings/str_cat.h"
#include "transport/protocol.h"
#include "transport/protocol_codec.h"

namespace faultline {

using protocol_internal::Malformed;
using protocol_internal::Put32;
using protocol_internal::Put64;
using protocol_internal::PutHeader;
using protocol_internal::Reader;

namespace {

void PutEndpoint(std::string* o, const RdmaEndpoint& e) {
  o->append(reinterpret_cast<const char*>(e.gid.data()), e.gid.size());
  Put32(o, e.lid);
  Put32(o, e.mtu);
  for (const RdmaQpInfo& q : e.qps) {
    Put32(o, q.qpn);
    Put32(o, q.psn);
  }
}

absl::Status GetEndpoint(Reader& r, const char* frame, RdmaEndpoint* e) {
  if (!r.Get(e->gid.data(), e->gid.size()) || !r.Get(&e->lid) || !r.Get(&e->mtu)) {
    return Malformed(frame, "truncated endpoint");
  }
  for (RdmaQpInfo& q : e->qps) {
    if (!r.Get(&q.qpn) || !r.Get(&q.psn)) return Malformed(frame, "truncated endpoint");
    if (q.qpn == 0 || q.qpn >= (1u << 24)) {
      return Malformed(frame, absl::StrCat("queue pair number ", q.qpn));
    }
    if (q.psn >= (1u << 24)) return Malformed(frame, absl::StrCat("packet sequence ", q.psn));
  }
  if (e->lid > 0xffff) return Malformed(frame, absl::StrCat("lid ", e->lid));
  if (e->mtu < 1 || e->mtu > 5) return Malformed(frame, absl::StrCat("path mtu ", e->mtu));
  return absl::OkStatus();
}

}  // namespace

void EncodeRdmaConnect(const RdmaEndpoint& e, std::string* out) {
  PutHeader(out, FrameType::kRdmaConnect, kRdmaEndpointSize);
  PutEndpoint(out, e);
}

void EncodeRdmaAccept(const RdmaAccept& a, std::string* out) {
  PutHeader(out, FrameType::kRdmaAccept,
            static_cast<uint32_t>(kRdmaEndpointSize + 4 + 24 * a.regions.size()));
  PutEndpoint(out, a.endpoint);
  Put32(out, static_cast<uint32_t>(a.regions.size()));
  for (const RdmaRegionKey& k : a.regions) {
    Put64(out, k.addr);
    Put64(out, k.length);
    Put32(out, k.rkey);
    Put32(out, 0);
  }
}

absl::StatusOr<RdmaEndpoint> DecodeRdmaConnect(absl::Span<const uint8_t> payload) {
  if (payload.size() != kRdmaEndpointSize) {
    return Malformed("RDMA_CONNECT", absl::StrCat("length ", payload.size()));
  }
  Reader r(payload);
  RdmaEndpoint e;
  if (absl::Status s = GetEndpoint(r, "RDMA_CONNECT", &e); !s.ok()) return s;
  return e;
}

absl::StatusOr<RdmaAccept> DecodeRdmaAccept(absl::Span<const uint8_t> payload) {
  Reader r(payload);
  RdmaAccept a;
  if (absl::Status s = GetEndpoint(r, "RDMA_ACCEPT", &a.endpoint); !s.ok()) return s;
  uint32_t count = 0;
  if (!r.Get(&count)) return Malformed("RDMA_ACCEPT", "truncated");
  if (count == 0 || count > kMaxRegions) {
    return Malformed("RDMA_ACCEPT", absl::StrCat("region count ", count));
  }
  if (r.left() != 24ull * count) return Malformed("RDMA_ACCEPT", "length");
  for (uint32_t i = 0; i < count; ++i) {
    RdmaRegionKey k;
    uint32_t zero = 0;
    r.Get(&k.addr);
    r.Get(&k.length);
    r.Get(&k.rkey);
    r.Get(&zero);
    if (zero != 0) return Malformed("RDMA_ACCEPT", "reserved field is not zero");
    if (k.length == 0 || k.addr + k.length < k.addr) {
      return Malformed("RDMA_ACCEPT", absl::StrCat("region ", i, ": bad address range"));
    }
    a.regions.push_back(k);
  }
  return a;
}

}  // namespace faultline
