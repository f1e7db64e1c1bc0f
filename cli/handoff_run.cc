#include "cli/handoff_run.h"

#include <openssl/sha.h>
#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "base/errno_status.h"
#include "engine/state_file.h"

namespace faultline {
namespace {

// Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot. With the
// pid it names one process for good (a pid alone may be reused).
std::string ProcessStartTime(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string stat = ss.str();
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return "?";
  std::istringstream rest(stat.substr(paren + 2));  // after ") "
  std::string field;
  for (int i = 3; i <= 22 && rest >> field; ++i) {
  }
  return field;
}

// What a state file must match to be adopted: the same VMM process, the same guest memory
// (addresses in the VMM, sizes, page sizes, kinds, backing files by inode). A state file of
// the same token written for another VMM — a restarted one, whose memory is new and empty —
// says nothing about this memory and is refused.
std::string StateIdentity(const HandoffRequest& req,
                          const std::vector<std::unique_ptr<GuestRegion>>& regions) {
  std::string id =
      absl::StrCat("faultline-state v1\nvmm pid ", req.peer_pid, " start ",
                   ProcessStartTime(req.peer_pid), " format ", HandoffFormatName(req.format), "\n");
  for (size_t i = 0; i < regions.size(); ++i) {
    const GuestRegion& r = *regions[i];
    struct stat st = {};
    if (r.fd() >= 0) fstat(r.fd(), &st);
    absl::StrAppend(&id, "region ", i, " ", r.name(), " ", MemoryKindName(r.kind()), " 0x",
                    absl::Hex(reinterpret_cast<uintptr_t>(r.base())), " ", r.size(), " ",
                    r.page_size(), " offset ", req.regions[i].offset, " backing ",
                    static_cast<uint64_t>(st.st_dev), ":", static_cast<uint64_t>(st.st_ino), "\n");
  }
  return id;
}

// Creates the state directory (mode 0700) if need be: OK (with no file yet) or why not.
absl::StatusOr<std::unique_ptr<StateFile>> MakeStateDir(const std::string& dir) {
  if (mkdir(dir.c_str(), 0700) == 0 || errno == EEXIST) return std::unique_ptr<StateFile>();
  return ErrnoStatus(absl::StrCat("state directory ", dir, " (--state_dir)"));
}

nlohmann::json Hist(const LatencyHistogram& h) {
  return {{"count", h.count()},
          {"mean_ns", static_cast<uint64_t>(h.mean())},
          {"p50_ns", h.Percentile(0.5)},
          {"p90_ns", h.Percentile(0.9)},
          {"p99_ns", h.Percentile(0.99)},
          {"max_ns", h.max()},
          // QEMU's postcopy-latency-dist buckets: [2^N µs, 2^(N+1) µs).
          {"log2_us_dist", h.log2_us()}};
}

// "12.3 ms"
std::string Ms(absl::Duration d) {
  const int64_t us = absl::ToInt64Microseconds(d);
  return absl::StrCat(us / 1000, ".", us % 1000 / 100, " ms");
}

absl::StatusOr<std::vector<std::unique_ptr<GuestRegion>>> AdoptRegions(HandoffRequest& req) {
  std::vector<std::unique_ptr<GuestRegion>> out;
  const bool minor = true;  // faultline-format VMMs register MISSING|MINOR (see handoff.h)
  for (HandoffRegion& hr : req.regions) {
    absl::StatusOr<std::unique_ptr<GuestRegion>> r = GuestRegion::Adopt(
        hr.name, hr.kind, reinterpret_cast<uint8_t*>(hr.host_addr), hr.length, hr.page_size,
        std::move(hr.fd), hr.offset, minor && req.format == HandoffFormat::kFaultline);
    if (!r.ok()) return r.status();
    out.push_back(std::move(*r));
  }
  return out;
}

}  // namespace

std::string StateFilePath(const std::string& dir, const Token& token) {
  // SHA-256 of a label and the token: names the migration without revealing its secret.
  std::string in = "faultline-state-name";
  in.append(reinterpret_cast<const char*>(token.data()), token.size());
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(in.data()), in.size(), digest);
  return absl::StrCat(
      dir, "/",
      absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), 16)),
      ".state");
}

