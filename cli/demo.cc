// `faultline demo`: the options, the three processes, and the destination's run (the other
// pieces: cli/demo_internal.h).
#include "cli/demo.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/errno_status.h"
#include "cli/demo_internal.h"
#include "cli/handoff_run.h"
#include "engine/uffd.h"
#include "qemu-integration/handoff/handoff.h"
#include "qemu-integration/vmm/guest_elf.h"
#include "qemu-integration/vmm/guest_ram.h"
#include "qemu-integration/vmm/kvm_vm.h"
#include "qemu-integration/vmm/vm.h"

namespace faultline {

using demo_internal::DemoProcesses;

int DemoProcesses::Reap(pid_t& pid, bool kill_it) {
  if (pid <= 0) return 0;
  if (kill_it) kill(pid, SIGKILL);
  int st = 0;
  waitpid(pid, &st, 0);
  pid = -1;
  return st;
}

namespace {

// What a demo's options ask of this machine and kernel, checked before anything starts.
absl::Status CheckOptions(const DemoOptions& o) {
  if (o.dest_backing == RamBacking::kGuestMemfd) {
    // Both halves of the kernel/ series are needed: userfaultfd on the guest_memfd mapping,
    // and vCPU exits for pages that have not arrived (a vCPU never uses the mapping).
    absl::StatusOr<std::unique_ptr<KvmVm>> kvm = KvmVm::Create();
    if (!kvm.ok()) return kvm.status();
    absl::StatusOr<std::unique_ptr<GuestRam>> probe =
        GuestRam::CreateGuestMemfd((*kvm)->vm_fd(), 2u << 20);
    if (absl::IsUnimplemented(probe.status())) {
      return absl::UnimplementedError(
          absl::StrCat("guest RAM on guest_memfd cannot be migrated by post-copy on this host: ",
                       probe.status().message(),
                       ". Boot Linux 6.18 with the patch series in kernel/ (kernel/README.md)"));
    }
    if (!probe.ok()) return probe.status();
    if (absl::Status s = Userfaultfd::ProbeGuestMemfd((*probe)->host_base(), 4096); !s.ok()) {
      return absl::UnimplementedError(absl::StrCat(
          "guest RAM on guest_memfd cannot be migrated by post-copy on this kernel: it has no "
          "userfaultfd support for guest_memfd (UFFDIO_REGISTER: ",
          s.message(), "). Build and boot the patch series in kernel/ (kernel/README.md)"));
    }
    if (absl::Status s = (*kvm)->SetGuestMemfdExitOnMissing(false); !s.ok()) return s;
  }
  if (absl::Status s = CheckRamBacking(o.dest_backing); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("demo destination RAM: ", s.message(), ", anon or guest_memfd"));
  }
  // The reference VMM's RAM ends below the I/O APIC page (kMaxVmRam, 4076 MiB).
  constexpr uint64_t kMaxDemoRam = kMaxVmRam & ~((2ull << 20) - 1);  // 4076 MiB
  if (o.ram_size % (2u << 20) || o.ram_size < (16u << 20) || o.ram_size > kMaxDemoRam) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "demo RAM must be 16..%u MiB (the reference VMM's RAM ends below the APIC pages at "
        "0xfec00000), a multiple of 2 MiB",
        kMaxDemoRam >> 20));
  }
  return absl::OkStatus();
}

