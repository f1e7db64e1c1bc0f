// The page server against a raw client: every bad input gets a clear ERROR frame and the
// connection closed, and the server keeps serving everyone else.
#include "transport/page_server.h"

#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/crc32c.h"
#include "gtest/gtest.h"
#include "transport/socket.h"
#include "transport/tcp_page_source.h"

namespace faultline {
namespace {

constexpr uint64_t kSize = 64 * 4096;

class PageServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_.reset(memfd_create("src", MFD_CLOEXEC));
    ASSERT_EQ(ftruncate(fd_.get(), kSize), 0);
    auto* p = static_cast<uint8_t*>(
        mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0));
    ASSERT_NE(p, MAP_FAILED);
    for (uint64_t i = 0; i < kSize / 8; ++i) {
      reinterpret_cast<uint64_t*>(p)[i] = (i / 512) % 4 == 0 ? 0 : i * 2654435761u;
    }
    mem_ = p;
    auto region = SourceRegion::MapFd("ram", fd_.get(), 0, kSize, 4096);
    ASSERT_TRUE(region.ok()) << region.status();
    std::vector<SourceRegion> regions;
    regions.push_back(std::move(*region));
    token_ = RandomToken();
    server_ = std::make_unique<PageServer>(std::move(regions), token_);
    auto l = ListenTcp("127.0.0.1:0");
    ASSERT_TRUE(l.ok());
    listen_ = std::move(*l);
    port_ = *BoundPort(listen_.get());
    thread_ = std::thread([this] { served_ = server_->Serve(listen_.get()); });
  }
  void TearDown() override {
    server_->Shutdown();
    thread_.join();
    munmap(mem_, kSize);
  }
  std::string Addr() const { return absl::StrCat("127.0.0.1:", port_); }
  UniqueFd Raw() {
    auto fd = ConnectTcp(Addr(), absl::Seconds(5));
    EXPECT_TRUE(fd.ok());
    return std::move(*fd);
  }
  void SendHello(int fd, uint32_t version, const Token& token, Channel ch = Channel::kUrgent) {
    Hello h;
    h.version = version;
    h.token = token;
    h.channel = ch;
    std::string out;
    EncodeHello(h, &out);
    ASSERT_TRUE(WriteAll(fd, out.data(), out.size()).ok());
  }
  // Reads frames until an error or EOF; returns the final status.
  absl::Status Drain(int fd) {
    FrameHeader h;
    std::string payload;
    while (true) {
      absl::Status s = ReadSmallFrame(fd, &h, &payload);
      if (!s.ok()) return s;
    }
  }
  UniqueFd Handshaken() {
    UniqueFd fd = Raw();
    SendHello(fd.get(), kProtocolVersion, token_);
    FrameHeader h;
    std::string payload;
    EXPECT_TRUE(ReadSmallFrame(fd.get(), &h, &payload).ok());
    EXPECT_EQ(h.type, FrameType::kWelcome);
    return fd;
  }

  UniqueFd fd_, listen_;
  uint8_t* mem_ = nullptr;
  Token token_;
  std::unique_ptr<PageServer> server_;
  int port_ = 0;
  std::thread thread_;
  absl::Status served_;
};

TEST_F(PageServerTest, WrongTokenIsRefused) {
  TcpSourceOptions o;
  o.address = Addr();
  o.token = RandomToken();
  auto src = TcpPageSource::Connect(o);
  ASSERT_FALSE(src.ok());
  EXPECT_EQ(src.status().code(), absl::StatusCode::kPermissionDenied) << src.status();
  EXPECT_NE(src.status().message().find("wrong migration token"), std::string::npos);
  EXPECT_GE(server_->stats().refused_connections.load(), 1u);
}

TEST_F(PageServerTest, WrongVersionIsNamed) {
  UniqueFd fd = Raw();
  SendHello(fd.get(), 2, token_);
  absl::Status s = Drain(fd.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("version mismatch: peer speaks 2"), std::string::npos) << s;
}

