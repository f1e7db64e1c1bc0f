// faultline's end of the hand-off: HandoffServer (the listening socket) and HandoffSession (one
// connected VMM: its hello, then ack / progress / complete).
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "base/errno_status.h"
#include "qemu-integration/handoff/handoff.h"
#include "qemu-integration/handoff/handoff_wire.h"

namespace faultline {

using json = nlohmann::json;
using handoff_internal::CheckRegionFd;
using handoff_internal::CheckUserfaultfd;
using handoff_internal::Frame;
using handoff_internal::GetLe32;
using handoff_internal::kPrefix;
using handoff_internal::kSendTimeout;
using handoff_internal::PollMillis;
using handoff_internal::SendAll;
using handoff_internal::SetSendTimeout;
using handoff_internal::StatusMessage;
using handoff_internal::StreamReader;
using handoff_internal::UnixAddress;

namespace {

// Gives the parsed request its fds. Every received fd stays owned by `fds` (closed when it
// goes) or by the request.
absl::Status AttachFds(HandoffRequest* req, std::vector<UniqueFd>* fds) {
  UniqueFd& uffd = (*fds)[req->uffd_index];
  if (absl::Status s = CheckUserfaultfd(
          uffd.get(), absl::StrCat("hello: uffd_fd (index ", req->uffd_index, ")"));
      !s.ok()) {
    return s;
  }
  for (HandoffRegion& r : req->regions) {
    if (r.fd_index < 0) continue;
    // Regions may share one fd: each gets its own descriptor.
    int dup = fcntl((*fds)[r.fd_index].get(), F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return ErrnoStatus("fcntl(F_DUPFD_CLOEXEC)");
    r.fd.reset(dup);
    if (absl::Status s = CheckRegionFd(r); !s.ok()) return s;
  }
  req->uffd = std::move(uffd);
  return absl::OkStatus();
}

}  // namespace

// ---- HandoffServer ----

absl::StatusOr<std::unique_ptr<HandoffServer>> HandoffServer::Listen(const std::string& path) {
  absl::StatusOr<struct sockaddr_un> addr = UnixAddress(path);
  if (!addr.ok()) return addr.status();
  const auto* sa = reinterpret_cast<const struct sockaddr*>(&*addr);
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::AlreadyExistsError(
          absl::StrCat("'", path, "' exists and is not a socket; not replacing it"));
    }
    // A socket file: stale (nobody listening) or another live faultline.
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!probe.valid()) return ErrnoStatus("socket");
    if (::connect(probe.get(), sa, sizeof(*addr)) == 0 || errno == EAGAIN) {
      return absl::AlreadyExistsError(absl::StrCat("another process is listening on '", path, "'"));
    }
    if (errno != ECONNREFUSED) return ErrnoStatus(absl::StrCat("probe '", path, "'"));
    if (unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(absl::StrCat("unlink stale socket '", path, "'"));
    }
  } else if (errno != ENOENT) {
    return ErrnoStatus(absl::StrCat("lstat '", path, "'"));
  }

  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return ErrnoStatus("socket");
  if (::bind(fd.get(), sa, sizeof(*addr)) != 0) {
    return ErrnoStatus(absl::StrCat("bind '", path, "'"));
  }
  // connect() needs write permission on the file, and nobody can connect before listen(): the
  // mode is right before the socket is reachable.
  if (chmod(path.c_str(), 0600) != 0 || ::listen(fd.get(), 16) != 0 ||
      lstat(path.c_str(), &st) != 0) {
    int err = errno;
    unlink(path.c_str());
    return ErrnoStatus(absl::StrCat("set up '", path, "'"), err);
  }
  return std::unique_ptr<HandoffServer>(
      new HandoffServer(path, std::move(fd), st.st_dev, st.st_ino));
}

HandoffServer::~HandoffServer() {
  fd_.reset();
  struct stat st;
  if (lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) {
    unlink(path_.c_str());
  }
}

