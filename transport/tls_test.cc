// TLS for the TCP transport, on real loopback sockets with real OpenSSL and certificates made
// at test time: handshakes that work, every way one is refused (wrong CA, wrong name, expired,
// missing client certificate, plain on one side and TLS on the other) with a message that says
// what is wrong and no hang, and the page server / TcpPageSource running over TLS.
#include "transport/tls.h"

#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/crc32c.h"
#include "base/fix.h"
#include "gtest/gtest.h"
#include "tests/testing/test_certs.h"
#include "transport/page_server.h"
#include "transport/socket.h"
#include "transport/tcp_page_source.h"
#include "transport/testing/recording_sink.h"

namespace faultline {
namespace {

constexpr uint64_t kPages = 64;
constexpr uint64_t kSize = kPages * 4096;

bool Contains(const absl::Status& s, const std::string& what) {
  return std::string(s.message()).find(what) != std::string::npos;
}

// The messages an operator would read, in the test log.
void Show(const char* who, const absl::Status& s) {
  std::printf("  %s: %s\n", who, s.ToString().c_str());
}

// Certificates shared by every test: CA "good" with a server and a client certificate, CA
// "other" with a client certificate of its own.
class Pki {
 public:
  static Pki& Get() {
    static Pki* pki = new Pki();
    return *pki;
  }
  std::unique_ptr<TestCa> good, other;
  TlsFiles server, client, stranger;

