// The pieces of `faultline demo` (cli/demo.h), one file each:
//   demo.cc         checks the options, forks the source and faultline processes, runs the
//                   destination and reaps everything
//   demo_source.cc  the source process: the guest runs, pauses, its RAM is served
//   demo_dest.cc    the destination VMM: empty RAM + uffd handed to faultline, vCPUs resumed,
//                   the engine restart, every page verified afterwards
//   demo_report.cc  the guest's serial lines and the report table
// Internal to //cli:demo.
#ifndef FAULTLINE_CLI_DEMO_INTERNAL_H_
#define FAULTLINE_CLI_DEMO_INTERNAL_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "cli/demo.h"
#include "qemu-integration/handoff/handoff.h"
#include "qemu-integration/vmm/vcpu_state.h"
#include "transport/protocol.h"

namespace faultline {
namespace demo_internal {

uint64_t NowNs();

// ---- the control channel between the destination and the source process ----
// One SOCK_SEQPACKET message: bytes, optionally one fd.
absl::Status SendMsg(int sock, const std::string& data, int fd = -1);
absl::Status RecvMsg(int sock, std::string* data, UniqueFd* fd, absl::Duration timeout);

struct SourceHello {  // the source's first message: how to reach its pages, and the vCPUs
  uint32_t port = 0;
  Token token{};
  uint64_t paused_at_ns = 0;  // warm-up: when it began serving (the guest runs on)
  uint64_t data_start = 0, data_end = 0;
  bool warmup = false;  // the vCPUs come later, in a SourceSwitch
  std::string states;
};
std::string EncodeSourceHello(const SourceHello& h);
absl::StatusOr<SourceHello> DecodeSourceHello(const std::string& s);

// Warm-up: the source's second message, once faultline applied the final round.
struct SourceSwitch {
  uint64_t paused_at_ns = 0;
  uint64_t confirmed_at_ns = 0;  // faultline's confirmation of the final round arrived
  std::string states;
};
std::string EncodeSourceSwitch(const SourceSwitch& s);
absl::StatusOr<SourceSwitch> DecodeSourceSwitch(const std::string& s);

// The source process (demo_source.cc): boots the guest on memfd RAM, lets it dirty its
// memory, pauses it, sends a SourceHello (with the RAM's memfd) on `ctl`, then serves the RAM.
absl::Status SourceMain(int ctl, const DemoOptions& o, const std::string& elf);

// The child processes of a demo run, and the hand-off socket faultline listens on.
struct DemoProcesses {
  pid_t source_pid = -1;
  pid_t engine_pid = -1;
  std::unique_ptr<HandoffServer> handoff;  // this process's copy of faultline's listener
  // Waits for `pid` (SIGKILLed first when kill_it) and returns its wait status.
  static int Reap(pid_t& pid, bool kill_it);
  void KillAll() {
    Reap(engine_pid, true);
    Reap(source_pid, true);
  }
};

// What the destination needs from the source process.
struct SourceSide {
  SourceHello hello;
  std::vector<VcpuState> states;  // warm-up: empty until the SourceSwitch
  UniqueFd ram;                   // the source's RAM memfd, for verification
  int ctl = -1;                   // the control channel (warm-up: the SourceSwitch comes on it)
};

// The destination VMM (demo_dest.cc), once the source is paused and faultline listens on
// `handoff_path`: runs the guest while post-copy fills its RAM, kills and replaces the engine
// when asked, verifies every page against the source. Reaps the processes.
absl::StatusOr<DemoReport> RunDestination(const DemoOptions& o, const SourceSide& source,
                                          const std::string& handoff_path,
                                          const std::string& state_dir, DemoProcesses* procs);

// ---- the report (demo_report.cc) ----
// "FLT cpu=0 phase=random round=0 touches=4096 cycles_min=… cycles_p50=…" → GuestPhase; false
// for other lines and for the source's dirty phase.
bool ParsePhase(const std::string& side, const std::string& line, GuestPhase* p);
// The host's TSC rate, kHz (the guest times touches with rdtsc); 0 when unknown.
uint64_t HostTscKhz();

}  // namespace demo_internal
}  // namespace faultline

#endif  // FAULTLINE_CLI_DEMO_INTERNAL_H_