absl::StatusOr<AcceptedConnection> HandoffServer::AcceptConnection() {
  UniqueFd conn;
  for (;;) {
    // The listening socket is non-blocking; the accepted one is not (accept4 does not pass
    // O_NONBLOCK on), and sends to it are bounded by SO_SNDTIMEO.
    int c = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (c >= 0) {
      conn.reset(c);
      break;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return absl::UnavailableError(absl::StrCat("no connection pending on ", path_));
    }
    return ErrnoStatus("accept");
  }
  SetSendTimeout(conn.get(), kSendTimeout);
  struct ucred cred = {};
  socklen_t len = sizeof(cred);
  if (getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return ErrnoStatus("getsockopt(SO_PEERCRED)");
  }
  AcceptedConnection out;
  out.fd = std::move(conn);
  out.peer.pid = cred.pid;
  out.peer.uid = cred.uid;
  out.peer.gid = cred.gid;
  return out;
}

absl::StatusOr<std::unique_ptr<HandoffSession>> HandoffServer::Accept(absl::Duration timeout,
                                                                      uid_t allowed_uid) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    absl::StatusOr<AcceptedConnection> conn = AcceptConnection();
    if (!conn.ok()) {
      if (!absl::IsUnavailable(conn.status())) return conn.status();
      absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        return absl::DeadlineExceededError(absl::StrCat("no VMM connected to ", path_, " in time"));
      }
      struct pollfd p = {fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, PollMillis(left)) < 0 && errno != EINTR) return ErrnoStatus("poll");
      continue;
    }
    const PeerCredentials peer = conn->peer;
    if (peer.uid != 0 && peer.uid != allowed_uid) {
      absl::Status refused = absl::PermissionDeniedError(
          absl::StrCat("VMM pid ", peer.pid, " runs as uid ", peer.uid,
                       "; faultline accepts a hand-off only from uid 0 or uid ", allowed_uid));
      HandoffSession::Refuse(std::move(*conn), refused);
      return refused;
    }
    bool silent = false;
    absl::StatusOr<std::unique_ptr<HandoffSession>> s =
        HandoffSession::Open(std::move(*conn), absl::Now() + hello_timeout_, &silent);
    if (s.ok() || !silent) return s;
    // A probe (e.g. another faultline checking for a stale socket): wait for the next one.
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("no VMM connected to ", path_, " in time"));
    }
  }
}

// ---- HandoffSession ----

HandoffSession::HandoffSession(UniqueFd fd, const PeerCredentials& peer)
    : fd_(std::move(fd)), peer_(peer), reader_(std::make_unique<StreamReader>(fd_.get())) {}

HandoffSession::~HandoffSession() = default;

absl::StatusOr<std::unique_ptr<HandoffSession>> HandoffSession::Open(
    AcceptedConnection c, absl::Time deadline, bool* silent, const std::function<bool()>& stop) {
  bool ignored = false;
  if (silent == nullptr) silent = &ignored;
  *silent = false;
  if (!c.fd.valid()) return absl::InvalidArgumentError("HandoffSession::Open: no connection");
  std::unique_ptr<HandoffSession> session(new HandoffSession(std::move(c.fd), c.peer));
  absl::Status s = session->ReadHello(deadline, stop, silent);
  if (!s.ok()) {
    if (session->format() == HandoffFormat::kFaultline && !*silent) (void)session->Ack(s);
    return s;
  }
  session->request_.peer_pid = c.peer.pid;
  session->request_.peer_uid = c.peer.uid;
  return session;
}

void HandoffSession::Refuse(AcceptedConnection c, const absl::Status& why) {
  // Not a byte of the peer's is read. A Firecracker peer never reads; the ack is harmless.
  if (!c.fd.valid()) return;
  if (absl::StatusOr<std::string> f = Frame(StatusMessage("ack", why)); f.ok()) {
    (void)SendAll(c.fd.get(), *f, {});
  }
  c.fd.reset();
}

namespace {

absl::Status ReadError(const StreamReader& rd, const absl::Status& s, absl::string_view what) {
  if (absl::IsDeadlineExceeded(s)) {
    return absl::DeadlineExceededError(absl::StrCat(what, " did not arrive in time"));
  }
  if (absl::IsUnavailable(s)) {
    return absl::UnavailableError(
        absl::StrCat("the VMM went away before its ", what, " was complete (", s.message(), ")"));
  }
  if (rd.fds_truncated()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " carries more fds than faultline could receive (", s.message(), ")"));
  }
  return s;
}

