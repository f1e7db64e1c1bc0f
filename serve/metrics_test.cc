// The exposition text: well-formed (checked by Debian's promtool when installed — tools/setup.sh
// installs it), cumulative histograms whose +Inf bucket is the count, label values escaped.
#include "serve/metrics.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"

namespace faultline {
namespace {

std::vector<MigrationStatus> Sample() {
  MigrationStatus a;
  a.id = "vm-1";
  a.phase = MigrationPhase::kRunning;
  a.source = "10.0.0.1:7470";
  a.vmm = "qemu \"7.2\"\nx";  // escaped in labels
  a.registered = absl::FromUnixSeconds(1000);
  a.started = absl::FromUnixSeconds(1001);
  a.ended = absl::InfinitePast();
  a.pages_total = 1000;
  a.pages_present = 250;
  a.page_bytes = 1000 * 4096;
  a.urgent_bytes = 4096 * 10;
  a.bulk_bytes = 4096 * 200;
  a.faults = 12;
  for (uint64_t ns : {500u, 1500u, 40000u, 300000u, 300000u}) a.fault_latency.Record(ns);
  a.fault_latency_per_thread[17].Record(40000);
  MigrationStatus b;
  b.id = "vm-2";
  b.phase = MigrationPhase::kWaiting;
  b.registered = absl::FromUnixSeconds(1000);
  b.started = b.ended = absl::InfinitePast();
  return {a, b};
}

TEST(Metrics, HistogramsAreCumulativeAndEndInTheCount) {
  DaemonCounters d;
  d.handoffs_refused["bad_hello"] = 2;
  const std::string text = RenderMetrics(Sample(), d);
  EXPECT_NE(text.find("faultline_migration_fault_latency_seconds_bucket{migration=\"vm-1\","
                      "le=\"2e-06\"} 2\n"),
            std::string::npos)
      << text;  // 0.5 µs and 1.5 µs: bucket [1 µs, 2 µs) and below
  EXPECT_NE(text.find("faultline_migration_fault_latency_seconds_bucket{migration=\"vm-1\","
                      "le=\"0.000512\"} 5\n"),
            std::string::npos);
  EXPECT_NE(text.find("faultline_migration_fault_latency_seconds_bucket{migration=\"vm-1\","
                      "le=\"+Inf\"} 5\n"),
            std::string::npos);
  EXPECT_NE(text.find("faultline_migration_fault_latency_seconds_count{migration=\"vm-1\"} 5\n"),
            std::string::npos);
  EXPECT_NE(text.find("faultline_migration_phase{migration=\"vm-2\",phase=\"waiting\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("faultline_migration_data_remaining_bytes{migration=\"vm-1\"} 3072000\n"),
            std::string::npos);
  EXPECT_NE(text.find("vmm=\"qemu \\\"7.2\\\"\\nx\""), std::string::npos) << "escaped";
  EXPECT_NE(text.find("faultline_handoffs_refused_total{reason=\"bad_hello\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("faultline_migration_thread_fault_latency_seconds_count{migration=\"vm-1\","
                      "thread=\"17\"} 1\n"),
            std::string::npos);
}

TEST(Metrics, PromtoolAcceptsTheText) {
  if (system("command -v promtool >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "no promtool [setup]: tools/setup.sh installs Debian's prometheus";
  }
  const std::string path =
      std::string(getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp") + "/metrics.txt";
  std::ofstream(path) << RenderMetrics(Sample(), DaemonCounters{});
  FILE* p = popen(("promtool check metrics < " + path + " 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::stringstream out;
  char buf[512];
  while (fgets(buf, sizeof(buf), p)) out << buf;
  const int rc = pclose(p);
  EXPECT_EQ(rc, 0) << out.str();
  EXPECT_EQ(out.str(), "") << "promtool's lint findings";
}

}  // namespace
}  // namespace faultline
