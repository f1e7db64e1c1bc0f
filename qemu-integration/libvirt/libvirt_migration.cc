// `faultline migrate`: the driver (libvirt_migration.h). Events and the monitor passthrough
// it uses: libvirt_internal.h.
#include "qemu-integration/libvirt/libvirt_migration.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "qemu-integration/libvirt/domain_xml.h"
#include "qemu-integration/libvirt/libvirt_internal.h"
#include "qemu-integration/libvirt/migrate_compat.h"

namespace faultline {
namespace {

using libvirt_internal::Conn;
using libvirt_internal::Dom;
using libvirt_internal::DropWarmupConnection;
using libvirt_internal::EventLoop;
using libvirt_internal::GiveWarmupConnection;
using libvirt_internal::HasPagerCapability;
using libvirt_internal::Json;
using libvirt_internal::kCap;
using libvirt_internal::LastError;
using libvirt_internal::Monitor;
using libvirt_internal::PagerSeries;
using libvirt_internal::ParamsJson;
using libvirt_internal::QueryPagerSeries;
using libvirt_internal::Quiet;
using libvirt_internal::Registrations;
using libvirt_internal::SetPagerCapabilities;
using libvirt_internal::Shared;
using libvirt_internal::Watch;

int64_t Field(const Json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<int64_t>() : -1;
}

std::string MiB(int64_t bytes) { return absl::StrFormat("%.1f MiB", bytes / 1048576.0); }

}  // namespace

std::string ReportJson(const LibvirtMigrateReport& r) {
  Json j = {{"pager", r.pager},
            {"warmup", r.warmup},
            {"seconds", r.seconds},
            {"postcopy_at_seconds", r.postcopy_at},
            {"time_elapsed_ms", r.time_elapsed_ms},
            {"downtime_ms", r.downtime_ms},
            {"setup_time_ms", r.setup_time_ms},
            {"data_total_bytes", r.data_total},
            {"data_processed_bytes", r.data_processed},
            {"memory_total_bytes", r.memory_total},
            {"memory_processed_bytes", r.memory_processed},
            {"precopy_iterations", r.memory_iteration},
            {"postcopy_requests", r.postcopy_requests},
            {"dest_pager_capability", r.dest_pager_capability},
            {"events", r.events}};
  return j.dump(1);
}

absl::StatusOr<LibvirtMigrateReport> MigrateDomain(const LibvirtMigrateOptions& o) {
  if (o.domain.empty()) return absl::InvalidArgumentError("--domain is required");
  if (o.dest_uri.empty()) {
    return absl::InvalidArgumentError(
        "--dest_uri is required (the destination's libvirt, e.g. qemu+ssh://host2/system)");
  }
  if (virInitialize() < 0) return absl::InternalError("virInitialize failed");
  virSetErrorFunc(nullptr, Quiet);
  if (absl::Status s = EventLoop::RegisterOnce(); !s.ok()) return s;
  Shared shared;
  shared.start = absl::Now();
  shared.log = o.log;
  auto say = [&](const std::string& m) {
    if (o.log) o.log(m);
  };

  Conn src(virConnectOpen(o.source_uri.c_str()));
  if (!src) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect to the source libvirt '", o.source_uri, "': ", LastError()));
  }
  Conn dst(virConnectOpen(o.dest_uri.c_str()));
  if (!dst) {
    return absl::UnavailableError(absl::StrCat("cannot connect to the destination libvirt '",
                                               o.dest_uri, "': ", LastError()));
  }
  Dom dom(virDomainLookupByName(src.get(), o.domain.c_str()));
  if (!dom) {
    return absl::NotFoundError(
        absl::StrCat("no domain '", o.domain, "' on ", o.source_uri, ": ", LastError()));
  }
  if (virDomainIsActive(dom.get()) != 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("domain '", o.domain, "' is not running: nothing to live-migrate"));
  }
  if (Dom other(virDomainLookupByName(dst.get(), o.domain.c_str()));
      other && virDomainIsActive(other.get()) == 1) {
    return absl::AlreadyExistsError(
        absl::StrCat("a domain '", o.domain, "' is already running on ", o.dest_uri));
  }

  // Can this libvirt migrate this QEMU at all (migrate_compat.h)? Asked before anything moves.
  unsigned long libvirt_version = 0;  // NOLINT(runtime/int): libvirt's type
  if (virConnectGetLibVersion(src.get(), &libvirt_version) == 0) {
    if (absl::StatusOr<Json> v = Monitor(dom.get(), {{"execute", "query-version"}});
        v.ok() && v->contains("qemu")) {
      const Json& q = (*v)["qemu"];
      if (absl::Status s = CheckMigrateCompat(
              libvirt_version, {q.value("major", 0), q.value("minor", 0), q.value("micro", 0)});
          !s.ok()) {
        return s;
      }
    }
  }

  if (!o.warmup_socket.empty() && !o.pager) {
    return absl::InvalidArgumentError(
        "warm-up (--warmup_socket) needs the pager: it fills the destination's RAM from the "
        "source's while the guest still runs there");
  }
  // Pager checks and set-up, before anything moves.
  std::string dest_xml;
  PagerSeries series;
  if (o.pager) {
    char* xml = virDomainGetXMLDesc(dom.get(), VIR_DOMAIN_XML_MIGRATABLE);
    if (xml == nullptr) return absl::InternalError("virDomainGetXMLDesc: " + LastError());
    const std::string domain_xml = xml;
    free(xml);
    absl::StatusOr<PagerSeries> has = QueryPagerSeries(dom.get());
    if (!has.ok()) return has.status();
    series = *has;
    if (absl::Status s = CheckPagerRam(domain_xml, /*file_only=*/series.switchover_ack); !s.ok()) {
      return s;
    }
    if (!o.warmup_socket.empty() && !series.switchover_ack) {
      return absl::FailedPreconditionError(
          "warm-up through libvirt needs the domain's emulator to be QEMU 10.2 with faultline's "
          "series (build_qemu.sh --version=10.2): this QEMU has the 7.2 series, whose source "
          "cannot report its guest's writes to the pager");
    }
    absl::StatusOr<std::string> x =
        AddPagerCommandline(domain_xml, o.pager_socket, series.switchover_ack);
    if (!x.ok()) return x.status();
    dest_xml = *std::move(x);
    if (absl::Status s = SetPagerCapabilities(dom.get(), true, series.switchover_ack); !s.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("the source QEMU refused the pager capabilities: ", s.message()));
    }
    say(absl::StrCat("source: postcopy-ram, x-ignore-shared, ",
                     series.switchover_ack ? "return-path, switchover-ack, " : "", kCap,
                     " on (monitor passthrough); destination: the same as -global properties, "
                     "pager socket ",
                     o.pager_socket));
    if (!o.warmup_socket.empty()) {
      if (absl::Status s = GiveWarmupConnection(dom.get(), o.warmup_socket); !s.ok()) {
        (void)SetPagerCapabilities(dom.get(), false, series.switchover_ack);
        return s;
      }
      say(absl::StrCat("source: warm-up connection to ", o.warmup_socket,
                       " given to QEMU (its guest's writes go to faultline from the start)"));
    }
  }
  // Undoes the source's set-up when the migration ends before post-copy.
  auto undo_source = [&]() -> absl::Status {
    if (!o.pager) return absl::OkStatus();
    absl::Status s = o.warmup_socket.empty() ? absl::OkStatus() : DropWarmupConnection(dom.get());
    absl::Status c = SetPagerCapabilities(dom.get(), false, series.switchover_ack);
    return s.ok() ? c : s;
  };

  Watch src_watch{&shared, "source"}, dst_watch{&shared, "destination"};
  EventLoop loop;
  Registrations src_reg(src.get(), &src_watch, /*job_events=*/true);
  Registrations dst_reg(dst.get(), &dst_watch, /*job_events=*/false);
  if (!src_reg.ok() || !dst_reg.ok()) {
    (void)undo_source();
    return absl::InternalError("cannot register for libvirt's domain events: " + LastError());
  }

  virTypedParameterPtr params = nullptr;
  int nparams = 0, maxparams = 0;
  if (!o.migrate_uri.empty()) {
    virTypedParamsAddString(&params, &nparams, &maxparams, VIR_MIGRATE_PARAM_URI,
                            o.migrate_uri.c_str());
  }
  if (!dest_xml.empty()) {
    virTypedParamsAddString(&params, &nparams, &maxparams, VIR_MIGRATE_PARAM_DEST_XML,
                            dest_xml.c_str());
  }
  if (o.bandwidth_mib > 0) {
    virTypedParamsAddULLong(&params, &nparams, &maxparams, VIR_MIGRATE_PARAM_BANDWIDTH,
                            o.bandwidth_mib);
  }
  unsigned int flags = VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER | VIR_MIGRATE_POSTCOPY;
  if (o.persist_dest) flags |= VIR_MIGRATE_PERSIST_DEST;
  if (o.undefine_source) flags |= VIR_MIGRATE_UNDEFINE_SOURCE;

  say(absl::StrCat("migrating '", o.domain, "' ", o.source_uri, " -> ", o.dest_uri,
                   o.migrate_uri.empty() ? "" : absl::StrCat(" (data: ", o.migrate_uri, ")"),
                   !o.pager                  ? ", QEMU's own post-copy"
                   : o.warmup_socket.empty() ? ", post-copy through faultline"
                                             : ", warm-up then post-copy through faultline"));
  const absl::Time t0 = absl::Now();
  std::atomic<bool> done{false};
  int rc = 0;
  std::string migrate_error;
  std::thread migrator([&] {
    rc = virDomainMigrateToURI3(dom.get(), o.dest_uri.c_str(), params, nparams, flags);
    if (rc < 0) migrate_error = LastError();
    done.store(true);
    std::lock_guard<std::mutex> l(shared.mu);
    shared.cv.notify_all();
  });

  // Drive: progress, the switch to post-copy, the pre-copy timeout.
  bool asked_postcopy = false, aborted = false;
  std::string postcopy_refused;  // the last reason virDomainMigrateStartPostCopy failed
  absl::Time last_progress = t0;
  while (!done.load()) {
    {
      std::unique_lock<std::mutex> l(shared.mu);
      shared.cv.wait_for(l, std::chrono::milliseconds(200));
    }
    if (done.load()) break;
    bool in_postcopy, first_pass_done;
    {
      std::lock_guard<std::mutex> l(shared.mu);
      in_postcopy = shared.postcopy;
      first_pass_done = shared.iterations >= 1;
    }
    const absl::Duration elapsed = absl::Now() - t0;
    int type = 0;
    virTypedParameterPtr jp = nullptr;
    int jn = 0;
    Json job;
    if (virDomainGetJobStats(dom.get(), &type, &jp, &jn, 0) == 0) {
      job = ParamsJson(jp, jn);
      virTypedParamsFree(jp, jn);
    }
    const bool running = type == VIR_DOMAIN_JOB_UNBOUNDED || type == VIR_DOMAIN_JOB_BOUNDED;
    if (running && !in_postcopy && !asked_postcopy) {
      // Not before the first pass, even with the pager (whose QEMU switches by itself once
      // its small stream has converged): the destination checks its pager at ADVISE, the
      // first thing in the stream, and a missing pager must fail the migration while it is
      // still pre-copy — the source then simply keeps running the guest.
      const bool now =
          o.postcopy_after > absl::ZeroDuration() ? elapsed >= o.postcopy_after : first_pass_done;
      if (now) {
        // It can fail while the job is still setting up: try again on the next round. With
        // the pager, QEMU may have switched by itself already, and then this fails with
        // "already in post-copy": both are fine.
        if (virDomainMigrateStartPostCopy(dom.get(), 0) == 0) {
          asked_postcopy = true;
          std::lock_guard<std::mutex> l(shared.mu);
          shared.Note("source: post-copy requested (virDomainMigrateStartPostCopy)");
        } else if (const std::string why = LastError(); why != postcopy_refused) {
          postcopy_refused = why;  // each new reason once
          std::lock_guard<std::mutex> l(shared.mu);
          shared.Note("source: post-copy not started yet, trying again: " + why);
        }
      }
    }
    if (!in_postcopy && !aborted && o.timeout > absl::ZeroDuration() && elapsed > o.timeout) {
      say(absl::StrCat("still pre-copying after ", absl::FormatDuration(o.timeout),
                       ": aborting (the domain stays on the source)"));
      virDomainAbortJob(dom.get());
      aborted = true;
    }
    if (running && absl::Now() - last_progress >= absl::Seconds(1)) {
      last_progress = absl::Now();
      say(absl::StrFormat("  %5.1fs %s: memory %s of %s, remaining %s, iteration %d",
                          absl::ToDoubleSeconds(elapsed), in_postcopy ? "post-copy" : "pre-copy",
                          MiB(Field(job, VIR_DOMAIN_JOB_MEMORY_PROCESSED)),
                          MiB(Field(job, VIR_DOMAIN_JOB_MEMORY_TOTAL)),
                          MiB(Field(job, VIR_DOMAIN_JOB_MEMORY_REMAINING)),
                          static_cast<int>(Field(job, VIR_DOMAIN_JOB_MEMORY_ITERATION))));
    }
  }
  migrator.join();
  virTypedParamsFree(params, nparams);
  LibvirtMigrateReport r;
  r.pager = o.pager;
  r.warmup = !o.warmup_socket.empty();
  r.seconds = absl::ToDoubleSeconds(absl::Now() - t0);

  // The JOB_COMPLETED event may trail the API's return a little.
  {
    std::unique_lock<std::mutex> l(shared.mu);
    if (rc == 0) {
      shared.cv.wait_for(l, std::chrono::seconds(3), [&] { return shared.completed.has_value(); });
    }
    r.events = shared.events;
    r.postcopy_at = shared.postcopy_at;
    if (shared.completed) {
      const Json& j = *shared.completed;
      r.time_elapsed_ms = Field(j, VIR_DOMAIN_JOB_TIME_ELAPSED);
      r.downtime_ms = Field(j, VIR_DOMAIN_JOB_DOWNTIME);
      r.setup_time_ms = Field(j, VIR_DOMAIN_JOB_SETUP_TIME);
      r.data_total = Field(j, VIR_DOMAIN_JOB_DATA_TOTAL);
      r.data_processed = Field(j, VIR_DOMAIN_JOB_DATA_PROCESSED);
      r.memory_total = Field(j, VIR_DOMAIN_JOB_MEMORY_TOTAL);
      r.memory_processed = Field(j, VIR_DOMAIN_JOB_MEMORY_PROCESSED);
      r.memory_iteration = Field(j, VIR_DOMAIN_JOB_MEMORY_ITERATION);
      r.postcopy_requests = Field(j, VIR_DOMAIN_JOB_MEMORY_POSTCOPY_REQS);
    }
  }
  if (rc < 0) {
    bool postcopy, failed;
    {
      std::lock_guard<std::mutex> l(shared.mu);
      postcopy = shared.postcopy;
      failed = shared.postcopy_failed;
    }
    std::string where;
    if (!postcopy && virDomainIsActive(dom.get()) == 1) {
      where = "the domain is still running on the source";
      if (o.pager) {
        absl::Status s = undo_source();
        where += s.ok() ? " (pager capabilities turned off again)"
                        : absl::StrCat(" (turning the pager capabilities off failed: ", s.message(),
                                       ")");
      }
    } else if (postcopy || failed) {
      where =
          "the migration failed in post-copy: the guest is paused and its memory is split "
          "between the hosts. Nothing is lost while both sides stay up: faultline keeps the "
          "destination's guest waiting, and `virsh migrate --postcopy --postcopy-resume` "
          "resumes QEMU's stream once the cause is fixed";
    } else {
      where = "the domain is no longer running on the source";
    }
    std::string hint = DetachHint(migrate_error, libvirt_version);
    if (!hint.empty()) {
      // QEMU refused the migrate command itself: nothing else to say.
    } else if (absl::StrContains(migrate_error, "property") &&
               absl::StrContains(migrate_error, kCap)) {
      hint = " — the destination's emulator must be QEMU with faultline's series";
    } else if (absl::StrContains(migrate_error, "Postcopy is not supported") ||
               absl::StrContains(migrate_error, "userfaultfd")) {
      // QEMU's post-copy check at ADVISE: it could not make a userfaultfd. libvirt runs QEMU
      // unprivileged, and with vm.unprivileged_userfaultfd=0 only /dev/userfaultfd gives one
      // that handles the kernel's faults (KVM's and QEMU's own accesses to guest RAM).
      hint =
          " — the destination's QEMU could not make a userfaultfd: give the user libvirt runs "
          "QEMU as access to /dev/userfaultfd (e.g. group kvm, mode 0660; Linux >= 6.1, and "
          "QEMU with faultline's series, whose last patch opens it), or set "
          "vm.unprivileged_userfaultfd=1 on the destination";
    } else if (o.pager && !postcopy) {
      // The destination QEMU checks its pager at the start of the stream and fails the
      // incoming migration without one; the source then sees only a broken connection.
      hint = absl::StrCat(
          " — if the destination's QEMU log says \"x-postcopy-external-pager: connect to '",
          o.pager_socket, "'\", start `faultline serve --handoff=", o.pager_socket,
          "` there first");
    }
    return absl::AbortedError(
        absl::StrCat(aborted ? "migration aborted (timeout)" : "migration failed", ": ",
                     migrate_error, hint, "; ", where));
  }

  // Confirm the destination QEMU ran with the pager.
  if (o.pager) {
    if (Dom d(virDomainLookupByName(dst.get(), o.domain.c_str())); d) {
      absl::StatusOr<bool> on = HasPagerCapability(d.get());
      r.dest_pager_capability = on.ok() && *on;
    }
  }
  return r;
}

}  // namespace faultline