// StreamReader::Fill until `deadline`, asking `stop` (when not null) every kHandoffStopPoll.
absl::Status FillOrStop(StreamReader& rd, absl::Time deadline, const std::function<bool()>& stop,
                        size_t max_bytes) {
  for (;;) {
    if (stop && stop()) return absl::CancelledError("faultline is stopping");
    const absl::Time until = stop ? std::min(deadline, absl::Now() + kHandoffStopPoll) : deadline;
    absl::Status s = rd.Fill(until, max_bytes);
    if (!absl::IsDeadlineExceeded(s) || absl::Now() >= deadline) return s;
  }
}

}  // namespace

absl::Status HandoffSession::ReadFrame(absl::Time deadline, const std::function<bool()>& stop,
                                       absl::string_view what, std::string* payload,
                                       std::vector<UniqueFd>* fds) {
  StreamReader& rd = *reader_;
  std::string& buf = rd.buffer();
  while (buf.size() < kPrefix) {
    if (absl::Status s = FillOrStop(rd, deadline, stop, kPrefix - buf.size()); !s.ok()) {
      return absl::IsCancelled(s) ? s : ReadError(rd, s, what);
    }
  }
  const uint32_t n = GetLe32(buf.data());
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat("empty ", what, " (length 0)"));
  if (n > kMaxHandoffMessage) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " of ", n, " bytes exceeds the ", kMaxHandoffMessage, "-byte limit"));
  }
  // Read no further than the message's last byte: fds belong to the message they came with.
  while (buf.size() < kPrefix + n) {
    if (absl::Status s = FillOrStop(rd, deadline, stop, kPrefix + n - buf.size()); !s.ok()) {
      return absl::IsCancelled(s) ? s : ReadError(rd, s, what);
    }
  }
  *payload = buf.substr(kPrefix, n);
  buf.erase(0, kPrefix + n);
  fds->clear();
  // One recvmsg ends right after the bytes that carry fds (the kernel never reads past them),
  // so fds received with bytes beyond this message (a VMM that sent its hello right behind
  // its attach) are that next message's.
  if (buf.empty()) {
    *fds = std::move(rd.fds());
    rd.fds().clear();
  }
  return absl::OkStatus();
}

