#include "qemu-integration/vmm/vm.h"

#include <pthread.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "qemu-integration/vmm/x86_boot.h"

namespace faultline {
namespace {

void NoOpHandler(int) {}

void InstallKickHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa = {};
    sa.sa_handler = NoOpHandler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must come back with EINTR
    sigaction(kKickSignal, &sa, nullptr);
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<Vm>> Vm::Create(const VmOptions& options) {
  if (options.vcpus == 0 || options.vcpus > FLT_MAX_CPUS) {
    return absl::InvalidArgumentError(
        absl::StrCat("vcpus must be 1..", FLT_MAX_CPUS, ", not ", options.vcpus));
  }
  if (options.ram_size > kMaxVmRam) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "guest RAM of %u MiB would reach the I/O APIC (0xfec00000) and local APIC (0xfee00000) "
        "pages; at most %u MiB",
        options.ram_size >> 20, kMaxVmRam >> 20));
  }
  if (absl::Status s = CheckRamBacking(options.backing); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<KvmVm>> kvm = KvmVm::Create();
  if (!kvm.ok()) return kvm.status();
  absl::StatusOr<std::unique_ptr<GuestRam>> ram;
  switch (options.backing) {
    case RamBacking::kAnonymous: ram = GuestRam::CreateAnonymous(options.ram_size); break;
    case RamBacking::kMemfd: ram = GuestRam::CreateMemfd(options.ram_size); break;
    case RamBacking::kGuestMemfd:
      ram = GuestRam::CreateGuestMemfd((*kvm)->vm_fd(), options.ram_size);
      break;
    case RamBacking::kHugetlb: ram = CheckRamBacking(options.backing); break;
  }
  if (!ram.ok()) return ram.status();
  std::unique_ptr<Vm> vm(new Vm(std::move(*kvm), std::move(*ram)));
  absl::Status s = vm->Init(options.vcpus);
  if (!s.ok()) return s;
  return vm;
}

