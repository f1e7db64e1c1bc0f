// `faultline demo`, the report: the guest's phase lines and the table.
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/demo_internal.h"
#include "engine/latency_histogram.h"

namespace faultline {
namespace demo_internal {

bool ParsePhase(const std::string& side, const std::string& line, GuestPhase* p) {
  if (line.rfind("FLT cpu=", 0) != 0 || line.find(" phase=") == std::string::npos ||
      line.find(" touches=") == std::string::npos) {
    return false;  // not a touch phase (dirty, churn)
  }
  p->side = side;
  for (absl::string_view kv : absl::StrSplit(line, ' ')) {
    std::pair<std::string, std::string> f = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    uint64_t v = 0;
    (void)absl::SimpleAtoi(f.second, &v);
    if (f.first == "cpu")
      p->cpu = static_cast<int>(v);
    else if (f.first == "phase")
      p->phase = f.second;
    else if (f.first == "touches")
      p->touches = v;
    else if (f.first == "cycles_p50")
      p->cycles_p50 = v;
    else if (f.first == "cycles_p99")
      p->cycles_p99 = v;
    else if (f.first == "cycles_max")
      p->cycles_max = v;
    else if (f.first == "slow")
      p->slow = v;
    else if (f.first == "bad")
      p->bad = v;
    else if (f.first == "cycles_total")
      p->cycles_total = v;
  }
  return p->phase != "dirty";
}

uint64_t HostTscKhz() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("cpu MHz", 0) == 0) {
      double mhz = 0;
      if (absl::SimpleAtod(line.substr(line.find(':') + 1), &mhz)) {
        return static_cast<uint64_t>(mhz * 1000);
      }
      break;
    }
  }
  return 0;
}

}  // namespace demo_internal

namespace {

void Report(std::string* out, const std::string& k, const std::string& v) {
  absl::StrAppendFormat(out, "  %-30s %s\n", k, v);
}

std::string Micros(uint64_t cycles, uint64_t khz) {
  if (khz == 0) return absl::StrCat(cycles, " cycles");
  return FormatNanos(cycles * 1'000'000 / khz);
}

}  // namespace

std::string DemoReportTable(const DemoReport& r) {
  std::string s;
  const nlohmann::json& e = r.engine;
  auto u = [&](const char* k) { return e.value(k, uint64_t{0}); };
  Report(&s, "downtime (pause → resume)",
         r.warmup_seconds > 0
             ? absl::StrFormat("%.1f ms (%.1f ms until the final round was dropped here)",
                               r.downtime_ms, r.final_round_ms)
             : absl::StrFormat("%.1f ms", r.downtime_ms));
  if (r.warmup_seconds > 0) {
    Report(&s, "total (warm-up start → all present)", absl::StrFormat("%.2f s", r.total_seconds));
    Report(&s, "warm-up (guest running on the source)",
           absl::StrFormat("%.2f s", r.warmup_seconds));
    Report(&s, "post-copy (pause → all present)", absl::StrFormat("%.2f s", r.postcopy_seconds));
    if (e.contains("warmup") && e["warmup"].is_object()) {
      const nlohmann::json& w = e["warmup"];
      std::string rounds;
      for (const nlohmann::json& rd : w.value("rounds", nlohmann::json::array())) {
        const uint32_t throttle = rd.value("throttle", 0u);
        absl::StrAppendFormat(
            &rounds, "%s%d%s", rounds.empty() ? "" : ", ", rd.value("pages", uint64_t{0}),
            !rd.value("final", false)
                ? (throttle > 0 ? absl::StrFormat(" (then throttled %d %%)", throttle)
                   : rd.value("no_throttle", false) ? std::string(" (source cannot throttle)")
                                                    : std::string())
            : rd.value("final_copied", false)
                ? absl::StrFormat(" (final, fetched before the resume in %.1f ms)",
                                  rd.value("final_copy_ms", 0.0))
                : std::string(" (final)"));
      }
      Report(&s, "warm-up rounds: pages rewritten", rounds);
      Report(&s, "faults after the switch",
             absl::StrFormat("%d", w.value("faults_after_switch", uint64_t{0})));
    }
  } else {
    Report(&s, "total (pause → all present)", absl::StrFormat("%.2f s", r.total_seconds));
  }
  Report(&s, "pages urgent / bulk / zero",
         absl::StrFormat("%d / %d / %d", u("urgent_pages"), u("bulk_pages"), u("zero_pages")));
  Report(&s, "vCPU faults (duplicates)",
         absl::StrFormat("%d (%d)", u("faults"), u("duplicate_faults")));
  if (r.missing_exits > 0) {
    Report(&s, "guest_memfd missing-page exits", absl::StrFormat("%d", r.missing_exits));
  }
  if (e.contains("fault_latency") && e["fault_latency"].value("count", 0) > 0) {
    const nlohmann::json& h = e["fault_latency"];
    Report(&s, "fault latency (faultline)",
           absl::StrFormat("p50 %s  p99 %s  max %s", FormatNanos(h.value("p50_ns", 0ull)),
                           FormatNanos(h.value("p99_ns", 0ull)),
                           FormatNanos(h.value("max_ns", 0ull))));
  }
  for (const GuestPhase& p : r.phases) {
    Report(&s, absl::StrFormat("guest cpu%d %s touches", p.cpu, p.phase),
           absl::StrFormat("%d: p50 ≤%s  p99 ≤%s  max %s  (%d slow)", p.touches,
                           Micros(p.cycles_p50, r.tsc_khz), Micros(p.cycles_p99, r.tsc_khz),
                           Micros(p.cycles_max, r.tsc_khz), p.slow));
  }
  if (r.engine_restarted) {
    const nlohmann::json& rs =
        e.contains("resumed") && e["resumed"].is_object() ? e["resumed"] : nlohmann::json::object();
    Report(&s, "engine killed and replaced",
           absl::StrFormat("at %d pages; the new engine kept %d present, mapped %d landed, "
                           "fetched %d again",
                           r.killed_at_pages, rs.value("present", uint64_t{0}),
                           rs.value("landed", uint64_t{0}),
                           rs.value("refetch", uint64_t{0}) + rs.value("requeued", uint64_t{0})));
  }
  Report(&s, "guest run after resume",
         absl::StrFormat("%.2f s, %d bad reads", r.guest_seconds, r.guest_bad));
  Report(&s, "guest memory verified",
         absl::StrFormat("%d pages, %d mismatches (%d hold the guest's dirty pattern)",
                         r.verified_pages, r.mismatches, r.dirty_pattern_pages));
  Report(&s, "boot area (image, stacks)",
         absl::StrFormat("%d pages, %d rewritten by the running guest since resume",
                         r.boot_area_pages, r.boot_area_changed));
  return s;
}

}  // namespace faultline
