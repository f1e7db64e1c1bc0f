// The RDMA transport on real verbs (soft-RoCE in the VM of tests/rdma/run_rdma_tests.sh, or any
// machine with an RDMA device): whole post-copy migrations through the engine with a guest
// running, every page compared with the source; urgent reads straight into the alias mapping;
// failed work completions (pages handed back, reconnect, or a clear error); CRC mismatches
// fetched again; a wrong token refused. Without an RDMA device every test skips and says why.
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/crc32c.h"
#include "cli/setup.h"
#include "engine/engine.h"
#include "engine/region.h"
#include "gtest/gtest.h"
#include "tests/testing/test_source.h"
#include "transport/rdma_page_server.h"
#include "transport/rdma_page_source.h"
#include "transport/rdma_verbs.h"
#include "transport/testing/recording_sink.h"
#include "workload/thread_guest.h"

namespace faultline {
namespace {

#define SKIP_WITHOUT_RDMA()                                                                   \
  do {                                                                                        \
    if (ListRdmaDevices().empty()) {                                                          \
      GTEST_SKIP() << "no RDMA device on this machine (ibv_get_device_list found none); run " \
                      "tests/rdma/run_rdma_tests.sh for these tests on soft-RoCE in a VM";    \
    }                                                                                         \
  } while (0)

struct Source {
  std::unique_ptr<TestSource> tcp;
  std::unique_ptr<RdmaPageServer> rdma;
  RdmaSourceOptions options() const {
    RdmaSourceOptions o;
    o.control = tcp->options();
    return o;
  }
};

absl::StatusOr<Source> StartSource(uint64_t size) {
  Source s;
  absl::StatusOr<std::unique_ptr<TestSource>> t = TestSource::Start(size, 4096);
  if (!t.ok()) return t.status();
  s.tcp = std::move(*t);
  absl::StatusOr<std::unique_ptr<RdmaPageServer>> r =
      RdmaPageServer::Create(&s.tcp->server(), RdmaDeviceOptions{});
  if (!r.ok()) return r.status();
  s.rdma = std::move(*r);
  return s;
}

struct Migration {
  Destination dest;  // the region and the engine (which outlives the source, as it always has)
  std::unique_ptr<RdmaPageSource> source;
  GuestRegion* region() const { return dest.region(); }
  Engine* engine() const { return dest.engine.get(); }
};

// The destination set-up of the CLI (cli/setup.h), matching the source's region table, over
// the RDMA transport.
absl::StatusOr<Migration> MakeMigration(RegionKind kind, const Source& src,
                                        const RdmaSourceOptions& ro, const EngineOptions& eo) {
  Migration m;
  absl::StatusOr<std::unique_ptr<RdmaPageSource>> s = RdmaPageSource::Connect(ro);
  if (!s.ok()) return s.status();
  m.source = std::move(*s);
  absl::StatusOr<Destination> d = CreateDestination(m.source->regions(), kind, eo);
  if (!d.ok()) return d.status();
  m.dest = std::move(*d);
  return m;
}

void RunWithGuest(RegionKind kind, const RdmaSourceOptions& extra, const Source& src,
                  Migration& m) {
  GuestOptions go;
  go.touches_per_thread = 1500;
  ThreadGuest guest(m.region()->base(), m.region()->size(), 4096, go);
  absl::Status s = m.engine()->Run(m.source.get());
  if (!s.ok()) {
    // The guest's threads wait on faults nobody will serve now: unregistering (the engine's
    // destructor) wakes them, so the test fails with the engine's error instead of hanging.
    m.source->Stop();
    m.dest.engine.reset();
    guest.Join();
    FAIL() << "the migration failed: " << s;
  }
  guest.Join();
  EXPECT_EQ(m.engine()->remaining_pages(), 0u);
  const EngineCounters& c = m.engine()->counters();
  EXPECT_EQ(c.urgent_pages + c.bulk_pages + c.zero_pages, m.region()->size() / 4096);
  EXPECT_EQ(src.tcp->CountMismatches(m.region()->base()), 0u) << "pages differ from the source";
  const RdmaTransportStats& st = m.source->stats();
  std::printf(
      "%s over %s: urgent %llu bulk %llu zero %llu faults %llu; reads urgent %llu "
      "bulk %llu; crc mismatches %llu, failed completions %llu, "
      "reconnects %d; fault latency %s\n",
      RegionKindName(kind), m.source->device_name().c_str(),
      (unsigned long long)c.urgent_pages.load(), (unsigned long long)c.bulk_pages.load(),
      (unsigned long long)c.zero_pages.load(), (unsigned long long)c.faults.load(),
      (unsigned long long)st.urgent_reads.load(), (unsigned long long)st.bulk_reads.load(),
      (unsigned long long)st.crc_mismatches.load(),
      (unsigned long long)st.failed_completions.load(), m.source->reconnects(),
      m.engine()->fault_stats().Overall().Summary().c_str());
}

class RdmaMigration : public ::testing::TestWithParam<RegionKind> {};

TEST_P(RdmaMigration, AllPagesArriveWhileTheGuestRunsAndMatch) {
  SKIP_WITHOUT_RDMA();
  const RegionKind kind = GetParam();
  absl::StatusOr<Source> src = StartSource(32u << 20);
  ASSERT_TRUE(src.ok()) << src.status();
  EngineOptions eo;
  eo.pull_start_delay = absl::Milliseconds(300);  // faults first: the urgent path is exercised
  absl::StatusOr<Migration> m = MakeMigration(kind, *src, src->options(), eo);
  ASSERT_TRUE(m.ok()) << m.status();
  RunWithGuest(kind, {}, *src, *m);
  if (::testing::Test::HasFatalFailure()) return;
  const RdmaTransportStats& st = m->source->stats();
  EXPECT_GT(st.urgent_reads.load(), 0u);
  EXPECT_GT(st.bulk_reads.load(), 0u);
  EXPECT_EQ(st.crc_mismatches.load(), 0u);
  EXPECT_GT(m->engine()->counters().zero_pages.load(), 0u) << "zero pages reported as zeros";
  EXPECT_EQ(src->rdma->connections(), 1);
}

INSTANTIATE_TEST_SUITE_P(Kinds, RdmaMigration,
                         ::testing::Values(RegionKind::kAnonymous, RegionKind::kMemfd),
                         [](const auto& info) { return std::string(RegionKindName(info.param)); });

// Bulk pages whose bytes differ from the source's CRC (a flipped byte after the READ) are
// handed back and fetched again: the migration still ends with every page right.
TEST(RdmaTransport, CrcMismatchesAreFetchedAgain) {
  SKIP_WITHOUT_RDMA();
  absl::StatusOr<Source> src = StartSource(16u << 20);
  ASSERT_TRUE(src.ok()) << src.status();
  RdmaSourceOptions ro = src->options();
  ro.test_corrupt_every_nth_batch = 3;
  absl::StatusOr<Migration> m = MakeMigration(RegionKind::kMemfd, *src, ro, {});
  ASSERT_TRUE(m.ok()) << m.status();
  RunWithGuest(RegionKind::kMemfd, ro, *src, *m);
  if (::testing::Test::HasFatalFailure()) return;
  EXPECT_GT(m->source->stats().crc_mismatches.load(), 0u);
  EXPECT_GT(m->engine()->counters().corrupt_pages.load(), 0u);
}

// A failed work completion on the urgent QP: the page goes back to absent, the transport
// reconnects (new QPs), the fault is asked again and the migration completes.
TEST(RdmaTransport, FailedCompletionReconnectsAndCompletes) {
  SKIP_WITHOUT_RDMA();
  absl::StatusOr<Source> src = StartSource(16u << 20);
  ASSERT_TRUE(src.ok()) << src.status();
  RdmaSourceOptions ro = src->options();
  ro.test_fail_urgent_reads = 2;
  EngineOptions eo;
  eo.pull_start_delay = absl::Milliseconds(300);
  eo.reconnect_deadline = absl::Seconds(20);
  absl::StatusOr<Migration> m = MakeMigration(RegionKind::kMemfd, *src, ro, eo);
  ASSERT_TRUE(m.ok()) << m.status();
  RunWithGuest(RegionKind::kMemfd, ro, *src, *m);
  if (::testing::Test::HasFatalFailure()) return;
  EXPECT_EQ(m->source->stats().failed_completions.load(), 2u);
  EXPECT_EQ(m->source->reconnects(), 2);
  EXPECT_EQ(src->rdma->connections(), 3);
}

// Without a reconnect: a failed READ delivers nothing (the page stays requested) and the
// channel fails — a network error — with a message naming the page and the completion status.
TEST(RdmaTransport, FailedCompletionIsReportedAndNothingIsPlaced) {
  SKIP_WITHOUT_RDMA();
  absl::StatusOr<Source> src = StartSource(4u << 20);
  ASSERT_TRUE(src.ok()) << src.status();
  RdmaSourceOptions ro = src->options();
  ro.test_fail_urgent_reads = 1;
  auto source = RdmaPageSource::Connect(ro);
  ASSERT_TRUE(source.ok()) << source.status();
  RecordingSink sink(1024);
  ASSERT_TRUE((*source)->Start(&sink).ok());
  const uint64_t page = 77;
  ASSERT_TRUE((*source)->RequestUrgent(0, page).ok());
  ASSERT_TRUE(sink.WaitUntil([&] { return sink.failed_.has_value(); }));
  (*source)->Stop();
  EXPECT_EQ(sink.delivered(), 0u);
  const SourceError err = *sink.failed_;
  EXPECT_EQ(err.kind, SourceError::Kind::kNetwork);
  EXPECT_EQ(err.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(err.status.message().find("RDMA READ of page 77"), absl::string_view::npos)
      << err.status;
  EXPECT_NE(err.status.message().find("remote"), absl::string_view::npos)
      << "names the completion status: " << err.status;
}

// Urgent and bulk reads deliver the source's bytes, zero pages marked, every request answered.
TEST(RdmaTransport, DeliversExactBytes) {
  SKIP_WITHOUT_RDMA();
  absl::StatusOr<Source> src = StartSource(4u << 20);
  ASSERT_TRUE(src.ok()) << src.status();
  auto source = RdmaPageSource::Connect(src->options());
  ASSERT_TRUE(source.ok()) << source.status();
  RecordingSink sink(1024);
  ASSERT_TRUE((*source)->Start(&sink).ok());
  ASSERT_TRUE((*source)->RequestUrgent(0, 5).ok());
  ASSERT_TRUE((*source)->RequestUrgent(0, 900).ok());
  for (uint64_t first = 0; first < 1024; first += 256) {
    ASSERT_TRUE((*source)->RequestBulk(0, 0, first, 256).ok());
  }
  ASSERT_TRUE(sink.WaitUntil([&] { return sink.bulk_done_[0] == 4 && sink.got_.size() == 1026; }));
  (*source)->Stop();
  EXPECT_FALSE(sink.failed_.has_value()) << sink.failed_->status;
  EXPECT_TRUE(sink.rejected_.empty());
  std::set<uint64_t> bulk_pages;
  uint64_t zeros = 0;
  for (const RecordingSink::Got& g : sink.got()) {
    if (g.urgency == Urgency::kBulk) bulk_pages.insert(g.page);
    if (g.zero) {
      ++zeros;
      EXPECT_TRUE(IsZeroPage(src->tcp->base() + g.page * 4096, 4096)) << g.page;
      continue;
    }
    ASSERT_EQ(memcmp(sink.bytes(g.urgency, g.page), src->tcp->base() + g.page * 4096, 4096), 0)
        << "page " << g.page;
  }
  EXPECT_EQ(bulk_pages.size(), 1024u);
  EXPECT_GT(zeros, 0u);
  // Too large for a staging slot, and out of range: refused at once.
  EXPECT_FALSE((*source)->RequestBulk(0, 0, 0, 1025).ok());
  EXPECT_FALSE((*source)->RequestUrgent(0, 1u << 20).ok());
}

TEST(RdmaTransport, WrongTokenRefusedBeforeAnyKeyIsSent) {
  SKIP_WITHOUT_RDMA();
  absl::StatusOr<Source> src = StartSource(1u << 20);
  ASSERT_TRUE(src.ok()) << src.status();
  RdmaSourceOptions ro = src->options();
  ro.control.token[3] ^= 0x10;
  auto source = RdmaPageSource::Connect(ro);
  ASSERT_FALSE(source.ok());
  EXPECT_EQ(source.status().code(), absl::StatusCode::kPermissionDenied) << source.status();
  EXPECT_EQ(src->rdma->connections(), 0);
}

TEST(RdmaTransport, UnknownDeviceNamesTheDevicesFound) {
  SKIP_WITHOUT_RDMA();
  RdmaDeviceOptions o;
  o.device = "no-such-device";
  auto d = RdmaDevice::Open(o);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find(ListRdmaDevices()[0]), absl::string_view::npos) << d.status();
}

}  // namespace
}  // namespace faultline