 private:
  Pki() {
    auto g = TestCa::Create("good");
    auto o = TestCa::Create("other");
    EXPECT_TRUE(g.ok() && o.ok());
    good = std::move(*g);
    other = std::move(*o);
    server = *good->Issue("server");
    client = *good->Issue("client", "DNS:dest.example");
    stranger = *other->Issue("stranger", "DNS:dest.example");
  }
};

std::shared_ptr<const TlsContext> ServerCtx(bool mutual) {
  TlsFiles f = Pki::Get().server;
  if (!mutual) f.ca.clear();
  auto c = TlsContext::Create(TlsContext::Role::kServer, f);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : nullptr;
}

// Trusts `ca`; presents `cert` if given.
std::shared_ptr<const TlsContext> ClientCtx(const std::string& ca, const TlsFiles* cert = nullptr) {
  TlsFiles f;
  f.ca = ca;
  if (cert) {
    f.cert = cert->cert;
    f.key = cert->key;
  }
  auto c = TlsContext::Create(TlsContext::Role::kClient, f);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : nullptr;
}

// ---- Streams: a connected pair over loopback TCP, handshaken on both sides. ----

struct Pair {
  Stream client, server;
  absl::Status client_status, server_status;
};

Pair Handshake(std::shared_ptr<const TlsContext> server_ctx,
               std::shared_ptr<const TlsContext> client_ctx, const std::string& name = "127.0.0.1",
               absl::Duration timeout = absl::Seconds(5)) {
  Pair p;
  auto l = ListenTcp("127.0.0.1:0");
  EXPECT_TRUE(l.ok());
  const int port = *BoundPort(l->get());
  std::thread server([&] {
    p.server = Stream(UniqueFd(accept4(l->get(), nullptr, nullptr, SOCK_CLOEXEC)));
    p.server_status =
        server_ctx ? server_ctx->Accept(&p.server, absl::Now() + timeout) : absl::OkStatus();
  });
  auto fd = ConnectTcp(absl::StrCat("127.0.0.1:", port), absl::Seconds(5));
  EXPECT_TRUE(fd.ok());
  p.client = Stream(std::move(*fd));
  if (client_ctx) {
    p.client_status =
        client_ctx->Connect(&p.client, name, "the test server", absl::Now() + timeout);
  }
  if (!p.client_status.ok()) p.client.ShutdownSocket();  // a server still waiting gives up
  server.join();
  return p;
}

TEST(TlsStream, HandshakeAndDataBothWays) {
  Pair p = Handshake(ServerCtx(false), ClientCtx(Pki::Get().good->ca_cert()));
  ASSERT_TRUE(p.client_status.ok()) << p.client_status;
  ASSERT_TRUE(p.server_status.ok()) << p.server_status;
  EXPECT_TRUE(p.client.tls());
  EXPECT_NE(p.client.Describe().find("TLSv1.3"), std::string::npos) << p.client.Describe();
  // Pieces of every size through WritevAll: below, across and above one TLS record.
  std::vector<std::vector<uint8_t>> pieces;
  for (size_t n : {size_t{10}, size_t{5000}, size_t{100000}, size_t{3}, size_t{16384}}) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 7 + n);
    pieces.push_back(std::move(v));
  }
  std::vector<struct iovec> iov;
  std::vector<uint8_t> all;
  for (auto& v : pieces) {
    iov.push_back({v.data(), v.size()});
    all.insert(all.end(), v.begin(), v.end());
  }
  ASSERT_TRUE(p.client.WritevAll(iov.data(), static_cast<int>(iov.size())).ok());
  std::vector<uint8_t> got(all.size());
  ASSERT_TRUE(p.server.ReadAll(got.data(), got.size()).ok());
  EXPECT_EQ(got, all);
  // And back, 4 MiB.
  std::vector<uint8_t> big(4u << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i ^ (i >> 13));
  std::thread w([&] { EXPECT_TRUE(p.server.WriteAll(big.data(), big.size()).ok()); });
  std::vector<uint8_t> back(big.size());
  EXPECT_TRUE(p.client.ReadAll(back.data(), back.size()).ok());
  w.join();
  EXPECT_EQ(back, big);
  // A clean close: the reader is told the peer closed.
  p.server = Stream();
  uint8_t b;
  absl::Status s = p.client.ReadAll(&b, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_TRUE(Contains(s, "peer closed the connection")) << s;
}

// One thread reads while another writes on the same TLS stream (the receive thread and the
// fault loop's requests do exactly this).
TEST(TlsStream, ConcurrentReadAndWriteOnOneStream) {
  Pair p = Handshake(ServerCtx(false), ClientCtx(Pki::Get().good->ca_cert()));
  ASSERT_TRUE(p.client_status.ok()) << p.client_status;
  constexpr size_t kChunk = 4096, kChunks = 512;
  std::thread echo([&] {
    std::vector<uint8_t> buf(kChunk);
    for (size_t i = 0; i < kChunks; ++i) {
      if (!p.server.ReadAll(buf.data(), buf.size()).ok()) return;
      if (!p.server.WriteAll(buf.data(), buf.size()).ok()) return;
    }
  });
  std::thread writer([&] {
    std::vector<uint8_t> buf(kChunk);
    for (size_t i = 0; i < kChunks; ++i) {
      memset(buf.data(), static_cast<int>(i & 0xff), buf.size());
      ASSERT_TRUE(p.client.WriteAll(buf.data(), buf.size()).ok());
    }
  });
  std::vector<uint8_t> buf(kChunk);
  size_t bad = 0;
  for (size_t i = 0; i < kChunks; ++i) {
    ASSERT_TRUE(p.client.ReadAll(buf.data(), buf.size()).ok());
    for (uint8_t b : buf) bad += b != static_cast<uint8_t>(i & 0xff);
  }
  writer.join();
  echo.join();
  EXPECT_EQ(bad, 0u);
}

TEST(TlsStream, ReadTimeoutAndShutdownWakeAReader) {
  Pair p = Handshake(ServerCtx(false), ClientCtx(Pki::Get().good->ca_cert()));
  ASSERT_TRUE(p.client_status.ok()) << p.client_status;
  p.client.SetReadTimeout(absl::Milliseconds(200));
  uint8_t b;
  absl::Time t0 = absl::Now();
  absl::Status s = p.client.ReadAll(&b, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_LT(absl::Now() - t0, absl::Seconds(3));
  p.client.SetReadTimeout(absl::ZeroDuration());
  std::thread reader([&] { s = p.client.ReadAll(&b, 1); });
  absl::SleepFor(absl::Milliseconds(100));
  p.client.ShutdownSocket();
  reader.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
}

TEST(TlsStream, WrongCaIsRefusedOnBothSides) {
  Pair p = Handshake(ServerCtx(false), ClientCtx(Pki::Get().other->ca_cert()));
  Show("destination", p.client_status);
  Show("source", p.server_status);
  EXPECT_EQ(p.client_status.code(), absl::StatusCode::kPermissionDenied) << p.client_status;
  EXPECT_TRUE(Contains(p.client_status, "certificate was rejected")) << p.client_status;
  EXPECT_TRUE(Contains(p.client_status, "unable to get local issuer certificate"))
      << p.client_status;
  EXPECT_TRUE(Contains(p.client_status, "OpenSSL: error:")) << p.client_status;
  EXPECT_FALSE(p.server_status.ok());
  EXPECT_TRUE(Contains(p.server_status, "unknown ca")) << p.server_status;
}

TEST(TlsStream, NameMismatchIsRefusedAndTheRightNameWorks) {
  Pair p = Handshake(ServerCtx(false), ClientCtx(Pki::Get().good->ca_cert()), "db.example");
  Show("destination", p.client_status);
  EXPECT_EQ(p.client_status.code(), absl::StatusCode::kPermissionDenied) << p.client_status;
  EXPECT_TRUE(Contains(p.client_status, "does not name 'db.example'")) << p.client_status;
  EXPECT_EQ(FixOf(p.client_status), Fix::kTlsServerName) << p.client_status;
  Pair q = Handshake(ServerCtx(false), ClientCtx(Pki::Get().good->ca_cert()), "127.0.0.2");
  EXPECT_EQ(q.client_status.code(), absl::StatusCode::kPermissionDenied) << q.client_status;
  Pair r = Handshake(ServerCtx(false), ClientCtx(Pki::Get().good->ca_cert()), "localhost");
  EXPECT_TRUE(r.client_status.ok()) << r.client_status;
}

TEST(TlsStream, ExpiredCaIsRefusedByTheClient) {
  TestCa::Validity old;
  old.not_before = -absl::Hours(72);
  old.not_after = -absl::Hours(48);
  auto ca = TestCa::Create("expired", old);
  ASSERT_TRUE(ca.ok()) << ca.status();
  auto leaf = (*ca)->Issue("server");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  TlsFiles sf = *leaf;
  sf.ca.clear();
  auto server = TlsContext::Create(TlsContext::Role::kServer, sf);
  ASSERT_TRUE(server.ok()) << server.status();  // the leaf itself is valid
  Pair p = Handshake(*server, ClientCtx((*ca)->ca_cert()));
  Show("destination", p.client_status);
  EXPECT_EQ(p.client_status.code(), absl::StatusCode::kPermissionDenied) << p.client_status;
  EXPECT_TRUE(Contains(p.client_status, "certificate has expired")) << p.client_status;
}

TEST(TlsStream, SilentPeerTimesOutTheHandshake) {
  auto l = ListenTcp("127.0.0.1:0");
  ASSERT_TRUE(l.ok());
  auto fd = ConnectTcp(absl::StrCat("127.0.0.1:", *BoundPort(l->get())), absl::Seconds(5));
  ASSERT_TRUE(fd.ok());
  Stream s(std::move(*fd));  // accepted by the kernel, never answered
  const absl::Time t0 = absl::Now();
  absl::Status st = ClientCtx(Pki::Get().good->ca_cert())
                        ->Connect(&s, "127.0.0.1", "silent", absl::Now() + absl::Milliseconds(500));
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
  EXPECT_TRUE(Contains(st, "timed out")) << st;
  EXPECT_LT(absl::Now() - t0, absl::Seconds(3));
  // A server waiting for a client that never speaks gives up too.
  auto fd2 = ConnectTcp(absl::StrCat("127.0.0.1:", *BoundPort(l->get())), absl::Seconds(5));
  ASSERT_TRUE(fd2.ok());
  UniqueFd first(accept4(l->get(), nullptr, nullptr, SOCK_CLOEXEC));  // `s` above
  Stream accepted(UniqueFd(accept4(l->get(), nullptr, nullptr, SOCK_CLOEXEC)));
  st = ServerCtx(false)->Accept(&accepted, absl::Now() + absl::Milliseconds(300));
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
}

// ---- Loading certificates and keys ----

TEST(TlsContextFiles, BadFilesSayWhatIsWrong) {
  const Pki& pki = Pki::Get();
  using Role = TlsContext::Role;
  TlsFiles f = pki.server;
  f.key = pki.good->dir() + "/missing.key";
  auto c = TlsContext::Create(Role::kServer, f);
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(Contains(c.status(), "missing.key")) << c.status();
  EXPECT_TRUE(Contains(c.status(), "No such file")) << c.status();

  f = pki.server;
  f.key = pki.client.key;  // another certificate's key
  c = TlsContext::Create(Role::kServer, f);
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(Contains(c.status(), "does not match")) << c.status();
  EXPECT_TRUE(Contains(c.status(), "OpenSSL")) << c.status();

  f = pki.server;
  f.cert = pki.server.key;  // a key where the certificate should be
  c = TlsContext::Create(Role::kServer, f);
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(Contains(c.status(), "no usable PEM certificate")) << c.status();

  f = pki.server;
  f.key = pki.server.cert;  // a certificate where the key should be
  c = TlsContext::Create(Role::kServer, f);
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(Contains(c.status(), "no usable private key")) << c.status();

  // An unreadable key (root reads everything: only meaningful for other users).
  if (geteuid() == 0) {
    std::printf("  (no unreadable-key case: running as root, which reads every file)\n");
  } else {
    f = pki.server;
    ASSERT_EQ(chmod(f.key.c_str(), 0), 0);
    c = TlsContext::Create(Role::kServer, f);
    chmod(f.key.c_str(), 0600);
    ASSERT_FALSE(c.ok());
    EXPECT_TRUE(Contains(c.status(), "Permission denied")) << c.status();
  }

  TlsFiles only_cert;
  only_cert.cert = pki.server.cert;
  c = TlsContext::Create(Role::kServer, only_cert);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(FixOf(c.status()), Fix::kTlsCertKeyPair) << c.status();

  TlsFiles no_ca = pki.client;
  no_ca.ca.clear();
  c = TlsContext::Create(Role::kClient, no_ca);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(FixOf(c.status()), Fix::kDestUsesTls) << c.status();

  auto none = TlsContext::FromFiles(Role::kClient, TlsFiles{});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, nullptr);  // no flags: plain TCP
}

TEST(TlsContextFiles, ExpiredOrNotYetValidCertificateIsRefusedAtLoad) {
  TestCa::Validity expired;
  expired.not_before = -absl::Hours(48);
  expired.not_after = -absl::Hours(1);
  auto leaf = Pki::Get().good->Issue("expired", "IP:127.0.0.1", expired);
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  auto c = TlsContext::Create(TlsContext::Role::kServer, *leaf);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << c.status();
  EXPECT_TRUE(Contains(c.status(), "expired on")) << c.status();

  TestCa::Validity future;
  future.not_before = absl::Hours(24);
  future.not_after = absl::Hours(48);
  leaf = Pki::Get().good->Issue("future", "IP:127.0.0.1", future);
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  c = TlsContext::Create(TlsContext::Role::kClient, *leaf);
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(Contains(c.status(), "not valid before")) << c.status();
}

// ---- The page server and the destination's transport over TLS ----

class TlsServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_.reset(memfd_create("src", MFD_CLOEXEC));
    ASSERT_EQ(ftruncate(fd_.get(), kSize), 0);
    mem_ = static_cast<uint8_t*>(
        mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0));
    ASSERT_NE(mem_, MAP_FAILED);
    for (uint64_t i = 0; i < kSize / 8; ++i) {
      reinterpret_cast<uint64_t*>(mem_)[i] = (i / 512) % 4 == 0 ? 0 : i * 2654435761u;
    }
    token_ = RandomToken();
  }
  void Serve(std::shared_ptr<const TlsContext> tls) {
    auto region = SourceRegion::MapFd("ram", fd_.get(), 0, kSize, 4096);
    ASSERT_TRUE(region.ok()) << region.status();
    std::vector<SourceRegion> regions;
    regions.push_back(std::move(*region));
    server_ = std::make_unique<PageServer>(std::move(regions), token_, std::move(tls));
    auto l = ListenTcp("127.0.0.1:0");
    ASSERT_TRUE(l.ok());
    listen_ = std::move(*l);
    port_ = *BoundPort(listen_.get());
    thread_ = std::thread([this] { served_ = server_->Serve(listen_.get()); });
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
    if (thread_.joinable()) thread_.join();
    if (mem_) munmap(mem_, kSize);
  }
  TcpSourceOptions Options(std::shared_ptr<const TlsContext> tls) const {
    TcpSourceOptions o;
    o.address = absl::StrCat("127.0.0.1:", port_);
    o.token = token_;
    o.connect_timeout = absl::Seconds(5);
    o.tls = std::move(tls);
    return o;
  }
  // Opens one channel; *took is how long it took (to show nothing hangs).
  absl::Status Open(std::shared_ptr<const TlsContext> tls, absl::Duration* took = nullptr,
                    const Token* token = nullptr) {
    TcpSourceOptions o = Options(std::move(tls));
    if (token) o.token = *token;
    std::vector<RegionInfo> regions;
    const absl::Time t0 = absl::Now();
    absl::StatusOr<Stream> s = OpenChannel(o, Channel::kUrgent, &regions);
    if (took) *took = absl::Now() - t0;
    if (s.ok() && regions.size() != 1) return absl::InternalError("no region table");
    if (!s.ok()) {
      Show("destination", s.status());
      if (WaitForRefusal()) Show("source refused", absl::UnknownError(server_->last_refusal()));
    }
    return s.status();
  }
  bool WaitForRefusal() {
    for (int i = 0; i < 300 && server_->stats().refused_connections.load() == 0; ++i) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    return server_->stats().refused_connections.load() > 0;
  }

  UniqueFd fd_, listen_;
  uint8_t* mem_ = nullptr;
  Token token_;
  std::unique_ptr<PageServer> server_;
  int port_ = 0;
  std::thread thread_;
  absl::Status served_;
};

