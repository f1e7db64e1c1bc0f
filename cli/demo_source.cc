// `faultline demo`, the source side: the control channel to the destination and the source
// process (the reference VMM runs the guest on memfd RAM, pauses it, serves its RAM).
#include <sys/socket.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/scm_rights.h"
#include "cli/demo_internal.h"
#include "engine/fault_stats.h"
#include "qemu-integration/guest/guest_abi.h"
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

}  // namespace demo_internal
}  // namespace faultline
