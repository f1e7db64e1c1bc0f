#include "qemu-integration/handoff/handoff_wire.h"

#include <linux/magic.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/errno_status.h"

namespace faultline {
namespace handoff_internal {

using json = nlohmann::json;

// ---- framing ----

void PutLe32(uint32_t v, char* p) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint32_t GetLe32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string FrameText(absl::string_view body) {
  std::string out(kPrefix, '\0');
  PutLe32(static_cast<uint32_t>(body.size()), &out[0]);
  out.append(body.data(), body.size());
  return out;
}

absl::StatusOr<std::string> Frame(const json& message) {
  std::string body = Dump(message);
  if (body.size() > kMaxHandoffMessage) {
    return absl::InvalidArgumentError(absl::StrCat(
        "message of ", body.size(), " bytes exceeds the ", kMaxHandoffMessage, "-byte limit"));
  }
  return FrameText(body);
}

absl::Status StreamReader::Fill(absl::Time deadline, size_t max_bytes) {
  if (eof_) return absl::UnavailableError("peer closed the connection");
  max_bytes = std::max<size_t>(max_bytes, 1);
  for (;;) {
    struct pollfd p = {fd_, POLLIN, 0};
    int rc = ::poll(&p, 1, PollMillis(deadline - absl::Now()));
    if (rc < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("poll");
    }
    if (rc == 0) {
      if (absl::Now() >= deadline) return absl::DeadlineExceededError("nothing arrived in time");
      continue;
    }
    const size_t old = buf_.size();
    buf_.resize(old + max_bytes);
    absl::StatusOr<size_t> r = RecvWithFds(fd_, &buf_[old], max_bytes, &fds_, MSG_DONTWAIT);
    buf_.resize(old + (r.ok() ? *r : 0));
    if (!r.ok()) {
      if (absl::IsDeadlineExceeded(r.status())) continue;  // EAGAIN after all: poll again
      if (absl::IsUnavailable(r.status())) {               // ECONNRESET
        eof_ = true;
        return absl::UnavailableError("peer reset the connection");
      }
      if (absl::IsDataLoss(r.status())) fds_truncated_ = true;
      return r.status();
    }
    if (*r == 0) {
      eof_ = true;
      return absl::UnavailableError("peer closed the connection");
    }
    return absl::OkStatus();
  }
}

absl::StatusOr<bool> StreamReader::PopFrame(std::string* payload) {
  if (buf_.size() < kPrefix) return false;
  uint32_t n = GetLe32(buf_.data());
  if (n == 0 || n > kMaxHandoffMessage) {
    return absl::InvalidArgumentError(
        absl::StrCat("message length ", n, " is outside 1..", kMaxHandoffMessage));
  }
  if (buf_.size() < kPrefix + n) return false;
  payload->assign(buf_, kPrefix, n);
  buf_.erase(0, kPrefix + n);
  return true;
}

absl::StatusOr<json> NextMessage(StreamReader& rd, absl::Time deadline, absl::string_view peer) {
  for (;;) {
    std::string payload;
    absl::StatusOr<bool> got = rd.PopFrame(&payload);
    if (!got.ok()) {
      return absl::DataLossError(
          absl::StrCat(peer, " sent a malformed frame: ", got.status().message()));
    }
    if (*got) {
      json m = json::parse(payload, nullptr, /*allow_exceptions=*/false);
      if (m.is_discarded() || !m.is_object() || !m.contains("type") || !m["type"].is_string()) {
        return absl::DataLossError(
            absl::StrCat(peer, " sent a message that is not a JSON object with a string \"type\""));
      }
      return m;
    }
    absl::Status s = rd.Fill(deadline, kPrefix + kMaxHandoffMessage);
    rd.fds().clear();  // nothing we read this way carries fds; close any that come
    if (absl::IsDeadlineExceeded(s)) {
      return absl::DeadlineExceededError(absl::StrCat("no message from ", peer, " in time"));
    }
    if (absl::IsUnavailable(s)) {
      return absl::UnavailableError(absl::StrCat(peer, " went away (", s.message(),
                                                 rd.buffer().empty() ? ")" : ", mid-message)"));
    }
    if (!s.ok()) return s;
  }
}

// ---- sockets ----

int PollMillis(absl::Duration left) {
  if (left <= absl::ZeroDuration()) return 0;
  int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)));
  return static_cast<int>(std::min<int64_t>(ms, 60 * 60 * 1000));
}