TEST_F(TlsServerTest, TokenHandshakeRunsInsideTls) {
  Serve(ServerCtx(false));
  EXPECT_TRUE(Open(ClientCtx(Pki::Get().good->ca_cert())).ok());
  const Token wrong = RandomToken();
  absl::Status s = Open(ClientCtx(Pki::Get().good->ca_cert()), nullptr, &wrong);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(Contains(s, "wrong migration token")) << s;
}

TEST_F(TlsServerTest, PlainDestinationToTlsSourceIsToldTlsIsRequired) {
  Serve(ServerCtx(false));
  absl::Duration took;
  absl::Status s = Open(nullptr, &took);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(Contains(s, "requires TLS")) << s;
  EXPECT_EQ(FixOf(s), Fix::kDestUsesTls) << s;
  EXPECT_LT(took, absl::Seconds(3));
  EXPECT_TRUE(WaitForRefusal());
  EXPECT_NE(server_->last_refusal().find("requires TLS"), std::string::npos);
}

TEST_F(TlsServerTest, TlsDestinationToPlainSourceSaysTheSourceIsPlain) {
  Serve(nullptr);
  absl::Duration took;
  absl::Status s = Open(ClientCtx(Pki::Get().good->ca_cert()), &took);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_TRUE(Contains(s, "does not speak TLS")) << s;
  EXPECT_TRUE(Contains(s, "wrong version number")) << s;  // OpenSSL's own words
  EXPECT_EQ(FixOf(s), Fix::kSourceServesTls) << s;
  EXPECT_LT(took, absl::Seconds(3));
  EXPECT_TRUE(WaitForRefusal());
  EXPECT_NE(server_->last_refusal().find("speaks TLS"), std::string::npos)
      << server_->last_refusal();
}

