// The RDMA set-up frames (RDMA_CONNECT, RDMA_ACCEPT) against good and bad input, a TCP-only
// page server asked for RDMA, and --transport=rdma on a machine without an RDMA device. Runs
// everywhere: nothing here needs verbs (tests/rdma/ has the tests that do).
#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "transport/page_server.h"
#include "transport/protocol.h"
#include "transport/rdma_page_server.h"
#include "transport/rdma_page_source.h"
#include "transport/rdma_verbs.h"
#include "transport/socket.h"
#include "transport/tcp_page_source.h"

namespace faultline {
namespace {

absl::Span<const uint8_t> Payload(const std::string& frame) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(frame.data()) + kHeaderSize,
                             frame.size() - kHeaderSize);
}

RdmaEndpoint SampleEndpoint() {
  RdmaEndpoint e;
  for (int i = 0; i < 16; ++i) e.gid[i] = static_cast<uint8_t>(i * 7);
  e.lid = 0;
  e.mtu = 3;
  e.qps[0] = {0x11, 0x123456};
  e.qps[1] = {0xabcdef, 7};
  return e;
}

TEST(RdmaProtocolTest, ConnectRoundTrip) {
  std::string out;
  EncodeRdmaConnect(SampleEndpoint(), &out);
  auto h = DecodeHeader(absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(out.data()), 8));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->type, FrameType::kRdmaConnect);
  EXPECT_EQ(h->length, kRdmaEndpointSize);
  auto e = DecodeRdmaConnect(Payload(out));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->gid, SampleEndpoint().gid);
  EXPECT_EQ(e->mtu, 3u);
  EXPECT_EQ(e->qps[0].qpn, 0x11u);
  EXPECT_EQ(e->qps[0].psn, 0x123456u);
  EXPECT_EQ(e->qps[1].qpn, 0xabcdefu);
  EXPECT_EQ(e->qps[1].psn, 7u);
  EXPECT_STREQ(FrameTypeName(FrameType::kRdmaConnect), "RDMA_CONNECT");
}

TEST(RdmaProtocolTest, AcceptRoundTrip) {
  RdmaAccept a;
  a.endpoint = SampleEndpoint();
  a.regions.push_back({0x7f0000000000, 1 << 20, 0x1234});
  a.regions.push_back({0x7f1000000000, 2 << 20, 0x99});
  std::string out;
  EncodeRdmaAccept(a, &out);
  auto h = DecodeHeader(absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(out.data()), 8));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->type, FrameType::kRdmaAccept);
  auto d = DecodeRdmaAccept(Payload(out));
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->regions.size(), 2u);
  EXPECT_EQ(d->regions[0].addr, 0x7f0000000000u);
  EXPECT_EQ(d->regions[1].length, 2u << 20);
  EXPECT_EQ(d->regions[1].rkey, 0x99u);
  EXPECT_EQ(d->endpoint.qps[1].qpn, 0xabcdefu);
}

TEST(RdmaProtocolTest, BadEndpointsRejected) {
  auto bad = [](auto mutate, const char* why) {
    RdmaEndpoint e = SampleEndpoint();
    mutate(e);
    std::string out;
    EncodeRdmaConnect(e, &out);
    auto d = DecodeRdmaConnect(Payload(out));
    EXPECT_FALSE(d.ok()) << why;
    if (!d.ok()) {
      EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(d.status().message().find("RDMA_CONNECT"), absl::string_view::npos);
    }
  };
  bad([](RdmaEndpoint& e) { e.qps[0].qpn = 0; }, "qpn 0");
  bad([](RdmaEndpoint& e) { e.qps[1].qpn = 1u << 24; }, "qpn over 24 bits");
  bad([](RdmaEndpoint& e) { e.qps[1].psn = 1u << 24; }, "psn over 24 bits");
  bad([](RdmaEndpoint& e) { e.mtu = 0; }, "mtu 0");
  bad([](RdmaEndpoint& e) { e.mtu = 6; }, "mtu 6");
  bad([](RdmaEndpoint& e) { e.lid = 0x10000; }, "lid over 16 bits");
  std::string out;
  EncodeRdmaConnect(SampleEndpoint(), &out);
  for (size_t cut = kHeaderSize; cut < out.size(); ++cut) {
    auto d = DecodeRdmaConnect(absl::MakeConstSpan(
        reinterpret_cast<const uint8_t*>(out.data()) + kHeaderSize, cut - kHeaderSize));
    EXPECT_FALSE(d.ok()) << "truncated to " << cut;
  }
}

