// Whole migrations over TLS (transport/tls.h): the engine, TcpPageSource and the page server
// with mutual TLS 1.3, a guest faulting while pages arrive, every page verified — directly
// and by CRC32C over a TLS VERIFY connection — and reconnects that redo the TLS handshake
// when a proxy cuts the connections.
#include <cstdio>

#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/testing/flaky_proxy.h"
#include "tests/testing/test_certs.h"
#include "tests/testing/test_dest.h"
#include "tests/testing/test_source.h"
#include "transport/tcp_page_source.h"
#include "transport/tls.h"
#include "workload/thread_guest.h"

namespace faultline {
namespace {

constexpr uint64_t kSize = 32u << 20;

struct Tls {
  std::unique_ptr<TestCa> ca;
  std::shared_ptr<const TlsContext> server, client;
};

// Mutual TLS: the server requires a client certificate signed by the same CA.
Tls MakeTls() {
  Tls t;
  auto ca = TestCa::Create("migration");
  EXPECT_TRUE(ca.ok()) << ca.status();
  if (!ca.ok()) return t;
  t.ca = std::move(*ca);
  auto server_files = t.ca->Issue("source");
  auto client_files = t.ca->Issue("dest", "DNS:dest.example");
  EXPECT_TRUE(server_files.ok() && client_files.ok());
  auto server = TlsContext::Create(TlsContext::Role::kServer, *server_files);
  auto client = TlsContext::Create(TlsContext::Role::kClient, *client_files);
  EXPECT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE(client.ok()) << client.status();
  if (server.ok()) t.server = *server;
  if (client.ok()) t.client = *client;
  return t;
}

class TlsMigration : public ::testing::TestWithParam<RegionKind> {};

TEST_P(TlsMigration, EveryPageArrivesOverMutualTlsAndMatches) {
  const RegionKind kind = GetParam();
  Tls tls = MakeTls();
  ASSERT_TRUE(tls.server && tls.client);
  auto src = TestSource::Start(kSize, 4096, PatternSpec{}, tls.server);
  ASSERT_TRUE(src.ok()) << src.status();
  TcpSourceOptions o = (*src)->options();
  o.tls = tls.client;
  EngineOptions eo;
  eo.finish_source = false;  // DONE comes with the verification below
  absl::StatusOr<Dest> d = MakeDest(kind, kSize, o, eo);
  ASSERT_TRUE(d.ok()) << d.status();
  GuestOptions go;
  go.touches_per_thread = 3000;
  ThreadGuest guest(d->region->base(), kSize, 4096, go);
  absl::Status run = d->engine->Run(d->source.get());
  ASSERT_TRUE(run.ok()) << run;
  guest.Join();
  const EngineCounters& c = d->engine->counters();
  EXPECT_EQ(d->engine->remaining_pages(), 0u);
  EXPECT_EQ(c.urgent_pages + c.bulk_pages + c.zero_pages, kSize / 4096);  // each page once
  EXPECT_GT(c.faults.load(), 0u);
  EXPECT_GT(c.urgent_pages.load(), 0u);
  EXPECT_GT(c.zero_pages.load(), 0u);
  EXPECT_EQ((*src)->CountMismatches(d->region->base()), 0u);
  // The operator's check: CRC32C of every page against the source, over TLS, then DONE.
  uint64_t verified = 0;
  auto bad = VerifyAgainstSource(o, {d->region->base()}, &verified, true);
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(*bad, 0u);
  EXPECT_EQ(verified, kSize / 4096);
  EXPECT_EQ((*src)->server().stats().refused_connections.load(), 0u);
  std::printf("%s over TLS: urgent %llu bulk %llu zero %llu faults %llu, latency %s\n",
              RegionKindName(kind), (unsigned long long)c.urgent_pages.load(),
              (unsigned long long)c.bulk_pages.load(), (unsigned long long)c.zero_pages.load(),
              (unsigned long long)c.faults.load(),
              d->engine->fault_stats().Overall().Summary().c_str());
}

INSTANTIATE_TEST_SUITE_P(Kinds, TlsMigration,
                         ::testing::Values(RegionKind::kAnonymous, RegionKind::kMemfd),
                         [](const auto& info) { return std::string(RegionKindName(info.param)); });

TEST(TlsMigrationFailures, ADestinationWithoutClientCertificateGetsNothing) {
  Tls tls = MakeTls();
  ASSERT_TRUE(tls.server && tls.client);
  auto src = TestSource::Start(8u << 20, 4096, PatternSpec{}, tls.server);
  ASSERT_TRUE(src.ok()) << src.status();
  TlsFiles ca_only;
  ca_only.ca = tls.ca->ca_cert();
  auto no_cert = TlsContext::Create(TlsContext::Role::kClient, ca_only);
  ASSERT_TRUE(no_cert.ok()) << no_cert.status();
  TcpSourceOptions o = (*src)->options();
  o.tls = *no_cert;
  auto s = TcpPageSource::Connect(o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kPermissionDenied) << s.status();
  EXPECT_NE(s.status().message().find("certificate required"), std::string::npos) << s.status();
  EXPECT_EQ((*src)->server().stats().urgent_pages.load(), 0u);
}

// Connections cut every 5 MiB by a TCP proxy: each Reconnect opens new connections and does a
// new TLS handshake; the migration completes with each page placed once.
TEST(TlsMigrationFailures, ReconnectsRedoTheTlsHandshake) {
  Tls tls = MakeTls();
  ASSERT_TRUE(tls.server && tls.client);
  auto src = TestSource::Start(kSize, 4096, PatternSpec{}, tls.server);
  ASSERT_TRUE(src.ok()) << src.status();
  FlakyProxy proxy((*src)->options().address);
  proxy.CutEvery(5u << 20);
  EngineOptions eo;
  eo.reconnect_deadline = absl::Seconds(20);
  TcpSourceOptions o = (*src)->options();
  o.address = proxy.address();
  o.tls = tls.client;
  o.tls_server_name = "127.0.0.1";  // the proxy's address is the source's, as far as TLS knows
  absl::StatusOr<Dest> d = MakeDest(RegionKind::kMemfd, kSize, o, eo);
  ASSERT_TRUE(d.ok()) << d.status();
  GuestOptions go;
  go.touches_per_thread = 3000;
  ThreadGuest guest(d->region->base(), kSize, 4096, go);
  absl::Status run = d->engine->Run(d->source.get());
  ASSERT_TRUE(run.ok()) << run;
  guest.Join();
  const EngineCounters& c = d->engine->counters();
  EXPECT_GE(proxy.cuts(), 3);
  EXPECT_GE(d->source->reconnects(), 3);
  EXPECT_EQ(c.urgent_pages + c.bulk_pages + c.zero_pages, kSize / 4096);
  EXPECT_EQ((*src)->CountMismatches(d->region->base()), 0u);
  // Every reconnect was a full TLS handshake the server accepted (two channels each).
  EXPECT_EQ((*src)->server().stats().refused_connections.load(), 0u);
  std::printf("TLS: cuts %d, reconnects %d\n", proxy.cuts(), d->source->reconnects());
}

}  // namespace
}  // namespace faultline