TEST_F(TlsServerTest, MutualTlsAcceptsAClientCertificateSignedByItsCa) {
  Serve(ServerCtx(true));
  EXPECT_TRUE(Open(ClientCtx(Pki::Get().good->ca_cert(), &Pki::Get().client)).ok());
}

TEST_F(TlsServerTest, MutualTlsRefusesADestinationWithoutCertificate) {
  Serve(ServerCtx(true));
  absl::Duration took;
  absl::Status s = Open(ClientCtx(Pki::Get().good->ca_cert()), &took);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(Contains(s, "certificate required")) << s;  // the server's alert
  EXPECT_EQ(FixOf(s), Fix::kDestClientCertificate) << s;
  EXPECT_LT(took, absl::Seconds(3));
  EXPECT_TRUE(WaitForRefusal());
  EXPECT_NE(server_->last_refusal().find("no client certificate"), std::string::npos)
      << server_->last_refusal();
}

TEST_F(TlsServerTest, MutualTlsRefusesACertificateFromAnotherCa) {
  Serve(ServerCtx(true));
  absl::Status s = Open(ClientCtx(Pki::Get().good->ca_cert(), &Pki::Get().stranger));
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(Contains(s, "unknown ca")) << s;
  EXPECT_TRUE(WaitForRefusal());
  EXPECT_NE(server_->last_refusal().find("client certificate was rejected"), std::string::npos)
      << server_->last_refusal();
}