TEST(RdmaProtocolTest, BadAcceptsRejected) {
  RdmaAccept a;
  a.endpoint = SampleEndpoint();
  a.regions.push_back({4096, 8192, 5});
  std::string good;
  EncodeRdmaAccept(a, &good);
  ASSERT_TRUE(DecodeRdmaAccept(Payload(good)).ok());
  // Every truncation.
  for (size_t cut = kHeaderSize; cut < good.size(); ++cut) {
    EXPECT_FALSE(DecodeRdmaAccept(absl::MakeConstSpan(
                                      reinterpret_cast<const uint8_t*>(good.data()) + kHeaderSize,
                                      cut - kHeaderSize))
                     .ok())
        << "truncated to " << cut;
  }
  // Trailing bytes.
  std::string longer = good + "x";
  EXPECT_FALSE(DecodeRdmaAccept(Payload(longer)).ok());
  // Reserved word not zero.
  std::string reserved = good;
  reserved[reserved.size() - 1] = 1;
  EXPECT_FALSE(DecodeRdmaAccept(Payload(reserved)).ok());
  // No regions; too many; a zero-length or wrapping region.
  RdmaAccept none = a;
  none.regions.clear();
  std::string out;
  EncodeRdmaAccept(none, &out);
  EXPECT_FALSE(DecodeRdmaAccept(Payload(out)).ok());
  RdmaAccept many = a;
  many.regions.assign(kMaxRegions + 1, {4096, 4096, 1});
  out.clear();
  EncodeRdmaAccept(many, &out);
  EXPECT_FALSE(DecodeRdmaAccept(Payload(out)).ok());
  for (RdmaRegionKey k : {RdmaRegionKey{4096, 0, 1}, RdmaRegionKey{~0ull - 10, 4096, 1}}) {
    RdmaAccept x = a;
    x.regions[0] = k;
    out.clear();
    EncodeRdmaAccept(x, &out);
    EXPECT_FALSE(DecodeRdmaAccept(Payload(out)).ok());
  }
}

TEST(RdmaProtocolTest, OversizedSetUpFramesRejectedByHeader) {
  for (FrameType t : {FrameType::kRdmaConnect, FrameType::kRdmaAccept}) {
    uint8_t hb[8] = {0x17, 0xFA, static_cast<uint8_t>(t), 0, 0, 0, 0, 0};
    const uint32_t len = static_cast<uint32_t>(MaxPayload(t) + 1);
    memcpy(hb + 4, &len, 4);
    auto h = DecodeHeader(absl::MakeConstSpan(hb));
    EXPECT_FALSE(h.ok()) << FrameTypeName(t);
  }
  const uint8_t unknown = static_cast<uint8_t>(FrameType::kDirtyApplied) + 1;
  uint8_t next[8] = {0x17, 0xFA, unknown, 0, 0, 0, 0, 0};
  EXPECT_FALSE(DecodeHeader(absl::MakeConstSpan(next)).ok())
      << "the type after the last is unknown";
}

// A TCP-only source asked for RDMA (after a good handshake) says how to start it.
TEST(RdmaProtocolTest, TcpOnlySourceRefusesRdmaClearly) {
  const uint64_t size = 16 * 4096;
  UniqueFd fd(memfd_create("src", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(fd.get(), size), 0);
  auto region = SourceRegion::MapFd("ram", fd.get(), 0, size, 4096);
  ASSERT_TRUE(region.ok()) << region.status();
  std::vector<SourceRegion> regions;
  regions.push_back(std::move(*region));
  Token token = RandomToken();
  PageServer server(std::move(regions), token);
  auto l = ListenTcp("127.0.0.1:0");
  ASSERT_TRUE(l.ok());
  const int port = *BoundPort(l->get());
  absl::Status served;
  std::thread t([&] { served = server.Serve(l->get()); });
  struct Joiner {
    PageServer& s;
    std::thread& t;
    ~Joiner() {
      s.Shutdown();
      t.join();
    }
  } joiner{server, t};
  TcpSourceOptions o;
  o.address = absl::StrCat("127.0.0.1:", port);
  o.token = token;
  std::vector<RegionInfo> table;
  auto stream = OpenChannel(o, Channel::kUrgent, &table);
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_EQ(table.size(), 1u);
  std::string out;
  EncodeRdmaConnect(SampleEndpoint(), &out);
  ASSERT_TRUE(stream->WriteAll(out.data(), out.size()).ok());
  FrameHeader h;
  std::string payload;
  // The ERROR frame comes back as the peer's status.
  absl::Status why = ReadSmallFrame(*stream, &h, &payload);
  EXPECT_EQ(why.code(), absl::StatusCode::kFailedPrecondition) << why;
  EXPECT_NE(why.message().find("serves TCP only"), absl::string_view::npos) << why;
  // An unauthenticated peer never reaches the RDMA set-up: a wrong token is refused first.
  TcpSourceOptions wrong = o;
  wrong.token[0] ^= 1;
  auto refused = OpenChannel(wrong, Channel::kUrgent, &table);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << refused.status();
}

// No RDMA device: both sides fail at once with a message that lists what was found.
TEST(RdmaProtocolTest, NoDeviceMessageListsDevicesFound) {
  if (!ListRdmaDevices().empty()) {
    GTEST_SKIP() << "this machine has RDMA devices (" << ListRdmaDevices()[0]
                 << "); the no-device message is checked on machines without one";
  }
  auto dev = RdmaDevice::Open({});
  ASSERT_FALSE(dev.ok());
  EXPECT_EQ(dev.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(dev.status().message().find("RDMA devices found: none"), absl::string_view::npos)
      << dev.status();
  RdmaSourceOptions o;
  o.control.address = "127.0.0.1:1";
  auto src = RdmaPageSource::Connect(o);
  ASSERT_FALSE(src.ok());
  EXPECT_NE(src.status().message().find("RDMA devices found: none"), absl::string_view::npos)
      << src.status();
}

}  // namespace
}  // namespace faultline
