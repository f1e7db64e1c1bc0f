// The faultline wire protocol, version 1. Little-endian, length-prefixed frames:
//
//   header (8 bytes): u16 magic 0xFA17 | u8 type | u8 reserved (0) | u32 payload length
//
//   HELLO    dest→src  u32 version | u8 channel (0 urgent, 1 bulk) | u8[3] 0 | u8[32] token
//   WELCOME  src→dest  u32 version | u32 region count | count × {u64 size | u32 page size |
//                      u16 name length | name} [| u32 flags, present only when not zero:
//                      kWelcomeLive — the guest still runs on the source, which tracks its
//                      writes: the destination must warm up (DIRTY_SYNC rounds) before its
//                      guest may run]
//   REQUEST  dest→src  u32 region | u32 count | u64 first page        (urgent or bulk by channel)
//   PAGES    src→dest  u32 region | u32 count | u64 first page | count × {u32 crc32c | u32 flags}
//                      | the bytes of every page whose flags lack kPageZero, in order
//   VERIFY   dest→src  as REQUEST; answered by VERIFIED: u32 region | u32 count | u64 first |
//                      count × u32 crc32c of the source's page (zero pages included)
//   DONE     dest→src  empty: every page is present, the source may stop serving
//   ERROR    either    u32 code | u16 length | message; the sender closes the connection after it
//   RDMA_CONNECT dest→src  (--transport=rdma, after WELCOME, on the control connection)
//                      the destination's endpoint: u8[16] gid | u32 lid | u32 path mtu (1..5)
//                      | 2 × {u32 qpn | u32 psn} (urgent QP, bulk QP)
//   RDMA_ACCEPT  src→dest  the source's endpoint, as above | u32 region count | count ×
//                      {u64 remote address | u64 length | u32 rkey | u32 0}: one read-only memory
//                      registration per region of the WELCOME, in its order
//
// Warm-up (the guest still runs on the source; transport/dirty_tracker.h), on the urgent
// connection:
//   DIRTY_SYNC    dest→src  u32 flags (kDirtyFinal: stop the guest, then report the last set)
//                           [| u32 throttle, present only when not zero: slow the guest down —
//                           take this share (1–99 %) of its vCPUs' time — until told otherwise,
//                           so that its writes fall behind the transfer (QEMU's auto-converge)]
//   DIRTY         src→dest  u64 round | u32 flags (kDirtyFinal, kDirtyMore: more frames of this
//                           round follow; kDirtyNoThrottle: a throttle was asked for and this
//                           source cannot slow its guest) | u32 n | n × {u32 region | u32 count |
//                           u64 first}: the pages written since the previous round, plus every page
//                           of a round the destination has not confirmed applying
//   DIRTY_APPLIED dest→src  u64 round: every page of that round was dropped at the destination
//                           (for the final round: the guest may run there)
//
// Every frame is validated before anything it carries is used; a frame that fails validation is
// answered with ERROR (where a peer is still listening) and the connection is closed.
#ifndef FAULTLINE_TRANSPORT_PROTOCOL_H_
#define FAULTLINE_TRANSPORT_PROTOCOL_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "transport/page_source.h"  // RegionInfo