void ExpectPagesMatch(RecordingSink& sink, const uint8_t* mem) {
  EXPECT_TRUE(sink.rejected_.empty());
  for (const RecordingSink::Got& g : sink.got()) {
    if (!g.zero) {
      EXPECT_EQ(memcmp(sink.bytes(g.urgency, g.page), mem + g.page * 4096, 4096), 0) << g.page;
    }
  }
}

TEST_F(TlsServerTest, PagesArriveOverTlsOnBothChannelsAndStopIsPrompt) {
  Serve(ServerCtx(true));
  for (bool busy : {false, true}) {
    SCOPED_TRACE(busy ? "busy-poll" : "poll");
    TcpSourceOptions o = Options(ClientCtx(Pki::Get().good->ca_cert(), &Pki::Get().client));
    o.busy_poll = busy;
    auto src = TcpPageSource::Connect(o);
    ASSERT_TRUE(src.ok()) << src.status();
    auto sink = std::make_unique<RecordingSink>(kPages);
    ASSERT_TRUE((*src)->Start(sink.get()).ok());
    ASSERT_TRUE((*src)->RequestUrgent(0, 33).ok());
    ASSERT_TRUE((*src)->RequestUrgent(0, 7).ok());
    ASSERT_TRUE((*src)->RequestBulk(0, 0, 0, kPages).ok());
    ASSERT_TRUE(sink->WaitUntil([&] { return sink->got_.size() >= kPages + 2; }));
    ExpectPagesMatch(*sink, mem_);
    size_t zeros = 0;
    for (const RecordingSink::Got& g : sink->got()) zeros += g.zero;
    EXPECT_GT(zeros, 0u);  // zero pages travel as markers inside TLS too
    // Idle connections: Stop() wakes both receive threads at once.
    absl::SleepFor(absl::Milliseconds(50));
    const absl::Time t0 = absl::Now();
    (*src)->Stop();
    EXPECT_LT(absl::Now() - t0, absl::Seconds(2));
    EXPECT_FALSE(sink->failed_.has_value())  // no Failed() after Stop()
        << sink->failed_->status;
  }
  EXPECT_GT(server_->stats().urgent_pages.load(), 0u);
}