absl::Status HandoffSession::ReadHello(absl::Time deadline, const std::function<bool()>& stop,
                                       bool* silent) {
  StreamReader& rd = *reader_;
  std::string& buf = rd.buffer();
  *silent = false;
  if (absl::Status s = rd.Fill(deadline, kPrefix + kMaxHandoffMessage); !s.ok()) {
    *silent = rd.eof() && buf.empty() && rd.fds().empty();
    return ReadError(rd, s, "the hand-off message");
  }
  // '[' opens Firecracker's JSON array. Our length prefix can start with 0x5B too, but then its
  // bytes 2..3 are zero (N <= 64 KiB), which JSON text never contains.
  const bool firecracker =
      buf[0] == '[' && !(buf.size() >= kPrefix && buf[2] == '\0' && buf[3] == '\0');
  HandoffRequest req;
  if (firecracker) {
    format_ = HandoffFormat::kFirecracker;
    // Sent in one sendmsg; should the read come up short, keep reading until the JSON parses.
    while (buf.size() <= kMaxHandoffMessage && !json::accept(buf)) {
      absl::Status s = rd.Fill(deadline, kMaxHandoffMessage + 1 - buf.size());
      if (absl::IsUnavailable(s)) break;  // the peer stopped sending: judge what came
      if (!s.ok()) return ReadError(rd, s, "Firecracker's hand-off");
    }
    if (buf.size() > kMaxHandoffMessage) {
      return absl::InvalidArgumentError(
          absl::StrCat("Firecracker hand-off exceeds the ", kMaxHandoffMessage, "-byte limit"));
    }
    absl::StatusOr<HandoffRequest> parsed = ParseFirecrackerMessage(buf);
    if (!parsed.ok()) return parsed.status();
    req = std::move(*parsed);
    if (rd.fds().size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Firecracker hand-off carries ", rd.fds().size(), " fds; expected exactly 1, the uffd"));
    }
    if (absl::Status s = CheckUserfaultfd(rd.fds()[0].get(), "Firecracker's fd"); !s.ok()) {
      return s;
    }
    req.uffd = std::move(rd.fds()[0]);
    rd.fds().clear();
    buf.clear();
  } else {
    format_ = HandoffFormat::kFaultline;
    std::string payload;
    std::vector<UniqueFd> fds;
    if (absl::Status s = ReadFrame(deadline, nullptr, "hello", &payload, &fds); !s.ok()) return s;
    // Version 2: an attach may come first (the VMM has its connection long before its hello).
    uint32_t attach_version = 0;
    const json first = json::parse(payload, nullptr, /*allow_exceptions=*/false);
    if (first.is_object() && first.value("type", json()) == "attach") {
      absl::StatusOr<uint32_t> v = ParseFaultlineAttach(payload, fds.size());
      if (!v.ok()) return v.status();
      attach_version = *v;
      {
        std::lock_guard<std::mutex> lock(send_mu_);
        if (absl::Status s = Send(
                json{{"type", "attached"}, {"version", attach_version}, {"pager", "faultline"}});
            !s.ok()) {
          return s;
        }
      }
      // The hello comes at the VMM's pace (QEMU: at post-copy ADVISE), bounded by
      // kAttachedHelloWait — and by `stop`.
      const absl::Time hello_deadline = std::max(deadline, absl::Now() + kAttachedHelloWait);
      if (absl::Status s = ReadFrame(hello_deadline, stop, "hello", &payload, &fds); !s.ok()) {
        if (absl::IsCancelled(s)) {
          return absl::CancelledError(
              "faultline stopped while waiting for the hello of a VMM that had attached");
        }
        return s;
      }
    }
    absl::StatusOr<HandoffRequest> parsed = ParseFaultlineHello(payload, fds.size());
    if (!parsed.ok()) return parsed.status();
    req = std::move(*parsed);
    if (attach_version != 0 && req.version != attach_version) {
      return absl::InvalidArgumentError(absl::StrCat(
          "hello: version ", req.version, " after an attach of version ", attach_version));
    }
    if (absl::Status s = AttachFds(&req, &fds); !s.ok()) return s;
    req.attached = attach_version != 0;
  }
  req.format = format_;
  request_ = std::move(req);
  return absl::OkStatus();
}

absl::Status HandoffSession::WaitListen(const std::function<bool()>& stop) {
  return WaitFor("listen", absl::InfiniteFuture(), stop,
                 "its migration failed or was cancelled before post-copy; faultline placed no "
                 "page",
                 "; it placed no page");
}

absl::Status HandoffSession::WaitRunning(absl::Time deadline, const std::function<bool()>& stop) {
  return WaitFor("running", deadline, stop, "", "");
}

absl::Status HandoffSession::WaitFor(absl::string_view type, absl::Time deadline,
                                     const std::function<bool()>& stop,
                                     absl::string_view consequence, absl::string_view stopped) {
  const std::string before = absl::StrCat("before \"", type, "\"");
  const std::string then = consequence.empty() ? "" : absl::StrCat(": ", consequence);
  const absl::Time start = absl::Now();
  if (format() != HandoffFormat::kFaultline) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(read_mu_);
  for (;;) {
    for (;;) {  // whole messages first: the one awaited or a bye may already be buffered
      std::string payload;
      absl::StatusOr<bool> got = reader_->PopFrame(&payload);
      reader_->fds().clear();  // nothing after the hello carries fds we want
      if (!got.ok()) {
        closed_ = true;
        return absl::UnavailableError(absl::StrCat("the VMM broke the hand-off framing ", before,
                                                   " (", got.status().message(), ")"));
      }
      if (!*got) break;
      const json m = json::parse(payload, nullptr, /*allow_exceptions=*/false);
      const json t = m.is_object() ? m.value("type", json()) : json();
      if (t.is_string() && t.get<std::string>() == type) return absl::OkStatus();
      if (t == "bye") {
        bye_ = closed_ = true;
        return absl::AbortedError(absl::StrCat("the VMM said bye ", before, then));
      }
      // Anything else: not for us (unknown types are skipped).
    }
    if (closed_) {
      return absl::UnavailableError(
          absl::StrCat("the VMM closed the hand-off connection ", before, then));
    }
    if (stop && stop()) {
      return absl::CancelledError(
          absl::StrCat("faultline stopped while waiting for the VMM's \"", type, "\"", stopped));
    }
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("the VMM did not say \"", type, "\" within ",
                                                      absl::FormatDuration(deadline - start)));
    }
    absl::Status s =
        reader_->Fill(std::min(deadline, now + kHandoffStopPoll), kPrefix + kMaxHandoffMessage);
    if (absl::IsDeadlineExceeded(s)) continue;
    if (!s.ok()) {
      closed_ = true;
      return absl::UnavailableError(absl::StrCat("the VMM closed the hand-off connection ", before,
                                                 " (", s.message(), ")", then));
    }
  }
}

