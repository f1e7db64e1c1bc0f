// `faultline migrate`: the QEMU monitor passthrough (virDomainQemuMonitorCommand) for the
// pager capabilities and the warm-up connection, and libvirt's last error.
#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/unique_fd.h"
#include "base/unix_socket.h"
#include "qemu-integration/libvirt/libvirt_internal.h"

namespace faultline {
namespace libvirt_internal {

std::string LastError() {
  const char* m = virGetLastErrorMessage();
  return m != nullptr ? m : "unknown libvirt error";
}

void Quiet(void*, virErrorPtr) {}

absl::StatusOr<Json> Monitor(virDomainPtr dom, const Json& cmd, int fd) {
  char* out = nullptr;
  // With an fd: it travels over libvirt's own socket (SCM_RIGHTS), which only a local
  // connection to libvirtd (qemu:///system, qemu+unix) can carry.
  const int rc = fd < 0 ? virDomainQemuMonitorCommand(dom, cmd.dump().c_str(), &out, 0)
                        : virDomainQemuMonitorCommandWithFiles(dom, cmd.dump().c_str(), 1, &fd,
                                                               nullptr, nullptr, &out, 0);
  if (rc < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "QEMU monitor passthrough (", cmd["execute"].get<std::string>(), "): ", LastError()));
  }
  Json reply = Json::parse(out, nullptr, /*allow_exceptions=*/false);
  free(out);
  if (reply.is_discarded()) return absl::InternalError("QEMU's monitor reply is not JSON");
  if (reply.contains("error")) {
    return absl::FailedPreconditionError(absl::StrCat(cmd["execute"].get<std::string>(), ": ",
                                                      reply["error"].value("desc", "error")));
  }
  return reply.value("return", Json());
}

absl::StatusOr<PagerSeries> QueryPagerSeries(virDomainPtr dom) {
  absl::StatusOr<Json> caps = Monitor(dom, {{"execute", "query-migrate-capabilities"}});
  if (!caps.ok()) return caps.status();
  PagerSeries s;
  bool found = false;
  for (const Json& c : *caps) {
    const std::string name = c.value("capability", "");
    if (name == kCap) {
      found = true;
      s.on = c.value("state", false);
    }
    if (name == "switchover-ack") s.switchover_ack = true;
  }
  if (!found) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the domain's QEMU has no '", kCap,
        "' migration capability: its emulator must be QEMU with faultline's series "
        "(qemu-integration/qemu/build_qemu.sh prints the binary to name in <emulator>)"));
  }
  return s;
}

absl::StatusOr<bool> HasPagerCapability(virDomainPtr dom) {
  absl::StatusOr<PagerSeries> s = QueryPagerSeries(dom);
  if (!s.ok()) return s.status();
  return s->on;
}

absl::Status SetPagerCapabilities(virDomainPtr dom, bool on, bool switchover_ack) {
  Json caps = Json::array();
  std::vector<const char*> names = {"postcopy-ram", "x-ignore-shared"};
  if (switchover_ack) {
    names.push_back("return-path");
    names.push_back("switchover-ack");
  }
  names.push_back(kCap);  // QEMU checks the whole set once, after applying every change
  for (const char* c : names) caps.push_back({{"capability", c}, {"state", on}});
  return Monitor(dom,
                 {{"execute", "migrate-set-capabilities"}, {"arguments", {{"capabilities", caps}}}})
      .status();
}

absl::Status GiveWarmupConnection(virDomainPtr dom, const std::string& path) {
  // One attempt: `faultline source` is up before the migration is started.
  absl::StatusOr<UniqueFd> conn = ConnectUnix(path, absl::Now());
  if (!conn.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "the warm-up socket (faultline source --vmm_dirty_socket): ", conn.status().message()));
  }
  // The send timeout that bounded connect() goes: QEMU's sends on it must block as on any
  // socket it is given.
  SetSendTimeout(conn->get(), absl::InfiniteDuration());
  // The connection goes to the source QEMU with getfd.
  absl::StatusOr<Json> got =
      Monitor(dom, {{"execute", "getfd"}, {"arguments", {{"fdname", kWarmupFdName}}}}, conn->get());
  if (!got.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("passing the warm-up connection to the source QEMU (the source libvirt must "
                     "be a local connection): ",
                     got.status().message()));
  }
  return Monitor(dom, {{"execute", "migrate-set-parameters"},
                       {"arguments", {{"x-postcopy-external-pager-fd", kWarmupFdName}}}})
      .status();
}

absl::Status DropWarmupConnection(virDomainPtr dom) {
  return Monitor(dom, {{"execute", "migrate-set-parameters"},
                       {"arguments", {{"x-postcopy-external-pager-fd", ""}}}})
      .status();
}

}  // namespace libvirt_internal
}  // namespace faultline
