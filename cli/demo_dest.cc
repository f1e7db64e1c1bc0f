// `faultline demo`, the destination side: the destination VMM hands its empty RAM and a
// userfaultfd to faultline, resumes the guest at once, replaces a killed engine when asked,
// and afterwards verifies every page against the source's memory.
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "cli/demo_internal.h"
#include "cli/handoff_run.h"
#include "engine/uffd.h"
#include "qemu-integration/vmm/guest_check.h"
#include "qemu-integration/vmm/vm.h"

namespace faultline {
namespace demo_internal {
namespace {

// Compares the guest's data pages byte for byte with the source (the guest only reads them
// after the migration) and checks they hold what the guest wrote on the source.
absl::Status Verify(const DemoOptions& o, const SourceSide& source, const uint8_t* base,
                    DemoReport* r) {
  void* src = mmap(nullptr, o.ram_size, PROT_READ, MAP_SHARED, source.ram.get(), 0);
  if (src == MAP_FAILED) return ErrnoStatus("mmap source RAM for verification");
  const auto* s8 = static_cast<const uint8_t*>(src);
  for (uint64_t off = 0; off < o.ram_size; off += 4096) {
    const bool equal = memcmp(base + off, s8 + off, 4096) == 0;
    if (off >= source.hello.data_start && off < source.hello.data_end) {
      ++r->verified_pages;
      if (!equal) ++r->mismatches;
    } else {
      // Below the data range: the guest's image, stacks and mailbox, which the running guest
      // keeps writing after resume.
      ++r->boot_area_pages;
      if (!equal) ++r->boot_area_changed;
    }
  }
  absl::StatusOr<uint64_t> pattern =
      VerifyDirtyPattern(base, o.ram_size, o.seed, source.hello.data_start, source.hello.data_end,
                         /*churned=*/o.churn_permille >= 0 || o.engine.warmup.enabled);
  munmap(src, o.ram_size);
  if (!pattern.ok()) return pattern.status();
  r->dirty_pattern_pages = *pattern;
  return absl::OkStatus();
}

// The engine restart: the VMM saw its hand-off connection close before "complete"; it waits
// for a new faultline (`serve`) on the same socket and hands it the same uffd.
absl::StatusOr<nlohmann::json> ReplaceEngine(const DemoOptions& o, const SourceSide& source,
                                             const std::string& path, const std::string& state_dir,
                                             const Userfaultfd& uffd,
                                             const HandoffClientRegion& region,
                                             DemoProcesses* procs,
                                             std::unique_ptr<HandoffClient>* client) {
  // This process's copy of the first engine's listening socket goes first, so that the new
  // one can bind the path.
  DemoProcesses::Reap(procs->engine_pid, false);
  procs->handoff.reset();
  const std::string bin = o.restart_binary.empty() ? "/proc/self/exe" : o.restart_binary;
  std::vector<std::string> args = {bin,
                                   "serve",
                                   "--handoff=" + path,
                                   absl::StrCat("--connect=127.0.0.1:", source.hello.port),
                                   "--token=" + TokenToHex(source.hello.token),
                                   "--state_dir=" + state_dir,
                                   "--progress=false"};
  if (o.engine.warmup.enabled) {
    args.push_back("--warmup");
    args.push_back(absl::StrCat("--warmup_rounds=", o.engine.warmup.max_rounds));
    args.push_back(absl::StrCat("--warmup_rate_mib=", o.engine.warmup.rate_bytes_per_s >> 20));
    args.push_back(absl::StrCat("--warmup_throttle=", o.engine.warmup.throttle_max));
    args.push_back(absl::StrCat("--warmup_throttle_step=", o.engine.warmup.throttle_step));
    args.push_back(absl::StrCat("--warmup_converge_pages=", o.engine.warmup.converge_pages));
    args.push_back(absl::StrCat("--warmup_shrink=", o.engine.warmup.shrink));
    args.push_back("--warmup_final_copy=" + absl::FormatDuration(o.engine.warmup.final_copy));
    args.push_back("--warmup_deadline=" + absl::FormatDuration(o.engine.warmup.deadline));
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  if (posix_spawn(&procs->engine_pid, bin.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
    procs->engine_pid = -1;
    return ErrnoStatus(absl::StrCat("spawn ", bin));
  }
  absl::StatusOr<std::unique_ptr<HandoffClient>> c =
      HandoffClient::Connect(path, uffd.fd(), uffd.features(), {region}, absl::Seconds(60),
                             "faultline-demo-vmm", /*resume=*/true);
  if (!c.ok()) return c.status();
  *client = std::move(*c);
  return (*client)->WaitComplete(absl::Minutes(15), o.progress);
}

}  // namespace

absl::StatusOr<DemoReport> RunDestination(const DemoOptions& o, const SourceSide& source,
                                          const std::string& path, const std::string& state_dir,
                                          DemoProcesses* procs) {
  const bool gmem = o.dest_backing == RamBacking::kGuestMemfd;
  const bool restart = o.kill_engine_at > 0;
  // Empty RAM, registered with a userfaultfd, handed to faultline. A guest_memfd belongs to
  // its VM, so that VM is created first.
  absl::StatusOr<std::unique_ptr<Vm>> gmem_vm = absl::UnknownError("unused");
  absl::StatusOr<std::unique_ptr<GuestRam>> ram = absl::UnknownError("unused");
  if (gmem) {
    VmOptions vo;
    vo.ram_size = o.ram_size;
    vo.backing = RamBacking::kGuestMemfd;
    vo.vcpus = o.vcpus;
    gmem_vm = Vm::Create(vo);
    if (!gmem_vm.ok()) {
      procs->KillAll();
      return gmem_vm.status();
    }
  } else {
    ram = o.dest_backing == RamBacking::kMemfd
              ? GuestRam::CreateMemfd(o.ram_size, "faultline-dest-ram")
              : GuestRam::CreateAnonymous(o.ram_size);
    if (!ram.ok()) {
      procs->KillAll();
      return ram.status();
    }
  }
  uint8_t* base = gmem ? (*gmem_vm)->ram().host_base() : (*ram)->host_base();
  const int ram_fd = gmem ? (*gmem_vm)->ram().fd() : (*ram)->fd();
  const bool memfd = o.dest_backing == RamBacking::kMemfd;
  absl::StatusOr<Userfaultfd> uffd = Userfaultfd::Open();
  if (!uffd.ok()) {
    procs->KillAll();
    return uffd.status();
  }
  if (absl::Status s = uffd->Register(base, o.ram_size, true, memfd); !s.ok()) {
    procs->KillAll();
    return s;
  }
  // Fails the run: lets go of the registration, then of the processes.
  auto fail = [&](const absl::Status& s) {
    (void)uffd->Unregister(base, o.ram_size);
    procs->KillAll();
    return s;
  };
  const HandoffClientRegion region{
      "ram",          reinterpret_cast<uint64_t>(base), o.ram_size, 4096,
      o.dest_backing, memfd || gmem ? ram_fd : -1,      0};
  absl::StatusOr<std::unique_ptr<HandoffClient>> client = HandoffClient::Connect(
      path, uffd->fd(), uffd->features(), {region}, absl::Seconds(60), "faultline-demo-vmm");
  if (!client.ok()) return fail(client.status());
  absl::StatusOr<std::unique_ptr<Vm>> vm =
      gmem ? std::move(gmem_vm) : Vm::CreateWithRam(o.vcpus, std::move(*ram));
  if (vm.ok() && gmem) {
    // From now until every page is present, a vCPU touching a page that has not arrived
    // exits, and the vCPU thread touches it through the registered mapping.
    if (absl::Status s = (*vm)->kvm().SetGuestMemfdExitOnMissing(true); !s.ok()) vm = s;
  }
  if (!vm.ok()) return fail(vm.status());
  std::mutex lines_mu;
  std::vector<std::string> dest_lines;
  (*vm)->SetLineCallback([&](const ConsoleLine& l) {
    std::lock_guard<std::mutex> g(lines_mu);
    dest_lines.push_back(l.text);
    if (o.guest_line) o.guest_line(l.text);
  });
  DemoReport r;
  // faultline's side, on a thread: progress, the engine kill and replacement, "complete".
  // With warm-up it runs while the guest still runs on the source.
  std::atomic<bool> pager_done{false};
  absl::StatusOr<nlohmann::json> complete = absl::UnknownError("unused");
  uint64_t complete_at = 0;
  std::thread pager([&] {
    complete = (*client)->WaitComplete(absl::Minutes(15), [&](uint64_t done, uint64_t total) {
      if (o.progress) o.progress(done, total);
      if (restart && !r.engine_restarted && done >= o.kill_engine_at * total) {
        // The engine dies mid-migration; the guest keeps running (its faults wait).
        kill(procs->engine_pid, SIGKILL);
        r.engine_restarted = true;
        r.killed_at_pages = done;
      }
    });
    if (r.engine_restarted) {
      complete = ReplaceEngine(o, source, path, state_dir, *uffd, region, procs, &*client);
    }
    complete_at = NowNs();
    pager_done.store(true);
  });
  uint64_t paused_at = source.hello.paused_at_ns;
  std::vector<VcpuState> states = source.states;
  absl::Status switched;
  if (source.hello.warmup) {
    // The source pauses the guest at the final round and sends its vCPUs once faultline has
    // applied that round; until then nothing may run here.
    switched = absl::DeadlineExceededError("the source never switched");
    for (int waited = 0; waited < 15 * 60 && !pager_done.load(); ++waited) {
      std::string msg;
      absl::Status rs = RecvMsg(source.ctl, &msg, nullptr, absl::Seconds(1));
      if (absl::IsDeadlineExceeded(rs)) continue;
      absl::StatusOr<SourceSwitch> sw =
          rs.ok() ? DecodeSourceSwitch(msg) : absl::StatusOr<SourceSwitch>(rs);
      absl::StatusOr<std::vector<VcpuState>> st =
          sw.ok() ? DeserializeVcpuStates(sw->states)
                  : absl::StatusOr<std::vector<VcpuState>>(sw.status());
      if (st.ok()) {
        paused_at = sw->paused_at_ns;
        r.final_round_ms = (sw->confirmed_at_ns - sw->paused_at_ns) / 1e6;
        states = std::move(*st);
      }
      switched = st.status();
      break;
    }
    if (pager_done.load() && !complete.ok()) switched = complete.status();
  }
  if (switched.ok()) switched = (*vm)->RestoreState(states);
  if (switched.ok()) switched = (*vm)->Start();
  if (!switched.ok()) {
    kill(procs->engine_pid, SIGKILL);
    pager.join();
    return fail(switched);
  }
  const uint64_t resumed_at = NowNs();
  r.downtime_ms = (resumed_at - paused_at) / 1e6;
  pager.join();
  if (restart) {
    unlink(StateFilePath(state_dir, source.hello.token).c_str());  // (removed already on success)
    rmdir(state_dir.c_str());
  }
  r.total_seconds = (complete_at - source.hello.paused_at_ns) / 1e9;
  r.postcopy_seconds = (complete_at - paused_at) / 1e9;
  r.warmup_seconds = (paused_at - source.hello.paused_at_ns) / 1e9;
  if (!complete.ok()) {
    // Faulted vCPUs stay blocked in the kernel while the range is registered; the run has
    // failed: stop the VM before letting go of the registration.
    (*vm)->Stop();
    return fail(absl::Status(complete.status().code(),
                             absl::StrCat("migration failed: ", complete.status().message())));
  }
  r.engine = *complete;
  if (o.progress) o.progress(r.engine.value("pages", 0ull), r.engine.value("pages", 0ull));
  // Every page is present: the VMM takes its memory back.
  if (gmem) (void)(*vm)->kvm().SetGuestMemfdExitOnMissing(false);
  (void)uffd->Unregister(base, o.ram_size);
  r.missing_exits = (*vm)->missing_exits();
  absl::StatusOr<VmExit> ex = (*vm)->WaitForExit(absl::Minutes(15));
  r.guest_seconds = (NowNs() - resumed_at) / 1e9;
  (*vm)->Stop();
  const int engine_status = DemoProcesses::Reap(procs->engine_pid, false);
  const int source_status = DemoProcesses::Reap(procs->source_pid, false);
  if (!ex.ok()) return ex.status();
  r.tsc_khz = HostTscKhz();
  for (const std::string& l : dest_lines) {
    GuestPhase p;
    if (ParsePhase("destination", l, &p)) {
      r.guest_bad += p.bad;
      r.phases.push_back(p);
    }
  }
  if (absl::Status s = Verify(o, source, base, &r); !s.ok()) return s;
  if (engine_status != 0) return absl::InternalError("the faultline process failed");
  if (source_status != 0) return absl::InternalError("the source process failed");
  return r;
}

}  // namespace demo_internal
}  // namespace faultline