absl::StatusOr<std::unique_ptr<Vm>> Vm::CreateWithRam(uint32_t vcpus,
                                                      std::unique_ptr<GuestRam> ram) {
  if (vcpus == 0 || vcpus > FLT_MAX_CPUS) {
    return absl::InvalidArgumentError(absl::StrCat("vcpus must be 1..", FLT_MAX_CPUS));
  }
  if (ram == nullptr || ram->kind() == RamBacking::kGuestMemfd) {
    return absl::InvalidArgumentError(
        "CreateWithRam takes anonymous or memfd RAM (a guest_memfd is bound to its VM)");
  }
  if (absl::Status s = CheckRamBacking(ram->kind()); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<KvmVm>> kvm = KvmVm::Create();
  if (!kvm.ok()) return kvm.status();
  std::unique_ptr<Vm> vm(new Vm(std::move(*kvm), std::move(ram)));
  absl::Status s = vm->Init(vcpus);
  if (!s.ok()) return s;
  return vm;
}

absl::Status Vm::Init(uint32_t vcpus) {
  InstallKickHandler();
  absl::Status s =
      ram_->kind() == RamBacking::kGuestMemfd
          ? kvm_->SetGuestMemfdRegion(0, 0, ram_->size(), ram_->host_base(), ram_->fd(), 0)
          : kvm_->SetUserMemoryRegion(0, 0, ram_->size(), ram_->host_base());
  if (!s.ok()) return s;
  runners_.resize(vcpus);
  for (uint32_t i = 0; i < vcpus; i++) {
    absl::StatusOr<std::unique_ptr<KvmVcpu>> v = kvm_->CreateVcpu(i);
    if (!v.ok()) return v.status();
    runners_[i].vcpu = std::move(*v);
  }
  return absl::OkStatus();
}

Vm::~Vm() { Stop(); }

absl::StatusOr<ElfImage> Vm::LoadElf(const std::string& path) {
  absl::StatusOr<ElfImage> img = LoadElfFile(path, ram_->host_base(), ram_->size());
  if (!img.ok()) return img.status();
  uint64_t entry = img->pvh_entry != 0 ? img->pvh_entry : img->entry;
  if (entry >= (1ull << 32)) {
    return absl::InvalidArgumentError(absl::StrFormat("entry 0x%x is above 4 GiB", entry));
  }
  absl::StatusOr<uint32_t> start_info = WritePvhStartInfo(ram_->host_base(), ram_->size());
  if (!start_info.ok()) return start_info.status();
  for (uint32_t i = 0; i < vcpus(); i++) {
    absl::Status s =
        SetPvhEntryState(*runners_[i].vcpu, static_cast<uint32_t>(entry), *start_info, i);
    if (!s.ok()) return s;
  }
  return img;
}

absl::Status Vm::WriteMailbox(const WorkloadConfig& config) {
  if (ram_->size() < FLT_MAILBOX_GPA + sizeof(struct flt_mailbox)) {
    return absl::InvalidArgumentError("guest RAM too small for the mailbox");
  }
  struct flt_mailbox m;
  memset(&m, 0, sizeof(m));
  m.magic = FLT_MAILBOX_MAGIC;
  m.version = FLT_ABI_VERSION;
  m.ram_size = ram_->size();
  m.seed = config.seed;
  m.touches = config.touches;
  m.slow_cycles = config.slow_cycles;
  m.mode = config.mode;
  m.rounds = config.rounds;
  m.num_cpus = vcpus();
  m.churn_permille = config.churn_permille;
  memcpy(ram_->host_base() + FLT_MAILBOX_GPA, &m, sizeof(m));
  return absl::OkStatus();
}

uint64_t Vm::SetChurnStop(uint32_t value) {
  const uint64_t off = FLT_MAILBOX_GPA + offsetof(struct flt_mailbox, churn_stop);
  __atomic_store_n(reinterpret_cast<uint32_t*>(ram_->host_base() + off), value, __ATOMIC_SEQ_CST);
  return off;
}

struct flt_mailbox Vm::ReadMailbox() const {
  struct flt_mailbox m;
  memset(&m, 0, sizeof(m));
  if (ram_->size() >= FLT_MAILBOX_GPA + sizeof(m)) {
    memcpy(&m, ram_->host_base() + FLT_MAILBOX_GPA, sizeof(m));
  }
  return m;
}

void Vm::SetLineCallback(std::function<void(const ConsoleLine&)> cb) {
  std::lock_guard<std::mutex> l(mu_);
  line_cb_ = std::move(cb);
}

absl::Status Vm::Start() {
  std::lock_guard<std::mutex> l(mu_);
  if (started_) return absl::FailedPreconditionError("VM already started");
  if (stopping_) return absl::FailedPreconditionError("VM stopped");
  started_ = true;
  for (size_t i = 0; i < runners_.size(); i++) {
    runners_[i].state = RunState::kStarting;
    runners_[i].thread = std::thread([this, i] { VcpuThread(i); });
    runners_[i].handle = runners_[i].thread.native_handle();
  }
  return absl::OkStatus();
}

void Vm::VcpuThread(size_t i) {
  Runner& r = runners_[i];
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, kKickSignal);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  for (;;) {
    {
      std::unique_lock<std::mutex> l(mu_);
      while (!stopping_ && (pause_requested_ || r.state == RunState::kHalted)) {
        if (r.state != RunState::kHalted) r.state = RunState::kParked;
        cv_.notify_all();
        cv_.wait(l);
      }
      if (stopping_) {
        r.state = RunState::kDone;
        cv_.notify_all();
        return;
      }
      r.state = RunState::kRunning;
      r.vcpu->SetImmediateExit(false);
    }
    absl::StatusOr<VcpuExit> e = r.vcpu->Run();
    absl::Status s = e.ok() ? HandleExit(i, *e) : e.status();
    if (!s.ok()) {
      Fail(i, std::move(s));
      return;
    }
  }
}

