// Which libvirt can drive which QEMU's migration at all — checked before anything moves.
//
// libvirt sends QEMU's `migrate` command itself. Up to (at least) 9.0, the libvirt Debian 12
// ships, it always passes the argument `detach: true`; QEMU ignored it for years and removed it
// in 11.0 (QEMU's docs/about/removed-features.rst), so QEMU >= 11.0 refuses such a `migrate`
// ("Parameter 'detach' is unexpected") — every migration of that domain, with faultline or
// without. Found by the libvirt suite with --qemu_version=11.1 (tests/libvirt).
#ifndef FAULTLINE_QEMU_INTEGRATION_LIBVIRT_MIGRATE_COMPAT_H_
#define FAULTLINE_QEMU_INTEGRATION_LIBVIRT_MIGRATE_COMPAT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace faultline {

struct QemuVersion {
  int major = 0, minor = 0, micro = 0;
};

// libvirt's version as virConnectGetLibVersion() gives it: major * 1,000,000 + minor * 1,000 +
// release.
std::string LibvirtVersionString(uint64_t v);

// The newest libvirt seen passing `detach` (9.0.0, Debian 12's). Newer ones are not refused up
// front; if one fails the same way, the migration's error names the cause (DetachHint).
inline constexpr uint64_t kLibvirtLastSeenWithDetach = 9000000;

// FailedPrecondition when this libvirt cannot migrate a domain running this QEMU, with what to
// change; OK otherwise.
absl::Status CheckMigrateCompat(uint64_t libvirt_version, const QemuVersion& qemu);

// For a failed migration's error text: the explanation to append when it is the `detach`
// refusal, else empty.
std::string DetachHint(const std::string& migrate_error, uint64_t libvirt_version);

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_LIBVIRT_MIGRATE_COMPAT_H_