TEST_F(PageServerTest, GarbageIsRefused) {
  UniqueFd fd = Raw();
  const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_TRUE(WriteAll(fd.get(), junk, sizeof(junk)).ok());
  absl::Status s = Drain(fd.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("bad frame magic"), std::string::npos) << s;
}

TEST_F(PageServerTest, OversizedFrameIsRefused) {
  UniqueFd fd = Handshaken();
  std::string f;
  EncodeRequest({0, 1, 0}, &f);
  uint32_t big = 64u << 20;
  memcpy(&f[4], &big, 4);
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  absl::Status s = Drain(fd.get());
  EXPECT_NE(s.message().find("oversized"), std::string::npos) << s;
}

TEST_F(PageServerTest, OutOfRangeRequestIsRefused) {
  UniqueFd fd = Handshaken();
  std::string f;
  EncodeRequest({0, 2, 63}, &f);  // pages 63..64 of a 64-page region
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  absl::Status s = Drain(fd.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_NE(s.message().find("outside region 'ram'"), std::string::npos) << s;
  EXPECT_EQ(server_->stats().refused_requests.load(), 1u);
  f.clear();
  UniqueFd fd2 = Handshaken();
  EncodeRequest({3, 1, 0}, &f);  // no region 3
  ASSERT_TRUE(WriteAll(fd2.get(), f.data(), f.size()).ok());
  EXPECT_EQ(Drain(fd2.get()).code(), absl::StatusCode::kOutOfRange);
}

TEST_F(PageServerTest, TruncatedFrameThenCloseLeavesServerServing) {
  {
    UniqueFd fd = Handshaken();
    std::string f;
    EncodeRequest({0, 1, 0}, &f);
    ASSERT_TRUE(WriteAll(fd.get(), f.data(), 11).ok());  // header + 3 bytes, then hang up
  }
  // Another client is served normally.
  UniqueFd fd = Handshaken();
  std::string f;
  EncodeRequest({0, 4, 0}, &f);
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  uint8_t hb[kHeaderSize];
  ASSERT_TRUE(ReadAll(fd.get(), hb, sizeof(hb)).ok());
  auto h = DecodeHeader(hb);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->type, FrameType::kPages);
  std::vector<uint8_t> body(h->length);
  ASSERT_TRUE(ReadAll(fd.get(), body.data(), body.size()).ok());
  auto descs = DecodePageDescs(absl::MakeConstSpan(body).subspan(kPagesHeadSize, 32), 4, 4096,
                               h->length);
  ASSERT_TRUE(descs.ok()) << descs.status();
  EXPECT_TRUE((*descs)[0].zero());  // page 0 is zero in this memory: a marker, no bytes
  EXPECT_FALSE((*descs)[1].zero());
  EXPECT_EQ((*descs)[1].crc, Crc32c(mem_ + 4096, 4096));
  EXPECT_EQ(memcmp(body.data() + kPagesHeadSize + 32, mem_ + 4096, 4096), 0);
}

TEST_F(PageServerTest, DoneEndsServing) {
  UniqueFd fd = Handshaken();
  std::string f;
  EncodeDone(&f);
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  thread_.join();
  EXPECT_TRUE(served_.ok()) << served_;
  thread_ = std::thread([] {});
}

TEST_F(PageServerTest, VerifyAnswersPageChecksums) {
  TcpSourceOptions o;
  o.address = Addr();
  o.token = token_;
  uint64_t verified = 0;
  auto bad = VerifyAgainstSource(o, {mem_}, &verified, false);
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(*bad, 0u);
  EXPECT_EQ(verified, 64u);
  std::vector<uint8_t> copy(mem_, mem_ + kSize);
  copy[5 * 4096 + 7] ^= 1;
  bad = VerifyAgainstSource(o, {copy.data()}, &verified, false);
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(*bad, 1u);
}

}  // namespace
}  // namespace faultline
