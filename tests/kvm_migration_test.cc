// End to end: a real KVM guest (the reference VMM, /dev/kvm) migrated with post-copy through
// faultline — source VMM, faultline and destination VMM each in their own process, talking
// over the page server's TCP and the hand-off Unix socket — then every page verified.
#include <cstdlib>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "cli/demo.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

// What every migration here shares: a 64 MiB guest, 512 touches per phase, and with
// `kill_engine_at` the binary that takes over from the killed engine.
DemoOptions GuestOptions(const std::string& ram, uint32_t vcpus, double kill_engine_at) {
  DemoOptions o;
  o.ram_size = 64ull << 20;
  o.dest_backing = *ParseMemoryKind(ram);
  o.vcpus = vcpus;
  o.touches = 512;
  o.kill_engine_at = kill_engine_at;
  if (kill_engine_at > 0) {
    o.restart_binary =
        absl::StrCat(getenv("TEST_SRCDIR"), "/", getenv("TEST_WORKSPACE"), "/cli/faultline");
  }
  return o;
}

// Every data page arrived intact and holds what the guest wrote on the source; the guest
// itself never read a wrong word.
void ExpectEveryPageVerified(const DemoReport& r) {
  EXPECT_GT(r.verified_pages, 15000u);
  EXPECT_EQ(r.mismatches, 0u);
  EXPECT_EQ(r.dirty_pattern_pages, r.verified_pages);
  EXPECT_EQ(r.guest_bad, 0u);
}

class KvmMigration : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!DemoAvailable(&why)) GTEST_SKIP() << "no real KVM guest here: " << why;
  }
  DemoReport Migrate(const std::string& ram, uint32_t vcpus, double kill_engine_at = 0) {
    DemoOptions o = GuestOptions(ram, vcpus, kill_engine_at);
    if (kill_engine_at > 0) {
      // The guest faults on memory nobody pulls in the background: the kill lands while vCPU
      // faults are in flight.
      o.engine.pull_start_delay = absl::Seconds(6);
    }
    // The guest faults before the background pull may take everything (a loaded machine
    // can delay the vCPU threads' first run).
    if (kill_engine_at == 0) o.engine.pull_start_delay = absl::Seconds(3);
    absl::StatusOr<DemoReport> r = RunDemo(o);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    std::printf("%s", DemoReportTable(*r).c_str());
    ExpectEveryPageVerified(*r);
    // The guest ran on the destination while its memory arrived: vCPU faults were served.
    // (With a restart these are the second engine's figures: the guest may have faulted only
    // on the first one's.)
    if (kill_engine_at == 0) {
      EXPECT_GT(r->engine.value("faults", 0ull), 0u);
      EXPECT_GT(r->engine.value("urgent_pages", 0ull), 0u);
    }
    // Every page placed once — by the engine that finished, or before by the one killed.
    uint64_t kept = 0;
    if (r->engine.contains("resumed") && r->engine["resumed"].is_object()) {
      kept =
          r->engine["resumed"].value("present", 0ull) + r->engine["resumed"].value("landed", 0ull);
    }
    EXPECT_EQ(r->engine.value("urgent_pages", 0ull) + r->engine.value("bulk_pages", 0ull) +
                  r->engine.value("zero_pages", 0ull) + kept,
              r->engine.value("pages", 0ull));
    // Every vCPU ran touch phases on the destination while its memory arrived. (Not all
    // three: where the guest runs fast next to its VMM — nested under TCG, a sanitizer build —
    // the first phase may finish on the source before the pause.)
    EXPECT_GE(r->phases.size(), 1u * vcpus);
    return *r;
  }
};

TEST_F(KvmMigration, MemfdRam) { Migrate("memfd", 1); }

TEST_F(KvmMigration, AnonymousRam) { Migrate("anon", 1); }

TEST_F(KvmMigration, TwoVcpusFaultConcurrently) {
  DemoReport r = Migrate("memfd", 2);
  // Faults came from both vCPU threads (they start on the same code and page-table pages,
  // then touch different pages with their own seeds).
  ASSERT_TRUE(r.engine.contains("fault_latency_per_thread"));
  EXPECT_GE(r.engine["fault_latency_per_thread"].size(), 2u) << r.engine.dump();
  std::printf("duplicate faults (a page already requested by the other vCPU): %llu\n",
              static_cast<unsigned long long>(r.engine.value("duplicate_faults", 0ull)));
}

TEST_F(KvmMigration, EngineKilledMidMigrationIsReplacedTheGuestNeverNotices) {
  // faultline is SIGKILLed with 3% of the pages present, while the vCPU runs and faults (the
  // background pull is held back); a new `faultline serve` gets the same uffd from the VMM and
  // finishes. The guest checks every word it reads, and every page is compared with the
  // source afterwards (Migrate).
  for (const char* ram : {"memfd", "anon"}) {
    SCOPED_TRACE(ram);
    DemoReport r = Migrate(ram, 1, /*kill_engine_at=*/0.03);
    EXPECT_TRUE(r.engine_restarted);
    ASSERT_TRUE(r.engine.contains("resumed") && r.engine["resumed"].is_object()) << r.engine.dump();
    EXPECT_GE(r.engine["resumed"].value("present", 0ull), r.killed_at_pages);
  }
}

