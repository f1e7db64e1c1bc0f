// `faultline demo`, the source side: the control channel to the destination and the source
// process (the reference VMM runs the guest on memfd RAM, pauses it, serves its RAM).
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/scm_rights.h"
#include "cli/demo_internal.h"
#include "engine/fault_stats.h"
#include "qemu-integration/guest/guest_abi.h"
#include "qemu-integration/vmm/dirty_log.h"
#include "qemu-integration/vmm/vm.h"
#include "transport/page_server.h"
#include "transport/socket.h"

namespace faultline {
namespace demo_internal {

uint64_t NowNs() { return FaultStats::NowNs(); }

absl::Status SendMsg(int sock, const std::string& data, int fd) {
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

constexpr size_t kHelloSize = 4 + kTokenSize + 28;

std::string EncodeSourceHello(const SourceHello& h) {
  std::string s(kHelloSize, '\0');
  const uint32_t flags = h.warmup ? 1 : 0;
  memcpy(&s[0], &h.port, 4);
  memcpy(&s[4], h.token.data(), kTokenSize);
  memcpy(&s[4 + kTokenSize], &h.paused_at_ns, 8);
  memcpy(&s[12 + kTokenSize], &h.data_start, 8);
  memcpy(&s[20 + kTokenSize], &h.data_end, 8);
  memcpy(&s[28 + kTokenSize], &flags, 4);
  return s + h.states;
}

absl::StatusOr<SourceHello> DecodeSourceHello(const std::string& s) {
  if (s.size() < kHelloSize) {
    if (s.rfind("ERR ", 0) == 0) return absl::InternalError(absl::StrCat("source: ", s.substr(4)));
    return absl::InvalidArgumentError("short message from the source process");
  }
  SourceHello h;
  uint32_t flags;
  memcpy(&h.port, &s[0], 4);
  memcpy(h.token.data(), &s[4], kTokenSize);
  memcpy(&h.paused_at_ns, &s[4 + kTokenSize], 8);
  memcpy(&h.data_start, &s[12 + kTokenSize], 8);
  memcpy(&h.data_end, &s[20 + kTokenSize], 8);
  memcpy(&flags, &s[28 + kTokenSize], 4);
  h.warmup = flags & 1;
  h.states = s.substr(kHelloSize);
  return h;
}

std::string EncodeSourceSwitch(const SourceSwitch& w) {
  std::string s(16, '\0');
  memcpy(&s[0], &w.paused_at_ns, 8);
  memcpy(&s[8], &w.confirmed_at_ns, 8);
  return s + w.states;
}

absl::StatusOr<SourceSwitch> DecodeSourceSwitch(const std::string& s) {
  if (s.size() < 16) {
    if (s.rfind("ERR ", 0) == 0) return absl::InternalError(absl::StrCat("source: ", s.substr(4)));
    return absl::InvalidArgumentError("short switch message from the source process");
  }
  SourceSwitch w;
  memcpy(&w.paused_at_ns, &s[0], 8);
  memcpy(&w.confirmed_at_ns, &s[8], 8);
  w.states = s.substr(16);
  return w;
}

absl::Status SourceMain(int ctl, const DemoOptions& o, const std::string& elf) {
  VmOptions vo;
  vo.ram_size = o.ram_size;
  vo.backing = RamBacking::kMemfd;
  vo.vcpus = o.vcpus;
  absl::StatusOr<std::unique_ptr<Vm>> vm = Vm::Create(vo);
  if (!vm.ok()) return vm.status();
  if (absl::StatusOr<ElfImage> img = (*vm)->LoadElf(elf); !img.ok()) return img.status();
  const bool warm = o.engine.warmup.enabled;
  const int32_t churn = warm && o.churn_permille < 0 ? 0 : o.churn_permille;
  WorkloadConfig wc;
  wc.seed = o.seed;
  wc.touches = o.touches;
  wc.mode = FLT_MODE_DEFAULT | (churn >= 0 ? FLT_MODE_CHURN : 0);
  wc.churn_permille = static_cast<uint32_t>(std::max(0, churn));
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
  SourceHello h;
  struct flt_mailbox mb = (*vm)->ReadMailbox();
  h.data_start = mb.data_start;
  h.data_end = mb.data_end;
  // Pauses the guest for good, tells it to stop churning (a write the dirty log does not see:
  // reported to the tracker, if any), and serializes the vCPUs.
  VmDirtyTracker* tracker_raw = nullptr;
  SourceSwitch sw;
  auto stop_guest = [&]() -> absl::Status {
    if (churn >= 0) {
      // Quiesce the churn first (guest_abi.h): each vCPU prints its churn line, then waits.
      (*vm)->SetChurnStop(1);
      for (uint32_t c = 0; c < o.vcpus; ++c) {
        absl::StatusOr<std::string> l =
            (*vm)->WaitForLine(absl::StrCat("FLT cpu=", c, " phase=churn"), absl::Minutes(1));
        if (!l.ok()) return l.status();
      }
    }
    if (absl::Status s = (*vm)->Pause(); !s.ok()) return s;
    sw.paused_at_ns = NowNs();
    const uint64_t gpa = (*vm)->SetChurnStop(2);
    if (tracker_raw != nullptr) tracker_raw->MarkDirty(gpa, sizeof(uint32_t));
    absl::StatusOr<std::vector<VcpuState>> states = (*vm)->SaveState();
    if (!states.ok()) return states.status();
    sw.states = SerializeVcpuStates(*states);
    return absl::OkStatus();
  };
  std::unique_ptr<VmDirtyTracker> tracker;
  if (warm) {
    // Logging starts before the page server exists, so before any page is read.
    absl::StatusOr<std::unique_ptr<VmDirtyTracker>> t =
        VmDirtyTracker::Create(vm->get(), stop_guest, [&] {
          // The final round is applied at the destination: it may run the guest now.
          sw.confirmed_at_ns = NowNs();
          (void)SendMsg(ctl, EncodeSourceSwitch(sw));
        });
    if (!t.ok()) return t.status();
    tracker = std::move(*t);
    tracker_raw = tracker.get();
    h.warmup = true;
    h.paused_at_ns = NowNs();  // the migration starts now; the guest runs on
  } else {
    if (absl::Status s = stop_guest(); !s.ok()) return s;
    h.paused_at_ns = sw.paused_at_ns;
    h.states = sw.states;
  }
  absl::StatusOr<SourceRegion> region =
      SourceRegion::MapFd("ram", (*vm)->ram().fd(), 0, o.ram_size, 4096);
  if (!region.ok()) return region.status();
  std::vector<SourceRegion> regions;
  regions.push_back(std::move(*region));
  h.token = RandomToken();
  PageServer server(std::move(regions), h.token, o.server_tls, tracker.get());
  server.SetUrgentSlice(o.engine.fault_slice);  // one knob for the whole fault path
  server.SetBulkThreads(o.bulk_threads);
  absl::StatusOr<UniqueFd> listen = ListenTcp("127.0.0.1:0");
  if (!listen.ok()) return listen.status();
  absl::StatusOr<int> port = BoundPort(listen->get());
  if (!port.ok()) return port.status();
  h.port = static_cast<uint32_t>(*port);
  if (absl::Status s = SendMsg(ctl, EncodeSourceHello(h), (*vm)->ram().fd()); !s.ok()) return s;
  // Serve until faultline says every page is present. The paused VM stays as it is.
  absl::Status served = server.Serve(listen->get());
  if (tracker != nullptr && tracker->throttle().pauses() > 0) {
    std::printf("  [source] warm-up throttle: the guest was paused %llu times, %s in all\n",
                static_cast<unsigned long long>(tracker->throttle().pauses()),
                absl::FormatDuration(tracker->throttle().paused_time()).c_str());
    std::fflush(stdout);
  }
  return served;
}

}  // namespace demo_internal
}  // namespace faultline