nlohmann::json EngineStatsJson(const Engine& e, double seconds) {
  const EngineCounters& c = e.counters();
  nlohmann::json per_thread = nlohmann::json::object();
  for (const auto& [tid, h] : e.fault_stats().PerThread())
    per_thread[std::to_string(tid)] = Hist(h);
  nlohmann::json by_kind = nlohmann::json::object();
  const std::array<LatencyHistogram, kFaultKinds> kinds = e.fault_stats().ByKind();
  for (int k = 0; k < kFaultKinds; ++k) {
    if (kinds[k].count() > 0) by_kind[FaultKindName(static_cast<FaultKind>(k))] = Hist(kinds[k]);
  }
  nlohmann::json resumed = nullptr;
  if (e.adopted()) {
    const AdoptedStates& a = e.adopted_states();
    resumed = {{"present", a.present},
               {"landed", a.landed},
               {"refetch", a.refetch},
               {"requeued", a.requeued},
               {"discarded", a.discarded}};
  }
  nlohmann::json warmup = nullptr;
  if (e.warmup() != nullptr) {
    nlohmann::json rounds = nlohmann::json::array();
    for (const WarmUpRound& r : e.warmup()->rounds()) {
      rounds.push_back({{"round", r.round},
                        {"final", r.final},
                        {"pages", r.pages},
                        {"evicted", r.evicted},
                        {"pulled_ms", r.pulled_ns / 1e6},
                        {"apply_ms", r.apply_ns / 1e6},
                        {"answer_ms", r.answer_ns / 1e6},
                        {"drop_ms", r.drop_ns / 1e6},
                        {"throttle", r.throttle},
                        {"no_throttle", r.no_throttle},
                        {"final_copied", r.final_copied},
                        {"final_copy_ms", r.final_copy_ns / 1e6}});
    }
    warmup = {{"rounds", rounds},
              {"switched", e.warmup()->switched()},
              {"faults_before_switch", e.faults_before_switch()},
              {"faults_after_switch", c.faults.load() - e.faults_before_switch()}};
  }
  return {{"pages", e.total_pages()},
          {"resumed", resumed},
          {"warmup", warmup},
          {"stale_faults", c.stale_faults.load()},
          {"stale_pages_dropped", e.stale_pages_dropped()},
          {"urgent_pages", c.urgent_pages.load()},
          {"bulk_pages", c.bulk_pages.load()},
          {"zero_pages", c.zero_pages.load()},
          {"bytes_received", c.bytes_received.load()},
          {"faults", c.faults.load()},
          {"minor_faults", c.minor_faults.load()},
          {"duplicate_faults", c.duplicate_faults.load()},
          {"urgent_requests", c.urgent_requests.load()},
          {"bulk_requests", c.bulk_requests.load()},
          {"corrupt_pages", c.corrupt_pages.load()},
          {"discarded_pages", c.discarded_pages.load()},
          {"eexist", e.placer_counters().eexist.load()},
          {"seconds", seconds},
          {"fault_latency", Hist(e.fault_stats().Overall())},
          {"fault_latency_per_thread", per_thread},
          {"fault_latency_by_kind", by_kind},
          {"engine_footprint_bytes", e.footprint_bytes()}};
}