// Warm-up: the guest keeps rewriting 10 % of its memory while the destination pulls it in
// rounds (KVM's dirty log on the source); the source pauses it at the final round, the
// destination resumes it once that round is dropped. Every page must match the source.
// `throttle_max` > 0: every round counts as not shrinking, so the engine asks the source to
// slow the guest down (20 %, 30 %, … up to it) before it switches.
DemoReport WarmMigrate(const std::string& ram, uint32_t vcpus, double kill_engine_at = 0,
                       uint32_t throttle_max = 0) {
  DemoOptions o = GuestOptions(ram, vcpus, kill_engine_at);
  o.churn_permille = 100;
  o.engine.warmup.enabled = true;
  if (throttle_max > 0) {
    o.engine.warmup.shrink = 0;
    o.engine.warmup.converge_pages = 0;
    o.engine.warmup.throttle_max = throttle_max;
  }
  if (kill_engine_at > 0) {
    // Slow enough that the kill lands during the first round's pull.
    o.engine.warmup.rate_bytes_per_s = 32ull << 20;
  }
  absl::StatusOr<DemoReport> r = RunDemo(o);
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return {};
  std::printf("%s", DemoReportTable(*r).c_str());
  ExpectEveryPageVerified(*r);
  EXPECT_GT(r->warmup_seconds, 0);
  const nlohmann::json& w = r->engine["warmup"];
  EXPECT_TRUE(w.is_object()) << r->engine.dump();
  if (!w.is_object()) return *r;
  EXPECT_TRUE(w.value("switched", false));
  EXPECT_EQ(w.value("faults_before_switch", 1ull), 0u);  // nothing ran here before the switch
  const nlohmann::json& rounds = w["rounds"];
  EXPECT_GE(rounds.size(), 1u);
  if (!rounds.empty()) EXPECT_TRUE(rounds.back().value("final", false));
  EXPECT_GE(r->phases.size(), 1u * vcpus);  // the touch phases ran here, after the switch
  return *r;
}

TEST_F(KvmMigration, WarmUpWithAChurningGuestEveryPageIdentical) {
  DemoReport r = WarmMigrate("memfd", 1);
  ASSERT_TRUE(r.engine.contains("warmup"));
  uint64_t evicted = 0;
  for (const auto& rd : r.engine["warmup"]["rounds"]) evicted += rd.value("evicted", 0ull);
  EXPECT_GT(evicted, 0u) << "no page the guest rewrote was ever dropped: nothing was tested";
}

TEST_F(KvmMigration, WarmUpTwoVcpus) { WarmMigrate("memfd", 2); }

// Auto-converge with the reference VMM: its KVM dirty-log tracker pauses the whole VM for the
// asked share of its time (qemu-integration/vmm/vm_throttle.h) and lifts that before the
// final stop. Every round asks for more, 20 % then 30 %, then the engine switches; no round
// may say the source cannot throttle, and every page still matches. One vCPU: with two, the
// nested-SVM VM under TCG that runs this suite on hosts without KVM once stopped taking
// interrupts on its vCPU 0 for good (2026-12-05) under the pause/resume kicks.
TEST_F(KvmMigration, WarmUpThrottlesTheGuestAndEveryPageIdentical) {
  DemoReport r = WarmMigrate("memfd", 1, /*kill_engine_at=*/0, /*throttle_max=*/30);
  ASSERT_TRUE(r.engine.contains("warmup"));
  std::vector<uint32_t> asked;
  uint64_t last_throttled_round_pages = 0;
  for (const auto& rd : r.engine["warmup"]["rounds"]) {
    EXPECT_FALSE(rd.value("no_throttle", false)) << rd.dump();
    if (!rd.value("final", false) && rd.value("throttle", 0u) > 0) {
      asked.push_back(rd.value("throttle", 0u));
      last_throttled_round_pages = rd.value("pages", 0ull);
    }
  }
  if (asked.size() == 1) {
    // A round in which the guest wrote nothing has converged (converge_pages 0), so warm-up
    // ends before a second step: seen once under ASan on a loaded host (the guest's vCPU got
    // no time during a 126 ms round). Only that may stop the steps at 20 %.
    EXPECT_EQ(asked[0], 20u) << r.engine["warmup"].dump();
    EXPECT_EQ(last_throttled_round_pages, 0u)
        << "warm-up stopped after one step though the guest still wrote: "
        << r.engine["warmup"].dump();
  } else {
    EXPECT_EQ(asked, (std::vector<uint32_t>{20, 30})) << r.engine["warmup"].dump();
  }
}

TEST_F(KvmMigration, WarmUpEngineKilledDuringWarmUp) {
  DemoReport r = WarmMigrate("memfd", 1, /*kill_engine_at=*/0.3);
  EXPECT_TRUE(r.engine_restarted);
}

TEST_F(KvmMigration, WarmUpIntoAnonymousRamIsRefused) {
  DemoOptions o;
  o.ram_size = 16ull << 20;
  o.dest_backing = MemoryKind::kAnonymous;
  o.engine.warmup.enabled = true;
  absl::StatusOr<DemoReport> r = RunDemo(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("anonymous"), std::string::npos) << r.status();
}

TEST_F(KvmMigration, GuestMemfdRamIsRefusedNamingTheKernelSeries) {
  DemoOptions o;
  o.ram_size = 16ull << 20;
  o.dest_backing = MemoryKind::kGuestMemfd;
  absl::StatusOr<DemoReport> r = RunDemo(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented) << r.status();
  EXPECT_NE(r.status().message().find("kernel/"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace faultline
