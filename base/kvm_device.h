// OpenKvmDevice: opens /dev/kvm (O_RDWR | O_CLOEXEC), the one place that does.
//
// With FAULTLINE_HIDE_KVM=1 in the environment it fails with ENOENT as if the host had no
// /dev/kvm: tools/test.sh uses it to exercise, on a host that has KVM, the path every suite
// takes on one that has none (KVM tests then run in the KVM VM, tests/vm/).
#ifndef FAULTLINE_BASE_KVM_DEVICE_H_
#define FAULTLINE_BASE_KVM_DEVICE_H_

#include <errno.h>
#include <fcntl.h>

#include <cstdlib>
#include <cstring>

namespace faultline {

inline bool KvmHidden() {
  const char* v = std::getenv("FAULTLINE_HIDE_KVM");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

// A file descriptor, or -1 with errno set.
inline int OpenKvmDevice() {
  if (KvmHidden()) {
    errno = ENOENT;
    return -1;
  }
  return ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
}

}  // namespace faultline

#endif  // FAULTLINE_BASE_KVM_DEVICE_H_