absl::Status Vm::HandleExit(size_t i, const VcpuExit& e) {
  Runner& r = runners_[i];
  switch (e.kind) {
    case VcpuExit::Kind::kInterrupted: return absl::OkStatus();
    case VcpuExit::Kind::kMemoryMissing: {
      // The page has not arrived. Reading it through our mapping raises a userfault that the
      // post-copy pager resolves with UFFDIO_COPY (which inserts the page already filled);
      // this thread sleeps in the kernel until then, then the vCPU re-enters and finds it.
      if (e.gpa >= ram_->size() || e.length == 0 || e.length > ram_->size() - e.gpa) {
        return absl::InternalError(absl::StrFormat(
            "vCPU %u: memory-fault exit for gpa 0x%x+0x%x outside guest RAM", i, e.gpa, e.length));
      }
      for (uint64_t off = 0; off < e.length; off += 4096) {
        (void)*reinterpret_cast<volatile const uint8_t*>(ram_->host_base() + e.gpa + off);
      }
      kvm_->ClearUserfault(e.gpa, e.length);
      missing_exits_.fetch_add(1, std::memory_order_relaxed);
      return absl::OkStatus();
    }
    case VcpuExit::Kind::kHlt: {
      std::lock_guard<std::mutex> l(mu_);
      r.state = RunState::kHalted;
      bool all = true;
      for (const Runner& o : runners_) all = all && o.state == RunState::kHalted;
      if (all && !exit_.has_value()) {
        exit_ = VmExit{VmExit::Reason::kAllHalted, 0, static_cast<int>(i)};
      }
      cv_.notify_all();
      return absl::OkStatus();
    }
    case VcpuExit::Kind::kIoOut:
      if (e.port == FLT_SERIAL_PORT) {
        std::vector<ConsoleLine> lines;
        std::function<void(const ConsoleLine&)> cb;
        {
          std::lock_guard<std::mutex> l(mu_);
          console_.Feed(static_cast<int>(i), e.data, size_t{e.size} * e.count, &lines);
          if (!lines.empty()) cv_.notify_all();
          cb = line_cb_;
        }
        if (cb) {
          for (const ConsoleLine& line : lines) cb(line);
        }
        return absl::OkStatus();
      }
      if (e.port > FLT_SERIAL_PORT && e.port < FLT_SERIAL_PORT + 8) {
        return absl::OkStatus();  // UART setup (IER, LCR, ...): nothing to emulate
      }
      if (e.port == FLT_EXIT_PORT) {
        uint32_t v = 0;
        memcpy(&v, e.data, std::min<size_t>(e.size, sizeof(v)));
        std::lock_guard<std::mutex> l(mu_);
        if (!exit_.has_value()) exit_ = VmExit{VmExit::Reason::kExitPort, v, static_cast<int>(i)};
        stopping_ = true;
        KickLocked();
        cv_.notify_all();
        return absl::OkStatus();
      }
      return absl::UnimplementedError(
          absl::StrFormat("vCPU %u: OUT of %u bytes to port 0x%x (no device)\n%s", i, e.size,
                          e.port, r.vcpu->DumpRegisters()));
    case VcpuExit::Kind::kIoIn:
      if (e.port >= FLT_SERIAL_PORT && e.port < FLT_SERIAL_PORT + 8) {
        // A 16550 at rest: LSR (offset 5) says "transmitter empty", the rest reads 0.
        uint8_t v = e.port == FLT_SERIAL_PORT + 5 ? 0x60 : 0;
        memset(e.data, v, size_t{e.size} * e.count);
        return absl::OkStatus();
      }
      return absl::UnimplementedError(
          absl::StrFormat("vCPU %u: IN of %u bytes from port 0x%x (no device)\n%s", i, e.size,
                          e.port, r.vcpu->DumpRegisters()));
  }
  return absl::InternalError("unknown vCPU exit kind");
}

// Records the first failure (with the code bytes at RIP) and stops every vCPU.
void Vm::Fail(size_t i, absl::Status status) {
  std::string code = CodeAt(*runners_[i].vcpu);
  std::lock_guard<std::mutex> l(mu_);
  if (failed_.ok()) {
    failed_ = code.empty() ? std::move(status)
                           : absl::Status(status.code(), absl::StrCat(status.message(), code));
  }
  runners_[i].state = RunState::kDone;
  stopping_ = true;
  KickLocked();
  cv_.notify_all();
}

void Vm::KickLocked() {
  for (Runner& r : runners_) {
    r.vcpu->SetImmediateExit(true);
    // Only a thread in kRunning is signalled: one in kDone may already be joined.
    if (r.state == RunState::kRunning) pthread_kill(r.handle, kKickSignal);
  }
}

bool Vm::AllStoppedLocked() const {
  for (const Runner& r : runners_) {
    if (r.state == RunState::kStarting || r.state == RunState::kRunning) return false;
  }
  return true;
}

absl::StatusOr<VmExit> Vm::WaitForExit(absl::Duration timeout) {
  std::unique_lock<std::mutex> l(mu_);
  bool done = cv_.wait_for(l, absl::ToChronoNanoseconds(timeout),
                           [&] { return exit_.has_value() || !failed_.ok(); });
  if (!failed_.ok()) return failed_;
  if (!done) {
    return absl::DeadlineExceededError(absl::StrCat(
        "guest still running after ", absl::FormatDuration(timeout), ": ", StatusLocked()));
  }
  return *exit_;
}

