// `faultline migrate`: the QEMU monitor passthrough (virDomainQemuMonitorCommand) for the
// pager capabilities and the warm-up connection, and libvirt's last error.
#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "qemu-integration/libvirt/libvirt_internal.h"

namespace faultline {
namespace libvirt_internal {

std::string LastError() {
  const char* m = virGetLastErrorMessage();
  return m != nullptr ? m : "unknown libvirt error";
}

void Quiet(void*, virErrorPtr) {}

absl::StatusOr<Json> Monitor(virDomainPtr dom, const Json& cmd) {
  char* out = nullptr;
  if (virDomainQemuMonitorCommand(dom, cmd.dump().c_str(), &out, 0) < 0) {
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
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(sa.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("bad warm-up socket path '", path, "'"));
  }
  std::memcpy(sa.sun_path, path.data(), path.size());
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    const int e = errno;
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot connect to the warm-up socket '", path,
                     "' (faultline source --vmm_dirty_socket): ", std::strerror(e)));
  }
  // The connection goes to the source QEMU with getfd; the fd travels over libvirt's own
  // socket, which only a local connection to libvirtd (qemu:///system, qemu+unix) can do.
  int in[1] = {fd};
  char* out = nullptr;
  const Json getfd = {{"execute", "getfd"}, {"arguments", {{"fdname", kWarmupFdName}}}};
  const int rc = virDomainQemuMonitorCommandWithFiles(dom, getfd.dump().c_str(), 1, in, nullptr,
                                                      nullptr, &out, 0);
  close(fd);
  if (rc < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("passing the warm-up connection to the source QEMU (getfd through the monitor "
                     "passthrough; the source libvirt must be a local connection): ",
                     LastError()));
  }
  Json reply = Json::parse(out != nullptr ? out : "", nullptr, /*allow_exceptions=*/false);
  free(out);
  if (reply.is_discarded() || reply.contains("error")) {
    return absl::FailedPreconditionError(absl::StrCat(
        "getfd: ", reply.is_discarded() ? "no JSON reply" : reply["error"].value("desc", "error")));
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
