// Turns an errno into an absl::Status that names the failed call.
#ifndef FAULTLINE_BASE_ERRNO_STATUS_H_
#define FAULTLINE_BASE_ERRNO_STATUS_H_

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace faultline {

inline absl::Status ErrnoStatus(absl::string_view what, int err = errno) {
  std::string msg = absl::StrCat(what, ": ", strerror(err), " (errno ", err, ")");
  switch (err) {
    case EINVAL:
      return absl::InvalidArgumentError(msg);
    case ENOENT:
      return absl::NotFoundError(msg);
    case EPERM:
    case EACCES:
      return absl::PermissionDeniedError(msg);
    case ENOMEM:
    case ENOSPC:
      return absl::ResourceExhaustedError(msg);
    case EEXIST:
      return absl::AlreadyExistsError(msg);
    case ECONNRESET:
    case EPIPE:
    case ECONNREFUSED:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

}  // namespace faultline

#endif  // FAULTLINE_BASE_ERRNO_STATUS_H_
