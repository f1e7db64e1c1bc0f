#include "serve/control.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/errno_status.h"
#include "base/unix_socket.h"

namespace faultline {
namespace {

// Reads until a newline or EOF, at most kMaxControlRequest bytes, by the deadline.
absl::StatusOr<std::string> ReadLine(int fd, absl::Time deadline) {
  std::string buf;
  char chunk[4096];
  while (buf.find('\n') == std::string::npos) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError("the control request did not arrive in time");
    }
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("poll");
    }
    if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
    ssize_t n = read(fd, chunk, sizeof(chunk));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return ErrnoStatus("read");
    if (n == 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    if (buf.size() > kMaxControlRequest) {
      return absl::InvalidArgumentError(
          absl::StrCat("control message over ", kMaxControlRequest, " bytes"));
    }
  }
  const size_t nl = buf.find('\n');
  if (nl != std::string::npos) buf.resize(nl);
  return buf;
}

absl::Status WriteAllFd(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("send");
    off += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

nlohmann::json ControlError(const absl::Status& s) {
  return {{"ok", false},
          {"error", std::string(s.message())},
          {"code", absl::StatusCodeToString(s.code())}};
}

absl::StatusOr<UniqueFd> ListenControl(const std::string& path) {
  absl::StatusOr<sockaddr_un> a = UnixAddress(path);
  if (!a.ok()) return a.status();
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return ErrnoStatus("socket");
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::AlreadyExistsError(absl::StrCat("'", path, "' exists and is not a socket"));
    }
    UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (connect(probe.get(), reinterpret_cast<const sockaddr*>(&*a), sizeof(*a)) == 0) {
      return absl::AlreadyExistsError(
          absl::StrCat("another faultline daemon listens on '", path, "'"));
    }
    unlink(path.c_str());
  }
  const std::string dir = path.substr(0, path.rfind('/'));
  if (!dir.empty() && dir != path) mkdir(dir.c_str(), 0755);
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&*a), sizeof(*a)) != 0) {
    return ErrnoStatus(absl::StrCat("bind '", path, "'"));
  }
  if (chmod(path.c_str(), 0600) != 0 || listen(fd.get(), 16) != 0) {
    const int err = errno;
    unlink(path.c_str());
    return ErrnoStatus(absl::StrCat("set up '", path, "'"), err);
  }
  return fd;
}

absl::StatusOr<UniqueFd> AcceptControl(int listen_fd, uid_t* uid) {
  int c = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (c < 0) return ErrnoStatus("accept");
  UniqueFd fd(c);
  struct ucred cred = {};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return ErrnoStatus("SO_PEERCRED");
  }
  *uid = cred.uid;
  if (cred.uid != 0 && cred.uid != geteuid()) {
    (void)WriteControlReply(
        fd.get(), ControlError(absl::PermissionDeniedError(
                      absl::StrCat("uid ", cred.uid, " may not control this faultline daemon"))));
    return absl::PermissionDeniedError("control peer not allowed");
  }
  return fd;
}

absl::StatusOr<nlohmann::json> ReadControlRequest(int fd, absl::Duration timeout) {
  absl::StatusOr<std::string> line = ReadLine(fd, absl::Now() + timeout);
  if (!line.ok()) return line.status();
  nlohmann::json j = nlohmann::json::parse(*line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("the control request is not a JSON object");
  }
  return j;
}

absl::Status WriteControlReply(int fd, const nlohmann::json& reply) {
  return WriteAllFd(fd, reply.dump() + "\n");
}

absl::StatusOr<nlohmann::json> ControlCall(const std::string& path, const nlohmann::json& request,
                                           absl::Duration timeout) {
  absl::StatusOr<sockaddr_un> a = UnixAddress(path);
  if (!a.ok()) return a.status();
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus("socket");
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&*a), sizeof(*a)) != 0) {
    return absl::UnavailableError(
        absl::StrCat("no faultline daemon on ", path, ": ", strerror(errno)));
  }
  if (absl::Status s = WriteAllFd(fd.get(), request.dump() + "\n"); !s.ok()) return s;
  absl::StatusOr<std::string> line = ReadLine(fd.get(), absl::Now() + timeout);
  if (!line.ok()) return line.status();
  nlohmann::json j = nlohmann::json::parse(*line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat("the daemon answered something else: ", *line));
  }
  return j;
}

}  // namespace faultline
