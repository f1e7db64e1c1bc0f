// `faultline migrate`: the QEMU monitor passthrough (virDomainQemuMonitorCommand) for the
// pager capability, and libvirt's last error.
#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <cstdlib>

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

absl::StatusOr<bool> HasPagerCapability(virDomainPtr dom) {
  absl::StatusOr<Json> caps = Monitor(dom, {{"execute", "query-migrate-capabilities"}});
  if (!caps.ok()) return caps.status();
  for (const Json& c : *caps) {
    if (c.value("capability", "") == kCap) return c.value("state", false);
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "the domain's QEMU has no '", kCap,
      "' migration capability: its emulator must be QEMU with faultline's series "
      "(qemu-integration/qemu/build_qemu.sh prints the binary to name in <emulator>)"));
}

absl::Status SetPagerCapabilities(virDomainPtr dom, bool on) {
  Json caps = Json::array();
  for (const char* c : {"postcopy-ram", "x-ignore-shared", kCap}) {
    caps.push_back({{"capability", c}, {"state", on}});
  }
  return Monitor(dom,
                 {{"execute", "migrate-set-capabilities"}, {"arguments", {{"capabilities", caps}}}})
      .status();
}

}  // namespace libvirt_internal
}  // namespace faultline