absl::Status HandoffSession::Send(const json& message) {
  // Caller holds send_mu_.
  if (send_broken_) {
    return absl::FailedPreconditionError("an earlier send to the VMM failed; connection unusable");
  }
  absl::StatusOr<std::string> f = Frame(message);
  if (!f.ok()) return f.status();
  absl::Status s = SendAll(fd_.get(), *f, {});
  if (!s.ok()) send_broken_ = true;  // possibly part-way through a message
  return s;
}

absl::Status HandoffSession::Ack(const absl::Status& result) {
  if (format() == HandoffFormat::kFirecracker) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(send_mu_);
  if (acked_) return absl::FailedPreconditionError("the hand-off was already acknowledged");
  acked_ = true;
  ack_ok_ = result.ok();
  return Send(StatusMessage("ack", result));
}

absl::Status HandoffSession::SendProgress(uint64_t done, uint64_t total) {
  if (format() == HandoffFormat::kFirecracker) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(send_mu_);
  if (!ack_ok_) return absl::FailedPreconditionError("progress before a successful ack");
  return Send(json{{"type", "progress"}, {"done_pages", done}, {"total_pages", total}});
}

absl::Status HandoffSession::SendComplete(const absl::Status& result, const json& stats) {
  if (format() == HandoffFormat::kFirecracker) return absl::OkStatus();
  if (!stats.is_null() && !stats.is_object()) {
    return absl::InvalidArgumentError("complete: stats must be a JSON object");
  }
  std::lock_guard<std::mutex> lock(send_mu_);
  if (!ack_ok_) return absl::FailedPreconditionError("complete before a successful ack");
  json m = StatusMessage("complete", result);
  if (result.ok()) m["stats"] = stats.is_null() ? json::object() : stats;
  return Send(m);
}

bool HandoffSession::PeerClosed() {
  std::lock_guard<std::mutex> lock(read_mu_);
  for (int round = 0; round < 16 && !closed_; ++round) {
    if (format() == HandoffFormat::kFaultline) {
      for (;;) {  // whole messages first: a bye may already be buffered
        std::string payload;
        absl::StatusOr<bool> got = reader_->PopFrame(&payload);
        if (!got.ok()) {
          closed_ = true;  // garbage on the wire: the VMM is not following the protocol
          break;
        }
        if (!*got) break;
        const json m = json::parse(payload, nullptr, /*allow_exceptions=*/false);
        if (m.is_object()) {
          auto t = m.find("type");
          if (t != m.end() && t->is_string() && t->get<std::string>() == "bye") {
            bye_ = true;
            closed_ = true;
          }
        }
      }
    } else {
      reader_->buffer().clear();  // Firecracker sends nothing after its hand-off
    }
    if (closed_) break;
    absl::Status s = reader_->Fill(absl::InfinitePast(), kPrefix + kMaxHandoffMessage);
    reader_->fds().clear();  // nothing after the hello carries fds we want
    if (absl::IsDeadlineExceeded(s)) break;
    if (!s.ok()) closed_ = true;
  }
  return closed_;
}

bool HandoffSession::bye_received() {
  std::lock_guard<std::mutex> lock(read_mu_);
  return bye_;
}

}  // namespace faultline
