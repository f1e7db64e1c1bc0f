// Protocol costs per frame and per page: encoding a request, decoding a PAGES frame's
// descriptors, and the per-page CRC32C both ends pay.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "base/crc32c.h"
#include "transport/protocol.h"

namespace faultline {
namespace {

void BM_EncodeRequest(benchmark::State& state) {
  std::string out;
  PageRange r{1, 256, 12345};
  for (auto _ : state) {
    out.clear();
    EncodeRequest(r, &out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EncodeRequest);

void BM_DecodeRequest(benchmark::State& state) {
  std::string frame;
  EncodeRequest(PageRange{1, 256, 12345}, &frame);
  absl::Span<const uint8_t> in(reinterpret_cast<const uint8_t*>(frame.data()), frame.size());
  for (auto _ : state) {
    absl::StatusOr<FrameHeader> h = DecodeHeader(in.subspan(0, 8));
    absl::StatusOr<PageRange> r = DecodeRange(in.subspan(8));
    benchmark::DoNotOptimize(h.ok() && r.ok());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DecodeRequest);

// A bulk PAGES frame of `count` pages (a quarter zero): prefix encode + descriptor decode.
void BM_PagesFrame(benchmark::State& state) {
  const uint32_t count = static_cast<uint32_t>(state.range(0));
  std::vector<PageDesc> descs(count);
  uint32_t data_pages = 0;
  for (uint32_t i = 0; i < count; ++i) {
    descs[i].crc = i * 2654435761u;
    descs[i].flags = (i % 4 == 0) ? kPageZero : 0;
    if (i % 4 != 0) ++data_pages;
  }
  std::string prefix;
  for (auto _ : state) {
    prefix.clear();
    EncodePagesPrefix(PagesHead{0, count, 0}, descs, 4096, &prefix);
    absl::Span<const uint8_t> p(reinterpret_cast<const uint8_t*>(prefix.data()), prefix.size());
    absl::StatusOr<FrameHeader> h = DecodeHeader(p.subspan(0, 8));
    absl::StatusOr<PagesHead> head = DecodePagesHead(p.subspan(8, kPagesHeadSize));
    absl::StatusOr<std::vector<PageDesc>> d =
        DecodePageDescs(p.subspan(8 + kPagesHeadSize), count, 4096, h->length);
    benchmark::DoNotOptimize(head.ok() && d.ok());
  }
  state.SetItemsProcessed(state.iterations() * count);
}
BENCHMARK(BM_PagesFrame)->Arg(1)->Arg(256);

void BM_Crc32cPage(benchmark::State& state) {
  std::vector<uint8_t> page(4096);
  for (size_t i = 0; i < page.size(); ++i) page[i] = static_cast<uint8_t>(i * 31);
  for (auto _ : state) benchmark::DoNotOptimize(Crc32c(page.data(), page.size()));
  state.SetBytesProcessed(state.iterations() * page.size());
}
BENCHMARK(BM_Crc32cPage);

}  // namespace
}  // namespace faultline
