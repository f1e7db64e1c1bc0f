#include "qemu-integration/libvirt/migrate_compat.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace faultline {
namespace {

constexpr char kRemedy[] =
    "run the domain on QEMU 10.2 with faultline's series (qemu-integration/qemu/build_qemu.sh "
    "--version=10.2 prints the binary to name in <emulator>), or migrate with a libvirt that no "
    "longer passes 'detach'";

}  // namespace

std::string LibvirtVersionString(uint64_t v) {
  return absl::StrCat(v / 1000000, ".", v / 1000 % 1000, ".", v % 1000);
}

absl::Status CheckMigrateCompat(uint64_t libvirt_version, const QemuVersion& qemu) {
  if (qemu.major >= 11 && libvirt_version <= kLibvirtLastSeenWithDetach + 999) {
    return absl::FailedPreconditionError(absl::StrCat(
        "libvirt ", LibvirtVersionString(libvirt_version),
        " cannot migrate this domain: it passes "
        "the argument 'detach' to QEMU's migrate command, which QEMU 11.0 removed, and the "
        "domain runs QEMU ",
        qemu.major, ".", qemu.minor, ".", qemu.micro,
        " — every migration of it would fail (with faultline or without); ", kRemedy));
  }
  return absl::OkStatus();
}

std::string DetachHint(const std::string& migrate_error, uint64_t libvirt_version) {
  if (!absl::StrContains(migrate_error, "'detach' is unexpected")) return "";
  return absl::StrCat(" — libvirt ", LibvirtVersionString(libvirt_version),
                      " passes the argument 'detach' to QEMU's migrate command, which QEMU 11.0 "
                      "removed: it cannot migrate a domain on QEMU 11 or later; ",
                      kRemedy);
}

}  // namespace faultline
