// libFuzzer entry point for the wire protocol's decoders: the input is a byte stream as a
// peer could send it; every frame is decoded the way the receivers do (header, then the
// payload decoder of its type; PAGES head + descriptors). Nothing may crash or read out of
// bounds, whatever the bytes. Build and run: tools/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "transport/protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace faultline;
  absl::Span<const uint8_t> in(data, size);
  const std::vector<RegionInfo> regions = {{"ram", 64 * 4096, 4096}, {"huge", 4u << 20, 2u << 20}};
  while (in.size() >= kHeaderSize) {
    absl::StatusOr<FrameHeader> h = DecodeHeader(in.first(kHeaderSize));
    if (!h.ok()) return 0;
    in.remove_prefix(kHeaderSize);
    const size_t n = std::min<size_t>(h->length, in.size());
    absl::Span<const uint8_t> payload = in.first(n);
    in.remove_prefix(n);
    switch (h->type) {
      case FrameType::kHello: (void)DecodeHello(payload); break;
      case FrameType::kWelcome: (void)DecodeWelcome(payload); break;
      case FrameType::kRequest:
      case FrameType::kVerify: {
        absl::StatusOr<PageRange> r = DecodeRange(payload);
        if (r.ok()) (void)CheckRange(*r, regions, kMaxPagesPerFrame);
        break;
      }
      case FrameType::kVerified: {
        PageRange r;
        (void)DecodeVerified(payload, &r);
        break;
      }
      case FrameType::kError: {
        absl::StatusOr<ErrorFrame> e = DecodeError(payload);
        if (e.ok()) (void)PeerError(*e);
        break;
      }
      case FrameType::kPages: {
        if (payload.size() < kPagesHeadSize) break;
        absl::StatusOr<PagesHead> head = DecodePagesHead(payload.first(kPagesHeadSize));
        if (!head.ok()) break;
        PageRange r{head->region, head->count, head->first};
        if (!CheckRange(r, regions, kMaxPagesPerFrame).ok()) break;
        const size_t dlen = size_t{head->count} * kPageDescSize;
        if (payload.size() < kPagesHeadSize + dlen) break;
        (void)DecodePageDescs(payload.subspan(kPagesHeadSize, dlen), head->count,
                              regions[head->region].page_size, h->length);
        break;
      }
      case FrameType::kDone: break;
      case FrameType::kRdmaConnect: (void)DecodeRdmaConnect(payload); break;
      case FrameType::kRdmaAccept: (void)DecodeRdmaAccept(payload); break;
      case FrameType::kDirtySync: (void)DecodeDirtySync(payload); break;
      case FrameType::kDirtyApplied: (void)DecodeDirtyApplied(payload); break;
      case FrameType::kDirty: {
        absl::StatusOr<DirtyFrame> d = DecodeDirty(payload);
        if (d.ok()) {
          for (const PageRange& r : d->ranges) (void)CheckDirtyRange(r, regions);
        }
        break;
      }
    }
  }
  return 0;
}
