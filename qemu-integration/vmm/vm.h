// Vm: faultline's reference VMM — one KVM VM, its guest RAM, and one thread per vCPU.
//
// Source side:  Create() -> LoadElf() -> WriteMailbox() -> Start() -> ... -> Pause() ->
//               SaveState() (vCPU state to ship) ; RAM travels separately (post-copy).
// Destination:  CreateWithRam(vcpus, ram the caller mapped, e.g. registered with a
//               userfaultfd) -> RestoreState() -> Start() -> WaitForExit().
//
// vCPU threads loop on KVM_RUN. Port 0x3f8 bytes go to a per-vCPU line console
// (serial_console.h); a write to FLT_EXIT_PORT (0x501) ends the VM with that value; HLT parks
// the vCPU (the VM ends when all are halted); other ports, MMIO and KVM errors fail the VM
// with a register dump. Pause() sets kvm_run.immediate_exit and sends kKickSignal (a no-op
// handler is installed) to every running vCPU thread, then waits until all are parked;
// Resume() lets them go on. Thread-safe; callbacks run on vCPU threads.
#ifndef FAULTLINE_QEMU_INTEGRATION_VMM_VM_H_
#define FAULTLINE_QEMU_INTEGRATION_VMM_VM_H_

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "qemu-integration/guest/guest_abi.h"
#include "qemu-integration/vmm/elf_loader.h"
#include "qemu-integration/vmm/guest_ram.h"
#include "qemu-integration/vmm/kvm_vm.h"
#include "qemu-integration/vmm/serial_console.h"
#include "qemu-integration/vmm/vcpu_state.h"

namespace faultline {

// The signal that kicks a vCPU thread out of KVM_RUN.
constexpr int kKickSignal = SIGUSR1;

// Guest RAM is one slot from GPA 0 up, so it must end below the I/O APIC and local APIC pages
// (0xfec00000, 0xfee00000): a 4 GiB guest's access to 0xfee00000 exits as MMIO, not RAM.
inline constexpr uint64_t kMaxVmRam = 0xfec00000ull;  // 4076 MiB

struct VmOptions {
  uint64_t ram_size = 64ull << 20;  // 2 MiB .. kMaxVmRam
  RamBacking backing = RamBacking::kAnonymous;
  uint32_t vcpus = 1;
};

// The workload inputs of the guest mailbox (guest_abi.h); 0 means the guest's default.
struct WorkloadConfig {
  uint64_t seed = 1;
  uint64_t touches = 0;
  uint32_t mode = 0;
  uint32_t rounds = 0;
  uint64_t slow_cycles = 0;
  uint32_t churn_permille = 0;  // FLT_MODE_CHURN's hot block
};

struct VmExit {
  enum class Reason { kExitPort, kAllHalted };
  Reason reason = Reason::kExitPort;
  uint32_t code = 0;  // the value written to FLT_EXIT_PORT
  int cpu = -1;       // the vCPU that wrote it
};

class Vm {
 public:
  static absl::StatusOr<std::unique_ptr<Vm>> Create(const VmOptions& options);
  // A VM over RAM the caller provides (anonymous or memfd; a guest_memfd belongs to the VM
  // that created it). Nothing is loaded: RestoreState() then Start().
  static absl::StatusOr<std::unique_ptr<Vm>> CreateWithRam(uint32_t vcpus,
                                                           std::unique_ptr<GuestRam> ram);
  ~Vm();  // Stop()s
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  GuestRam& ram() { return *ram_; }
  const GuestRam& ram() const { return *ram_; }
  KvmVm& kvm() { return *kvm_; }
  uint32_t vcpus() const { return static_cast<uint32_t>(runners_.size()); }
  // vCPU exits for guest_memfd pages with no folio (KvmVm::SetGuestMemfdExitOnMissing), each
  // resolved by touching the page through the (userfaultfd-registered) RAM mapping.
  uint64_t missing_exits() const { return missing_exits_.load(); }

  // Loads the ELF, writes a PVH start_info and puts every vCPU at the PVH entry in flat
  // 32-bit protected mode (vCPU i: %ebx = start_info, %esi = FLT_CPU_MAGIC, %edi = i).
  absl::StatusOr<ElfImage> LoadElf(const std::string& path);
  // Fills the mailbox: magic, version, RAM size, vCPU count, `config`; zeroes the outputs.
  absl::Status WriteMailbox(const WorkloadConfig& config);
  // A copy of the mailbox as it is now.
  struct flt_mailbox ReadMailbox() const;
  // FLT_MODE_CHURN: sets the mailbox's churn_stop (1: stop churning, 2: go on) — a VMM write
  // into guest RAM, which KVM's dirty log does not see; returns the guest-physical address.
  uint64_t SetChurnStop(uint32_t value);

  // Called (on the vCPU thread) for every complete serial line. Set before Start().
  void SetLineCallback(std::function<void(const ConsoleLine&)> cb);

  absl::Status Start();
  // Until the guest writes the exit port or every vCPU halted. A failed vCPU's error is
  // returned; DeadlineExceeded (with each vCPU's phase and heartbeat) after `timeout`.
  absl::StatusOr<VmExit> WaitForExit(absl::Duration timeout);
  // Until a serial line starting with `prefix` has been printed (returns it).
  absl::StatusOr<std::string> WaitForLine(absl::string_view prefix, absl::Duration timeout);
  std::vector<ConsoleLine> Lines() const;

  // Kicks every vCPU out of KVM_RUN and waits until all are parked (halted ones stay so).
  absl::Status Pause(absl::Duration timeout = absl::Seconds(10));
  absl::Status Resume();
  // Needs no vCPU running: before Start(), paused, or finished.
  absl::StatusOr<std::vector<VcpuState>> SaveState();
  absl::Status RestoreState(const std::vector<VcpuState>& states);
  // Ends the vCPU threads (not restartable).
  void Stop();

 private:
  enum class RunState { kIdle, kStarting, kRunning, kParked, kHalted, kDone };
  struct Runner {
    std::unique_ptr<KvmVcpu> vcpu;
    std::thread thread;
    pthread_t handle = {};  // for pthread_kill; unlike `thread`, never changed by join()
    RunState state = RunState::kIdle;
  };

  Vm(std::unique_ptr<KvmVm> kvm, std::unique_ptr<GuestRam> ram)
      : kvm_(std::move(kvm)), ram_(std::move(ram)) {}
  absl::Status Init(uint32_t vcpus);
  void VcpuThread(size_t i);
  absl::Status HandleExit(size_t i, const VcpuExit& e);
  void Fail(size_t i, absl::Status status);
  // With mu_ held: asks every running vCPU to leave KVM_RUN.
  void KickLocked();
  bool AllStoppedLocked() const;
  std::string StatusLocked() const;
  std::string CodeAt(const KvmVcpu& vcpu) const;

  std::unique_ptr<KvmVm> kvm_;
  std::unique_ptr<GuestRam> ram_;
  std::atomic<uint64_t> missing_exits_{0};
  std::vector<Runner> runners_;
  std::function<void(const ConsoleLine&)> line_cb_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false;
  bool pause_requested_ = false;
  bool stopping_ = false;
  std::optional<VmExit> exit_;
  absl::Status failed_;
  SerialConsole console_;
};

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_VMM_VM_H_
