#include "cli/demo.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/errno_status.h"
#include "base/scm_rights.h"
#include "cli/handoff_run.h"
#include "engine/fault_stats.h"
#include "engine/latency_histogram.h"
#include "engine/uffd.h"
#include "qemu-integration/guest/guest_abi.h"
#include "qemu-integration/handoff/handoff.h"
#include "qemu-integration/vmm/guest_check.h"
#include "qemu-integration/vmm/guest_elf.h"
#include "qemu-integration/vmm/kvm_vm.h"
#include "qemu-integration/vmm/vm.h"
#include "transport/page_server.h"
#include "transport/socket.h"

namespace faultline {
namespace {

// ---- the control channel between the destination and the source process ----
// One SOCK_SEQPACKET message: bytes, optionally one fd.

absl::Status SendMsg(int sock, const std::string& data, int fd = -1) {
  absl::Status s = SendWithFds(sock, data, absl::Span<const int>(&fd, fd >= 0 ? 1 : 0));
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("control channel: ", s.message()));
  return absl::OkStatus();
}

absl::Status RecvMsg(int sock, std::string* data, UniqueFd* fd, absl::Duration timeout) {
  struct timeval tv = {static_cast<time_t>(absl::ToInt64Seconds(timeout)), 0};
  setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  data->resize(1 << 20);
  std::vector<UniqueFd> fds;
  absl::StatusOr<size_t> n = RecvWithFds(sock, data->data(), data->size(), &fds);
  if (!n.ok()) {
    if (absl::IsDeadlineExceeded(n.status())) {
      return absl::DeadlineExceededError("the source process did not answer");
    }
    return absl::Status(n.status().code(), absl::StrCat("control channel: ", n.status().message()));
  }
  if (*n == 0) return absl::UnavailableError("the source process went away");
  data->resize(*n);
  if (fd != nullptr && !fds.empty()) *fd = std::move(fds.front());  // any others are closed
  return absl::OkStatus();
}

uint64_t NowNs() { return FaultStats::NowNs(); }

// "FLT cpu=0 phase=random round=0 touches=4096 cycles_min=… cycles_p50=…" → GuestPhase.
bool ParsePhase(const std::string& side, const std::string& line, GuestPhase* p) {
  if (line.rfind("FLT cpu=", 0) != 0 || line.find(" phase=") == std::string::npos) return false;
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

struct SourceHello {  // the source's one message: how to reach its pages, and the vCPUs
  uint32_t port = 0;
  Token token{};
  uint64_t paused_at_ns = 0;
  uint64_t data_start = 0, data_end = 0;
  std::string states;
};

std::string EncodeSourceHello(const SourceHello& h) {
  std::string s(4 + kTokenSize + 24, '\0');
  memcpy(&s[0], &h.port, 4);
  memcpy(&s[4], h.token.data(), kTokenSize);
  memcpy(&s[4 + kTokenSize], &h.paused_at_ns, 8);
  memcpy(&s[12 + kTokenSize], &h.data_start, 8);
  memcpy(&s[20 + kTokenSize], &h.data_end, 8);
  return s + h.states;
}

absl::StatusOr<SourceHello> DecodeSourceHello(const std::string& s) {
  if (s.size() < 4 + kTokenSize + 24) {
    if (s.rfind("ERR ", 0) == 0) return absl::InternalError(absl::StrCat("source: ", s.substr(4)));
    return absl::InvalidArgumentError("short message from the source process");
  }
  SourceHello h;
  memcpy(&h.port, &s[0], 4);
  memcpy(h.token.data(), &s[4], kTokenSize);
  memcpy(&h.paused_at_ns, &s[4 + kTokenSize], 8);
  memcpy(&h.data_start, &s[12 + kTokenSize], 8);
  memcpy(&h.data_end, &s[20 + kTokenSize], 8);
  h.states = s.substr(28 + kTokenSize);
  return h;
}

// ---- the source process ----
absl::Status SourceMain(int ctl, const DemoOptions& o, const std::string& elf) {
  VmOptions vo;
  vo.ram_size = o.ram_size;
  vo.backing = RamBacking::kMemfd;
  vo.vcpus = o.vcpus;
  absl::StatusOr<std::unique_ptr<Vm>> vm = Vm::Create(vo);
  if (!vm.ok()) return vm.status();
  if (absl::StatusOr<ElfImage> img = (*vm)->LoadElf(elf); !img.ok()) return img.status();
  WorkloadConfig wc;
  wc.seed = o.seed;
  wc.touches = o.touches;
  wc.mode = FLT_MODE_DEFAULT;
  if (absl::Status s = (*vm)->WriteMailbox(wc); !s.ok()) return s;
  (*vm)->SetLineCallback([](const ConsoleLine& l) {
    std::printf("  [source guest] %s\n", l.text.c_str());
    std::fflush(stdout);
  });
  if (absl::Status s = (*vm)->Start(); !s.ok()) return s;
  // Run until every vCPU has dirtied its share of memory, then stop the world.
  for (uint32_t c = 0; c < o.vcpus; ++c) {
    absl::StatusOr<std::string> l =
        (*vm)->WaitForLine(absl::StrCat("FLT cpu=", c, " phase=dirty"), absl::Minutes(10));
    if (!l.ok()) return l.status();
  }
  if (absl::Status s = (*vm)->Pause(); !s.ok()) return s;
  SourceHello h;
  h.paused_at_ns = NowNs();
  absl::StatusOr<std::vector<VcpuState>> states = (*vm)->SaveState();
  if (!states.ok()) return states.status();
  h.states = SerializeVcpuStates(*states);
  struct flt_mailbox mb = (*vm)->ReadMailbox();
  h.data_start = mb.data_start;
  h.data_end = mb.data_end;
  absl::StatusOr<SourceRegion> region =
      SourceRegion::MapFd("ram", (*vm)->ram().fd(), 0, o.ram_size, 4096);
  if (!region.ok()) return region.status();
  std::vector<SourceRegion> regions;
  regions.push_back(std::move(*region));
  h.token = RandomToken();
  PageServer server(std::move(regions), h.token, o.server_tls);
  absl::StatusOr<UniqueFd> listen = ListenTcp("127.0.0.1:0");
  if (!listen.ok()) return listen.status();
  absl::StatusOr<int> port = BoundPort(listen->get());
  if (!port.ok()) return port.status();
  h.port = static_cast<uint32_t>(*port);
  if (absl::Status s = SendMsg(ctl, EncodeSourceHello(h), (*vm)->ram().fd()); !s.ok()) return s;
  // Serve until faultline says every page is present. The paused VM stays as it is.
  return server.Serve(listen->get());
}

void Report(std::string* out, const std::string& k, const std::string& v) {
  absl::StrAppendFormat(out, "  %-30s %s\n", k, v);
}

std::string Micros(uint64_t cycles, uint64_t khz) {
  if (khz == 0) return absl::StrCat(cycles, " cycles");
  return FormatNanos(cycles * 1'000'000 / khz);
}

}  // namespace

bool DemoAvailable(std::string* why) {
  if (!KvmVm::Available(why)) return false;
  if (FindGuestElf().empty()) {
    *why =
        "the guest ELF (//qemu-integration/guest:faultline-guest) was not found; build it "
        "or set FAULTLINE_GUEST_ELF";
    return false;
  }
  return true;
}

absl::StatusOr<DemoReport> RunDemo(const DemoOptions& o) {
  const bool gmem = o.dest_backing == "guest_memfd";
  if (gmem) {
    // Both halves of the kernel/ series are needed: userfaultfd on the guest_memfd mapping,
    // and vCPU exits for pages that have not arrived (a vCPU never uses the mapping).
    absl::StatusOr<uint64_t> features = Userfaultfd::ProbeFeatures();
    if (!features.ok()) return features.status();
    absl::StatusOr<std::unique_ptr<KvmVm>> kvm = KvmVm::Create();
    if (!kvm.ok()) return kvm.status();
    if (!(*features & UFFD_FEATURE_GUEST_MEMFD)) {
      return absl::UnimplementedError(
          "guest RAM on guest_memfd cannot be migrated by post-copy on this kernel: it has no "
          "userfaultfd support for guest_memfd (UFFD_FEATURE_GUEST_MEMFD). Build and boot the "
          "patch series in kernel/ (kernel/README.md)");
    }
    if (absl::Status s = (*kvm)->SetGuestMemfdExitOnMissing(false); !s.ok()) return s;
  }
  if (o.dest_backing != "memfd" && o.dest_backing != "anon" && !gmem) {
    return absl::InvalidArgumentError(
        absl::StrCat("demo destination RAM '", o.dest_backing, "': memfd, anon or guest_memfd"));
  }
  // The reference VMM's RAM ends below the I/O APIC page (kMaxVmRam, 4076 MiB).
  constexpr uint64_t kMaxDemoRam = kMaxVmRam & ~((2ull << 20) - 1);  // 4076 MiB
  if (o.ram_size % (2u << 20) || o.ram_size < (16u << 20) || o.ram_size > kMaxDemoRam) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "demo RAM must be 16..%u MiB (the reference VMM's RAM ends below the APIC pages at "
        "0xfec00000), a multiple of 2 MiB",
        kMaxDemoRam >> 20));
  }
  const std::string elf = o.guest_elf.empty() ? FindGuestElf() : o.guest_elf;
  if (elf.empty()) return absl::NotFoundError("guest ELF not found (set FAULTLINE_GUEST_ELF)");

  // The source process: forked before this process starts any thread.
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    return ErrnoStatus("socketpair");
  }
  UniqueFd ctl(sv[0]), ctl_child(sv[1]);
  std::fflush(stdout);
  pid_t source_pid = fork();
  if (source_pid < 0) return ErrnoStatus("fork");
  if (source_pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    ctl.reset();
    absl::Status s = SourceMain(ctl_child.get(), o, elf);
    if (!s.ok()) {
      (void)SendMsg(ctl_child.get(), absl::StrCat("ERR ", s.message()));
      std::fprintf(stderr, "source: %s\n", std::string(s.message()).c_str());
    }
    std::fflush(stdout);
    _exit(s.ok() ? 0 : 1);
  }
  ctl_child.reset();
  auto reap = [](pid_t& pid, bool kill_it) {
    if (pid <= 0) return 0;
    if (kill_it) kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
    pid = -1;
    return st;
  };

  std::string msg;
  UniqueFd source_ram;
  absl::Status rs = RecvMsg(ctl.get(), &msg, &source_ram, absl::Minutes(15));
  absl::StatusOr<SourceHello> hello =
      rs.ok() ? DecodeSourceHello(msg) : absl::StatusOr<SourceHello>(rs);
  if (!hello.ok()) {
    reap(source_pid, true);
    return hello.status();
  }
  absl::StatusOr<std::vector<VcpuState>> states = DeserializeVcpuStates(hello->states);
  if (!states.ok()) {
    reap(source_pid, true);
    return states.status();
  }

  // With a restart, both engines keep the page-state map in a file here.
  const bool restart = o.kill_engine_at > 0;
  if (restart && (o.client_tls || o.server_tls)) {
    reap(source_pid, true);
    return absl::InvalidArgumentError("the demo's engine restart does not do TLS");
  }
  const std::string state_dir =
      restart ? absl::StrCat("/tmp/faultline-demo-state-", TokenToHex(RandomToken()).substr(0, 8))
              : "";

  // faultline: its own process, serving the hand-off socket.
  const std::string path = o.handoff_path.empty()
                               ? absl::StrCat("/tmp/faultline-demo-", getpid(), "-",
                                              TokenToHex(RandomToken()).substr(0, 8), ".sock")
                               : o.handoff_path;
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path);
  if (!server.ok()) {
    reap(source_pid, true);
    return server.status();
  }
  std::fflush(stdout);
  pid_t engine_pid = fork();
  if (engine_pid < 0) {
    reap(source_pid, true);
    return ErrnoStatus("fork");
  }
  if (engine_pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    absl::StatusOr<std::unique_ptr<HandoffSession>> session =
        (*server)->Accept(absl::Seconds(60), getuid());
    if (!session.ok()) {
      std::fprintf(stderr, "faultline: %s\n", std::string(session.status().message()).c_str());
      _exit(1);
    }
    HandoffRunOptions ho;
    ho.source.address = absl::StrCat("127.0.0.1:", hello->port);
    ho.source.token = hello->token;
    ho.source.tls = o.client_tls;
    ho.source.tls_server_name = o.tls_server_name;
    ho.engine = o.engine;
    ho.state_dir = state_dir;
    absl::Status s = RunHandoff(**session, ho);
    if (!s.ok()) std::fprintf(stderr, "faultline: %s\n", std::string(s.message()).c_str());
    _exit(s.ok() ? 0 : 1);
  }
  auto cleanup = [&] {
    reap(engine_pid, true);
    reap(source_pid, true);
  };

  // The destination VMM: empty RAM, registered with a userfaultfd, handed to faultline. A
  // guest_memfd belongs to its VM, so that VM is created first.
  absl::StatusOr<std::unique_ptr<Vm>> gmem_vm = absl::UnknownError("unused");
  absl::StatusOr<std::unique_ptr<GuestRam>> ram = absl::UnknownError("unused");
  if (gmem) {
    VmOptions vo;
    vo.ram_size = o.ram_size;
    vo.backing = RamBacking::kGuestMemfd;
    vo.vcpus = o.vcpus;
    gmem_vm = Vm::Create(vo);
    if (!gmem_vm.ok()) {
      cleanup();
      return gmem_vm.status();
    }
  } else {
    ram = o.dest_backing == "memfd" ? GuestRam::CreateMemfd(o.ram_size, "faultline-dest-ram")
                                    : GuestRam::CreateAnonymous(o.ram_size);
    if (!ram.ok()) {
      cleanup();
      return ram.status();
    }
  }
  uint8_t* base = gmem ? (*gmem_vm)->ram().host_base() : (*ram)->host_base();
  const int ram_fd = gmem ? (*gmem_vm)->ram().fd() : (*ram)->fd();
  const bool memfd = o.dest_backing == "memfd";
  absl::StatusOr<Userfaultfd> uffd = Userfaultfd::Open();
  if (!uffd.ok()) {
    cleanup();
    return uffd.status();
  }
  if (absl::Status s = uffd->Register(base, o.ram_size, true, memfd); !s.ok()) {
    cleanup();
    return s;
  }
  HandoffClientRegion region{"ram",          reinterpret_cast<uint64_t>(base), o.ram_size, 4096,
                             o.dest_backing, memfd || gmem ? ram_fd : -1,      0};
  absl::StatusOr<std::unique_ptr<HandoffClient>> client = HandoffClient::Connect(
      path, uffd->fd(), uffd->features(), {region}, absl::Seconds(60), "faultline-demo-vmm");
  if (!client.ok()) {
    (void)uffd->Unregister(base, o.ram_size);
    cleanup();
    return client.status();
  }
  absl::StatusOr<std::unique_ptr<Vm>> vm =
      gmem ? std::move(gmem_vm) : Vm::CreateWithRam(o.vcpus, std::move(*ram));
  if (vm.ok() && gmem) {
    // From now until every page is present, a vCPU touching a page that has not arrived
    // exits, and the vCPU thread touches it through the registered mapping.
    if (absl::Status s = (*vm)->kvm().SetGuestMemfdExitOnMissing(true); !s.ok()) vm = s;
  }
  if (!vm.ok()) {
    (void)uffd->Unregister(base, o.ram_size);
    cleanup();
    return vm.status();
  }
  std::mutex lines_mu;
  std::vector<std::string> dest_lines;
  (*vm)->SetLineCallback([&](const ConsoleLine& l) {
    std::lock_guard<std::mutex> g(lines_mu);
    dest_lines.push_back(l.text);
    if (o.guest_line) o.guest_line(l.text);
  });
  DemoReport r;
  if (absl::Status s = (*vm)->RestoreState(*states); !s.ok()) {
    (void)uffd->Unregister(base, o.ram_size);
    cleanup();
    return s;
  }
  if (absl::Status s = (*vm)->Start(); !s.ok()) {
    (void)uffd->Unregister(base, o.ram_size);
    cleanup();
    return s;
  }
  const uint64_t resumed_at = NowNs();
  r.downtime_ms = (resumed_at - hello->paused_at_ns) / 1e6;

  // Pages arrive while the guest runs.
  absl::StatusOr<nlohmann::json> complete =
      (*client)->WaitComplete(absl::Minutes(15), [&](uint64_t done, uint64_t total) {
        if (o.progress) o.progress(done, total);
        if (restart && !r.engine_restarted && done >= o.kill_engine_at * total) {
          // The engine dies mid-migration; the guest keeps running (its faults wait).
          kill(engine_pid, SIGKILL);
          r.engine_restarted = true;
          r.killed_at_pages = done;
        }
      });
  if (r.engine_restarted) {
    // The VMM saw its hand-off connection close before "complete": it waits for a new
    // faultline on the same socket and hands it the same uffd. (This process's copy of the
    // first engine's listening socket goes first, so that the new one can bind the path.)
    reap(engine_pid, false);
    server->reset();
    const std::string bin = o.restart_binary.empty() ? "/proc/self/exe" : o.restart_binary;
    std::vector<std::string> args = {bin,
                                     "serve",
                                     "--handoff=" + path,
                                     absl::StrCat("--connect=127.0.0.1:", hello->port),
                                     "--token=" + TokenToHex(hello->token),
                                     "--state_dir=" + state_dir,
                                     "--progress=false"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::fflush(stdout);
    if (posix_spawn(&engine_pid, bin.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
      engine_pid = -1;
      complete = ErrnoStatus(absl::StrCat("spawn ", bin));
    } else {
      client = HandoffClient::Connect(path, uffd->fd(), uffd->features(), {region},
                                      absl::Seconds(60), "faultline-demo-vmm", /*resume=*/true);
      complete = client.ok() ? (*client)->WaitComplete(absl::Minutes(15), o.progress)
                             : absl::StatusOr<nlohmann::json>(client.status());
    }
  }
  if (restart) {
    unlink(StateFilePath(state_dir, hello->token).c_str());  // (removed already on success)
    rmdir(state_dir.c_str());
  }
  const uint64_t complete_at = NowNs();
  r.total_seconds = (complete_at - hello->paused_at_ns) / 1e9;
  if (!complete.ok()) {
    // Faulted vCPUs stay blocked in the kernel while the range is registered; the run has
    // failed: stop the VM before letting go of the registration.
    (*vm)->Stop();
    (void)uffd->Unregister(base, o.ram_size);
    cleanup();
    return absl::Status(complete.status().code(),
                        absl::StrCat("migration failed: ", complete.status().message()));
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
  int engine_status = reap(engine_pid, false);
  int source_status = reap(source_pid, false);
  if (!ex.ok()) return ex.status();
  {  // the guest times touches with rdtsc: convert with the host's TSC rate
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("cpu MHz", 0) == 0) {
        double mhz = 0;
        if (absl::SimpleAtod(line.substr(line.find(':') + 1), &mhz)) {
          r.tsc_khz = static_cast<uint64_t>(mhz * 1000);
        }
        break;
      }
    }
  }
  for (const std::string& l : dest_lines) {
    GuestPhase p;
    if (ParsePhase("destination", l, &p)) {
      r.guest_bad += p.bad;
      r.phases.push_back(p);
    }
  }
  // Verify: the guest's data pages byte for byte against the source (the guest only reads
  // them after the migration), and that they hold what the guest wrote on the source.
  void* src = mmap(nullptr, o.ram_size, PROT_READ, MAP_SHARED, source_ram.get(), 0);
  if (src == MAP_FAILED) return ErrnoStatus("mmap source RAM for verification");
  const auto* s8 = static_cast<const uint8_t*>(src);
  for (uint64_t off = 0; off < o.ram_size; off += 4096) {
    const bool equal = memcmp(base + off, s8 + off, 4096) == 0;
    if (off >= hello->data_start && off < hello->data_end) {
      ++r.verified_pages;
      if (!equal) ++r.mismatches;
    } else {
      // Below the data range: the guest's image, stacks and mailbox, which the running guest
      // keeps writing after resume.
      ++r.boot_area_pages;
      if (!equal) ++r.boot_area_changed;
    }
  }
  absl::StatusOr<uint64_t> pattern =
      VerifyDirtyPattern(base, o.ram_size, o.seed, hello->data_start, hello->data_end);
  munmap(src, o.ram_size);
  if (!pattern.ok()) return pattern.status();
  r.dirty_pattern_pages = *pattern;
  if (engine_status != 0) return absl::InternalError("the faultline process failed");
  if (source_status != 0) return absl::InternalError("the source process failed");
  return r;
}

std::string DemoReportTable(const DemoReport& r) {
  std::string s;
  const nlohmann::json& e = r.engine;
  auto u = [&](const char* k) { return e.value(k, uint64_t{0}); };
  Report(&s, "downtime (pause → resume)", absl::StrFormat("%.1f ms", r.downtime_ms));
  Report(&s, "total (pause → all present)", absl::StrFormat("%.2f s", r.total_seconds));
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