TEST_F(TlsServerTest, VerifyAgainstSourceOverTls) {
  Serve(ServerCtx(false));
  std::vector<const uint8_t*> bases = {mem_};
  uint64_t verified = 0;
  auto bad =
      VerifyAgainstSource(Options(ClientCtx(Pki::Get().good->ca_cert())), bases, &verified, true);
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(*bad, 0u);
  EXPECT_EQ(verified, kPages);
  thread_.join();  // DONE ends the server
  EXPECT_TRUE(served_.ok()) << served_;
}

TEST_F(TlsServerTest, ShutdownWakesIdleAndHandshakingConnections) {
  Serve(ServerCtx(false));
  TcpSourceOptions o = Options(ClientCtx(Pki::Get().good->ca_cert()));
  std::vector<RegionInfo> regions;
  auto idle = OpenChannel(o, Channel::kBulk, &regions);
  ASSERT_TRUE(idle.ok()) << idle.status();
  // A connection that never starts its handshake: the server waits on it.
  auto silent = ConnectTcp(o.address, absl::Seconds(5));
  ASSERT_TRUE(silent.ok());
  absl::SleepFor(absl::Milliseconds(100));
  const absl::Time t0 = absl::Now();
  server_->Shutdown();
  thread_.join();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(3));
  EXPECT_EQ(served_.code(), absl::StatusCode::kCancelled) << served_;
  uint8_t b;
  EXPECT_FALSE(idle->ReadAll(&b, 1).ok());  // the source hung up
}

}  // namespace
}  // namespace faultline