namespace faultline {

inline constexpr uint16_t kFrameMagic = 0xFA17;
inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr size_t kHeaderSize = 8;
inline constexpr size_t kTokenSize = 32;
inline constexpr uint32_t kMaxRegions = 64;
inline constexpr size_t kMaxRegionName = 64;
inline constexpr uint32_t kMaxPagesPerFrame = 1024;
inline constexpr uint64_t kMaxPagesPayload = 16ull << 20;  // page bytes in one PAGES frame
inline constexpr uint32_t kMaxErrorMessage = 1024;
inline constexpr uint32_t kPageZero = 1;  // PAGES descriptor flag: the page is all zeros

enum class FrameType : uint8_t {
  kHello = 1,
  kWelcome = 2,
  kRequest = 3,
  kPages = 4,
  kVerify = 5,
  kVerified = 6,
  kDone = 7,
  kError = 8,
  kRdmaConnect = 9,
  kRdmaAccept = 10,
  kDirtySync = 11,
  kDirty = 12,
  kDirtyApplied = 13,
};

inline constexpr uint32_t kDirtyFinal = 1;  // DIRTY_SYNC / DIRTY flag
inline constexpr uint32_t kDirtyMore = 2;   // DIRTY flag: the round continues in the next frame
inline constexpr uint32_t kDirtyNoThrottle = 4;    // DIRTY flag: the guest cannot be slowed here
inline constexpr uint32_t kMaxDirtyRanges = 4096;  // ranges in one DIRTY frame

enum class Channel : uint8_t { kUrgent = 0, kBulk = 1 };

const char* FrameTypeName(FrameType t);

using Token = std::array<uint8_t, kTokenSize>;

// Constant-time comparison of two tokens.
bool TokensEqual(const Token& a, const Token& b);
// 64 hex digits <-> token.
absl::StatusOr<Token> ParseToken(const std::string& hex);
std::string TokenToHex(const Token& t);
Token RandomToken();

struct FrameHeader {
  FrameType type;
  uint32_t length;  // payload bytes that follow
};

struct Hello {
  uint32_t version = kProtocolVersion;
  Channel channel = Channel::kUrgent;
  Token token{};
};

inline constexpr uint32_t kWelcomeLive = 1;

struct Welcome {
  uint32_t version = kProtocolVersion;
  std::vector<RegionInfo> regions;
  uint32_t flags = 0;  // kWelcomeLive
};

struct PageRange {  // REQUEST and VERIFY
  uint32_t region = 0;
  uint32_t count = 0;
  uint64_t first = 0;
};

struct PageDesc {
  uint32_t crc = 0;
  uint32_t flags = 0;
  bool zero() const { return flags & kPageZero; }
};

struct PagesHead {  // the fixed part of a PAGES frame, before its descriptors
  uint32_t region = 0;
  uint32_t count = 0;
  uint64_t first = 0;
};
inline constexpr size_t kPagesHeadSize = 16;
inline constexpr size_t kPageDescSize = 8;

struct ErrorFrame {
  uint32_t code = 0;  // absl::StatusCode
  std::string message;
};

// RDMA (transport/rdma_page_source.h): one reliable-connected queue pair per channel.
struct RdmaQpInfo {
  uint32_t qpn = 0;  // 24 bits
  uint32_t psn = 0;  // 24 bits
};
struct RdmaEndpoint {
  std::array<uint8_t, 16> gid{};
  uint32_t lid = 0;   // 16 bits; 0 on RoCE
  uint32_t mtu = 0;   // enum ibv_mtu: 1 (256) .. 5 (4096)
  RdmaQpInfo qps[2];  // indexed by Channel
};
inline constexpr size_t kRdmaEndpointSize = 16 + 4 + 4 + 2 * 8;
struct RdmaRegionKey {
  uint64_t addr = 0;
  uint64_t length = 0;
  uint32_t rkey = 0;
};
struct RdmaAccept {
  RdmaEndpoint endpoint;
  std::vector<RdmaRegionKey> regions;
};

// One DIRTY_SYNC.
struct DirtySync {
  uint32_t flags = 0;
  uint32_t throttle = 0;  // percent, 0..kMaxThrottle
};

// One DIRTY frame: a part of a round's set of written pages.
struct DirtyFrame {
  uint64_t round = 0;
  uint32_t flags = 0;
  std::vector<PageRange> ranges;  // count may be up to the region's size (not a frame limit)
};

// ---- Encoding: each appends one whole frame (header + payload) to `out`. ----
void EncodeHello(const Hello& h, std::string* out);
void EncodeWelcome(const Welcome& w, std::string* out);
void EncodeRequest(const PageRange& r, std::string* out);
void EncodeVerify(const PageRange& r, std::string* out);
void EncodeVerified(const PageRange& r, absl::Span<const uint32_t> crcs, std::string* out);
void EncodeDone(std::string* out);
void EncodeError(const absl::Status& s, std::string* out);
void EncodeRdmaConnect(const RdmaEndpoint& e, std::string* out);
void EncodeRdmaAccept(const RdmaAccept& a, std::string* out);
void EncodeDirtySync(const DirtySync& d, std::string* out);
// At most kMaxDirtyRanges ranges.
void EncodeDirty(const DirtyFrame& d, std::string* out);
void EncodeDirtyApplied(uint64_t round, std::string* out);
// PAGES header, head and descriptors only; the caller sends the page bytes after them.
void EncodePagesPrefix(const PagesHead& head, absl::Span<const PageDesc> descs, uint32_t page_size,
                       std::string* out);

// ---- Decoding: each validates completely and never reads past `in`. ----
absl::StatusOr<FrameHeader> DecodeHeader(absl::Span<const uint8_t> in);
// Largest payload acceptable for a frame type (PAGES is validated in two steps).
uint64_t MaxPayload(FrameType t);
absl::StatusOr<Hello> DecodeHello(absl::Span<const uint8_t> payload);
absl::StatusOr<Welcome> DecodeWelcome(absl::Span<const uint8_t> payload);
absl::StatusOr<PageRange> DecodeRange(absl::Span<const uint8_t> payload);
absl::StatusOr<ErrorFrame> DecodeError(absl::Span<const uint8_t> payload);
absl::StatusOr<PagesHead> DecodePagesHead(absl::Span<const uint8_t> head16);
// Descriptors of a PAGES frame; checks the frame length against count, zero flags and
// page size: total == kPagesHeadSize + count*kPageDescSize + data_pages*page_size.
absl::StatusOr<std::vector<PageDesc>> DecodePageDescs(absl::Span<const uint8_t> descs,
                                                      uint32_t count, uint32_t page_size,
                                                      uint32_t frame_length);
absl::StatusOr<std::vector<uint32_t>> DecodeVerified(absl::Span<const uint8_t> payload,
                                                     PageRange* range);

absl::StatusOr<RdmaEndpoint> DecodeRdmaConnect(absl::Span<const uint8_t> payload);
absl::StatusOr<RdmaAccept> DecodeRdmaAccept(absl::Span<const uint8_t> payload);
absl::StatusOr<DirtySync> DecodeDirtySync(absl::Span<const uint8_t> payload);
// Checks the framing and the flags only; the ranges against the regions with CheckDirtyRange.
absl::StatusOr<DirtyFrame> DecodeDirty(absl::Span<const uint8_t> payload);
absl::StatusOr<uint64_t> DecodeDirtyApplied(absl::Span<const uint8_t> payload);
// A DIRTY range names pages inside one of the regions (any length up to the region's).
absl::Status CheckDirtyRange(const PageRange& r, absl::Span<const RegionInfo> regions);

// A request names pages inside one of the regions.
absl::Status CheckRange(const PageRange& r, absl::Span<const RegionInfo> regions,
                        uint32_t max_count);

// The error the receiver of an ERROR frame reports.
absl::Status PeerError(const ErrorFrame& e);

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_PROTOCOL_H_