absl::Status SendAll(int fd, absl::string_view bytes, absl::Span<const int> fds) {
  absl::Status s = SendWithFds(fd, bytes, fds);
  if (absl::IsDeadlineExceeded(s)) {
    return absl::DeadlineExceededError("timed out sending to the peer (it is not reading)");
  }
  if (absl::IsUnavailable(s)) {
    return absl::UnavailableError("peer closed the connection (send failed)");
  }
  return s;
}

// ---- status <-> JSON ----

json StatusMessage(const char* type, const absl::Status& s) {
  json m = {{"type", type}, {"ok", s.ok()}};
  if (!s.ok()) {
    m["error"] = std::string(s.message());
    m["code"] = absl::StatusCodeToString(s.code());
  }
  return m;
}

absl::Status PeerStatus(const json& m, absl::string_view context) {
  std::string error = "(no error message)";
  auto e = m.find("error");
  if (e != m.end() && e->is_string()) error = e->get<std::string>();
  absl::StatusCode code = absl::StatusCode::kUnknown;
  auto c = m.find("code");
  if (c != m.end() && c->is_string()) {
    const std::string name = c->get<std::string>();
    for (int i = 1; i <= 16; ++i) {
      if (absl::StatusCodeToString(static_cast<absl::StatusCode>(i)) == name) {
        code = static_cast<absl::StatusCode>(i);
      }
    }
  }
  return absl::Status(code, absl::StrCat(context, error));
}

// ---- received fds ----

std::string FdTarget(int fd) {
  char link[64];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  char target[256];
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  if (n < 0) return "";
  return std::string(target, static_cast<size_t>(n));
}

absl::Status CheckUserfaultfd(int fd, absl::string_view what) {
  std::string target = FdTarget(fd);
  if (!target.empty() && target != "anon_inode:[userfaultfd]") {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not a userfaultfd (the fd is ", target, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckRegionFd(const HandoffRegion& r) {
  std::string where = absl::StrCat("hello: region \"", r.name, "\" (fd index ", r.fd_index, ")");
  struct stat st;
  if (fstat(r.fd.get(), &st) != 0) return ErrnoStatus(absl::StrCat(where, ": fstat"));
  if ((r.kind == MemoryKind::kMemfd || r.kind == MemoryKind::kHugetlb) && !S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": a ", MemoryKindName(r.kind),
                                                   " region needs a memfd or file, got ",
                                                   FdTarget(r.fd.get())));
  }
  if (r.kind == MemoryKind::kHugetlb) {
    struct statfs fs;
    if (fstatfs(r.fd.get(), &fs) != 0) return ErrnoStatus(absl::StrCat(where, ": fstatfs"));
    if (static_cast<uint64_t>(fs.f_type) != HUGETLBFS_MAGIC) {
      return absl::InvalidArgumentError(absl::StrCat(where,
                                                     ": kind hugetlb, but the fd is not "
                                                     "on hugetlbfs"));
    }
    if (static_cast<uint64_t>(fs.f_bsize) != r.page_size) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": page_size ", r.page_size,
                                                     " but the fd's huge pages are ", fs.f_bsize,
                                                     " bytes"));
    }
  }
  if (static_cast<uint64_t>(st.st_size) < r.offset + r.length) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": the fd is ", st.st_size,
                     " bytes, smaller than offset + length = ", r.offset + r.length));
  }
  return absl::OkStatus();
}

}  // namespace handoff_internal
}  // namespace faultline