absl::Status RunHandoff(HandoffSession& session, const HandoffRunOptions& opts,
                        nlohmann::json* stats) {
  HandoffRequest& req = session.request();
  // What the acknowledgement costs, step by step: with a version 2 hand-off the VMM's source
  // waits for it before it stops the guest, so it is time every migration pays.
  const absl::Time t_hello = absl::Now();
  std::string steps;
  absl::Time t_step = t_hello;
  auto step = [&](absl::string_view what) {
    const absl::Time now = absl::Now();
    absl::StrAppend(&steps, steps.empty() ? "" : ", ", what, " ", Ms(now - t_step));
    t_step = now;
  };
  auto refuse = [&](const absl::Status& s) {
    (void)session.Ack(s);
    return s;
  };
  absl::StatusOr<std::vector<std::unique_ptr<GuestRegion>>> regions = AdoptRegions(req);
  if (!regions.ok()) return refuse(regions.status());
  step("regions");
  std::vector<GuestRegion*> raw;
  std::vector<uint64_t> pages;
  for (auto& r : *regions) {
    raw.push_back(r.get());
    pages.push_back(r->pages());
  }

  // The page-state map of this migration, in a file that outlives this process.
  std::unique_ptr<StateFile> state;
  if (!opts.state_dir.empty()) {
    absl::StatusOr<std::unique_ptr<StateFile>> sf = MakeStateDir(opts.state_dir);
    if (sf.ok()) {
      sf = StateFile::Open(
          StateFilePath(opts.state_dir, opts.source.token), StateIdentity(req, *regions), pages,
          req.resume ? StateFile::Mode::kAdoptOnly : StateFile::Mode::kCreateOrAdopt);
    }
    if (sf.ok()) {
      state = std::move(*sf);
    } else if (!req.resume && (sf.status().code() == absl::StatusCode::kPermissionDenied ||
                               sf.status().code() == absl::StatusCode::kResourceExhausted)) {
      // No place to keep state (e.g. not root and the default /run/faultline): serve anyway;
      // only a restart of this engine would need the file.
      if (opts.log) {
        opts.log(absl::StrCat("warning: no page-state file (", sf.status().message(),
                              "); if this engine dies, the migration cannot be resumed"));
      }
    } else {
      // Another engine holds it, it belongs to another VMM, or a resume has nothing to resume.
      return refuse(sf.status());
    }
  } else if (req.resume) {
    return refuse(absl::FailedPreconditionError(
        "the VMM resumes a migration after its engine went away, but this faultline keeps no "
        "page-state file (--state_dir is empty): which pages are placed is unknown"));
  }
  step("state file");
  // A fresh state file is ours alone: drop it if we refuse the VMM.
  auto refuse_fresh = [&](const absl::Status& s) {
    if (state && !state->adopted()) state->Remove();
    return refuse(s);
  };

  Userfaultfd uffd = Userfaultfd::Adopt(std::move(req.uffd), req.uffd_features);
  EngineOptions eo = opts.engine;
  eo.register_ranges = !req.registered;
  bool hold_until_running = req.notify_running && req.start_on_listen &&
                            opts.bulk_hold_until_running > absl::ZeroDuration();
  if (hold_until_running) {
    eo.bulk_hold_at_start = std::max(eo.bulk_hold_at_start, opts.bulk_hold_until_running);
  }
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(raw, std::move(uffd), eo, state.get());
  if (!engine.ok()) return refuse_fresh(engine.status());
  step("engine");
  if ((*engine)->adopted() && opts.log) {
    const AdoptedStates& a = (*engine)->adopted_states();
    opts.log(absl::StrCat("resuming the migration of a previous engine (pid ",
                          state->previous_pid(), ") from ", state->path(), ": ", a.present,
                          " pages present, ", a.landed, " landed (mapped, not fetched), ",
                          a.refetch, " half-placed and ", a.requeued,
                          " requested pages fetched again, ", a.discarded, " discarded"));
  }

  absl::Time t0 = absl::Now();
  if ((*engine)->adopted() && (*engine)->remaining_pages() == 0) {
    // The dead engine placed everything (and may have told the source DONE, so the source
    // may be gone): nothing to fetch, only the VMM to tell.
    if (absl::Status s = session.Ack(absl::OkStatus()); !s.ok()) return s;
    nlohmann::json st = EngineStatsJson(**engine, 0);
    (void)session.SendComplete(absl::OkStatus(), st);
    state->Remove();
    if (stats) *stats = st;
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<PageSource>> source;
  if (opts.connect) {
    source = opts.connect(opts.source);
  } else {
    absl::StatusOr<std::unique_ptr<TcpPageSource>> tcp = TcpPageSource::Connect(opts.source);
    if (tcp.ok()) {
      source = std::unique_ptr<PageSource>(std::move(*tcp));
    } else {
      source = tcp.status();
    }
  }
  if (!source.ok()) {
    return refuse_fresh(absl::Status(
        source.status().code(),
        absl::StrCat("cannot reach the source page server: ", source.status().message())));
  }
  if (absl::Status s = (*engine)->CheckSourceTable((*source)->regions()); !s.ok()) {
    return refuse_fresh(s);
  }
  step("source");
  if (absl::Status s = session.Ack(absl::OkStatus()); !s.ok()) return s;
  step("ack");
  const std::string took = absl::StrCat(Ms(absl::Now() - t_hello), " (", steps, ")");

  if (opts.on_engine) opts.on_engine(engine->get());
  // Hand-off version 2, "start":"listen" (QEMU at post-copy ADVISE): the source still runs the
  // guest and changes its memory, so nothing is placed or fetched before the VMM's "listen".
  // Everything above (stale pages dropped, source reached) is done: the switch-over pays none
  // of it. No time limit: the VMM's connection says whether it is still there.
  // Unless the source serves live memory (warm-up: the source QEMU tracks its guest's writes,
  // vmm_dirty_tracker.h): then pages are placed now, and every page written after it was read
  // is dropped again before the source QEMU lets the guest run here (engine/warmup.h); the
  // VMM's "listen" is then not waited for.
  if (req.start_on_listen && (*source)->live()) {
    // Warm-up pulls while the guest still runs on the source: nothing to hold it for.
    hold_until_running = false;
    (*engine)->GuestRunning();
    if (opts.log) {
      opts.log(absl::StrCat("acknowledged in ", took,
                            "; the source is live: warming up before the switch-over"));
    }
  } else if (req.start_on_listen) {
    if (opts.log) {
      opts.log(absl::StrCat("acknowledged in ", took,
                            "; waiting for the VMM's \"listen\" (its switch-over)"));
    }
    absl::Status s = session.WaitListen([&] { return (*engine)->stopped(); });
    if (!s.ok()) {
      if (opts.on_engine) opts.on_engine(nullptr);
      // Stopped here (cancel, shutdown): tell a VMM that is still there. After its bye or with
      // its connection gone there is no one to tell.
      if (absl::IsCancelled(s)) (void)session.SendComplete(s, nullptr);
      if (state && !state->adopted()) state->Remove();  // nothing was placed
      if (stats) *stats = EngineStatsJson(**engine, 0);
      return s;
    }
    t0 = absl::Now();
  }
  // Progress every progress_every until the run ends. The wait ends with the run, not at the
  // next tick: "complete" (which the VMM's migration waits for) must not wait up to a whole
  // period for this thread — it did, and added 0-200 ms (100 on average) to every migration.
  absl::Notification ended;
  std::thread progress([&] {
    do {
      (void)session.SendProgress((*engine)->total_pages() - (*engine)->remaining_pages(),
                                 (*engine)->total_pages());
    } while (!ended.WaitForNotificationWithTimeout(opts.progress_every));
  });
  // The VMM's "running" ends the engine's hold on the background stream (the hold runs out on
  // its own otherwise). Nothing else is read from the VMM after "listen".
  std::atomic<int64_t> running_after_ns{-1};
  std::thread running;
  if (hold_until_running) {
    running = std::thread([&] {
      const absl::Status s = session.WaitRunning(t0 + opts.bulk_hold_until_running,
                                                 [&] { return ended.HasBeenNotified(); });
      if (s.ok()) {
        running_after_ns.store(absl::ToInt64Nanoseconds(absl::Now() - t0));
        (*engine)->GuestRunning();
      }
    });
  }
  absl::Status run = (*engine)->Run(source->get());
  ended.Notify();
  progress.join();
  nlohmann::json st = EngineStatsJson(**engine, absl::ToDoubleSeconds(absl::Now() - t0));
  // How long the VMM's switch-over took after "listen", as the engine saw it.
  if (const int64_t ns = running_after_ns.load(); ns >= 0) {
    st["running_after_listen_ms"] = static_cast<double>(ns) / 1e6;
  }
  if (opts.on_engine) opts.on_engine(nullptr);
  (void)session.SendComplete(run, st);
  // After "complete", which must not wait for it: a wait for "running" that is still on (the
  // run ended first) notices `ended` within kHandoffStopPoll.
  if (running.joinable()) running.join();
  // Only after "complete" went out: an engine that dies in between leaves a file whose pages
  // are all present, which a new engine adopts and completes at once. Removed before, a VMM
  // re-sending its uffd would meet a fresh map and have every page fetched again — into the
  // page cache of memory the guest has been writing. On failure the file stays for a resume.
  if (run.ok() && state) state->Remove();
  if (stats) *stats = st;
  return run;
}

}  // namespace faultline