absl::StatusOr<std::string> Vm::WaitForLine(absl::string_view prefix, absl::Duration timeout) {
  std::unique_lock<std::mutex> l(mu_);
  const ConsoleLine* found = nullptr;
  bool done = cv_.wait_for(l, absl::ToChronoNanoseconds(timeout), [&] {
    found = console_.Find(prefix);
    return found != nullptr || exit_.has_value() || !failed_.ok();
  });
  if (found != nullptr) return found->text;
  if (!failed_.ok()) return failed_;
  std::string why =
      done ? "the guest finished" : absl::StrCat(absl::FormatDuration(timeout), " passed");
  return absl::DeadlineExceededError(
      absl::StrCat("no serial line starting with '", prefix, "': ", why, "; ", StatusLocked()));
}

std::vector<ConsoleLine> Vm::Lines() const {
  std::lock_guard<std::mutex> l(mu_);
  return std::vector<ConsoleLine>(console_.lines().begin(), console_.lines().end());
}

std::string Vm::StatusLocked() const {
  struct flt_mailbox m = ReadMailbox();
  std::string s;
  for (uint32_t i = 0; i < vcpus(); i++) {
    absl::StrAppendFormat(&s, "[vCPU %u phase=%u heartbeat=%u] ", i, m.cpu[i].phase,
                          m.cpu[i].heartbeat);
  }
  const auto& lines = console_.lines();
  s += lines.empty() ? "no serial output" : "last line: " + lines.back().text;
  return s;
}

absl::Status Vm::Pause(absl::Duration timeout) {
  std::unique_lock<std::mutex> l(mu_);
  pause_requested_ = true;
  if (!started_) return absl::OkStatus();
  KickLocked();
  bool ok = cv_.wait_for(l, absl::ToChronoNanoseconds(timeout), [&] { return AllStoppedLocked(); });
  if (!ok) {
    return absl::DeadlineExceededError(
        absl::StrCat("vCPUs did not leave KVM_RUN within ", absl::FormatDuration(timeout)));
  }
  return absl::OkStatus();
}

absl::Status Vm::Resume() {
  std::lock_guard<std::mutex> l(mu_);
  if (stopping_) return absl::FailedPreconditionError("VM stopped");
  pause_requested_ = false;
  cv_.notify_all();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<VcpuState>> Vm::SaveState() {
  std::lock_guard<std::mutex> l(mu_);
  if (!AllStoppedLocked()) {
    return absl::FailedPreconditionError("SaveState needs every vCPU paused (call Pause())");
  }
  std::vector<VcpuState> out;
  for (Runner& r : runners_) {
    absl::StatusOr<VcpuState> s = VcpuState::Save(*kvm_, *r.vcpu);
    if (!s.ok()) return s.status();
    out.push_back(std::move(*s));
  }
  return out;
}

absl::Status Vm::RestoreState(const std::vector<VcpuState>& states) {
  std::lock_guard<std::mutex> l(mu_);
  if (states.size() != runners_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("state for ", states.size(), " vCPUs, this VM has ", runners_.size()));
  }
  if (!AllStoppedLocked()) {
    return absl::FailedPreconditionError("RestoreState needs every vCPU paused");
  }
  for (size_t i = 0; i < states.size(); i++) {
    absl::Status s = states[i].Restore(*runners_[i].vcpu);
    if (!s.ok()) return s;
    // A halted vCPU gets to run its restored state.
    if (runners_[i].state == RunState::kHalted) runners_[i].state = RunState::kParked;
  }
  cv_.notify_all();
  return absl::OkStatus();
}

void Vm::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
    KickLocked();
    cv_.notify_all();
  }
  for (Runner& r : runners_) {
    if (r.thread.joinable()) r.thread.join();
  }
}

std::string Vm::CodeAt(const KvmVcpu& vcpu) const {
  struct kvm_regs regs;
  if (!vcpu.GetRegs(&regs).ok() || regs.rip + 16 > ram_->size()) return "";
  std::string s = "code at rip (identity-mapped):";
  for (int k = 0; k < 16; k++) {
    absl::StrAppendFormat(&s, " %02x", ram_->host_base()[regs.rip + k]);
  }
  return s + "\n";
}

}  // namespace faultline