// faultline: its own process, serving the hand-off socket `procs->handoff`.
absl::Status StartEngineProcess(const DemoOptions& o, const demo_internal::SourceHello& hello,
                                const std::string& state_dir, DemoProcesses* procs) {
  std::fflush(stdout);
  procs->engine_pid = fork();
  if (procs->engine_pid < 0) return ErrnoStatus("fork");
  if (procs->engine_pid > 0) return absl::OkStatus();
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  absl::StatusOr<std::unique_ptr<HandoffSession>> session =
      procs->handoff->Accept(absl::Seconds(60), getuid());
  if (!session.ok()) {
    std::fprintf(stderr, "faultline: %s\n", std::string(session.status().message()).c_str());
    _exit(1);
  }
  HandoffRunOptions ho;
  ho.source.address = absl::StrCat("127.0.0.1:", hello.port);
  ho.source.token = hello.token;
  ho.source.tls = o.client_tls;
  ho.source.tls_server_name = o.tls_server_name;
  ho.source.urgent_slice = o.engine.fault_slice;
  ho.source.bulk_threads = o.bulk_threads;
  ho.engine = o.engine;
  ho.state_dir = state_dir;
  absl::Status s = RunHandoff(**session, ho);
  if (!s.ok()) std::fprintf(stderr, "faultline: %s\n", std::string(s.message()).c_str());
  _exit(s.ok() ? 0 : 1);
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
  if (absl::Status s = CheckOptions(o); !s.ok()) return s;
  const std::string elf = o.guest_elf.empty() ? FindGuestElf() : o.guest_elf;
  if (elf.empty()) return absl::NotFoundError("guest ELF not found (set FAULTLINE_GUEST_ELF)");

  // The source process: forked before this process starts any thread.
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    return ErrnoStatus("socketpair");
  }
  UniqueFd ctl(sv[0]), ctl_child(sv[1]);
  DemoProcesses procs;
  std::fflush(stdout);
  procs.source_pid = fork();
  if (procs.source_pid < 0) return ErrnoStatus("fork");
  if (procs.source_pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    ctl.reset();
    absl::Status s = demo_internal::SourceMain(ctl_child.get(), o, elf);
    if (!s.ok()) {
      (void)demo_internal::SendMsg(ctl_child.get(), absl::StrCat("ERR ", s.message()));
      std::fprintf(stderr, "source: %s\n", std::string(s.message()).c_str());
    }
    std::fflush(stdout);
    _exit(s.ok() ? 0 : 1);
  }
  ctl_child.reset();

  demo_internal::SourceSide source;
  std::string msg;
  absl::Status rs = demo_internal::RecvMsg(ctl.get(), &msg, &source.ram, absl::Minutes(15));
  absl::StatusOr<demo_internal::SourceHello> hello =
      rs.ok() ? demo_internal::DecodeSourceHello(msg)
              : absl::StatusOr<demo_internal::SourceHello>(rs);
  if (!hello.ok()) {
    procs.KillAll();
    return hello.status();
  }
  source.hello = std::move(*hello);
  source.ctl = ctl.get();
  if (!source.hello.warmup) {
    absl::StatusOr<std::vector<VcpuState>> states = DeserializeVcpuStates(source.hello.states);
    if (!states.ok()) {
      procs.KillAll();
      return states.status();
    }
    source.states = std::move(*states);
  }

  // With a restart, both engines keep the page-state map in a file here.
  const bool restart = o.kill_engine_at > 0;
  if (restart && (o.client_tls || o.server_tls)) {
    procs.KillAll();
    return absl::InvalidArgumentError("the demo's engine restart does not do TLS");
  }
  const std::string state_dir =
      restart ? absl::StrCat("/tmp/faultline-demo-state-", TokenToHex(RandomToken()).substr(0, 8))
              : "";
  const std::string path = o.handoff_path.empty()
                               ? absl::StrCat("/tmp/faultline-demo-", getpid(), "-",
                                              TokenToHex(RandomToken()).substr(0, 8), ".sock")
                               : o.handoff_path;
  absl::StatusOr<std::unique_ptr<HandoffServer>> server = HandoffServer::Listen(path);
  if (!server.ok()) {
    procs.KillAll();
    return server.status();
  }
  procs.handoff = std::move(*server);
  if (absl::Status s = StartEngineProcess(o, source.hello, state_dir, &procs); !s.ok()) {
    procs.KillAll();
    return s;
  }
  return demo_internal::RunDestination(o, source, path, state_dir, &procs);
}

}  // namespace faultline
