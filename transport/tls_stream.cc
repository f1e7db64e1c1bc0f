// Stream: one connection, plain TCP or TLS, behind one interface (tls.h); the socket BIO and
// the waiting on the socket that TLS reads and writes share.
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "transport/socket.h"
#include "transport/tls.h"
#include "transport/tls_internal.h"

namespace faultline {
namespace tls_internal {
namespace {

// ---- A socket BIO that never raises SIGPIPE (OpenSSL's own uses write(2)). ----

struct SockBio {
  int fd;
  bool eof;
};

int BioWrite(BIO* b, const char* data, int len) {
  auto* s = static_cast<SockBio*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  ssize_t w;
  do {
    w = ::send(s->fd, data, static_cast<size_t>(len), MSG_NOSIGNAL);
  } while (w < 0 && errno == EINTR);
  if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_write(b);
  return static_cast<int>(w);
}

int BioRead(BIO* b, char* data, int len) {
  auto* s = static_cast<SockBio*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  ssize_t r;
  do {
    r = ::recv(s->fd, data, static_cast<size_t>(len), 0);
  } while (r < 0 && errno == EINTR);
  if (r == 0) s->eof = true;
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) BIO_set_retry_read(b);
  return static_cast<int>(r);
}

int BioPuts(BIO* b, const char* str) { return BioWrite(b, str, static_cast<int>(strlen(str))); }

long BioCtrl(BIO* b, int cmd, long num, void* ptr) {
  auto* s = static_cast<SockBio*>(BIO_get_data(b));
  switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_EOF: return s && s->eof ? 1 : 0;
    default: return 0;
  }
}

int BioCreate(BIO* b) { return 1; }

int BioDestroy(BIO* b) {
  delete static_cast<SockBio*>(BIO_get_data(b));
  BIO_set_data(b, nullptr);
  BIO_set_init(b, 0);
  return 1;
}

const BIO_METHOD* SocketBioMethod() {
  static const BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
                                 "faultline socket");
    BIO_meth_set_write(m, BioWrite);
    BIO_meth_set_read(m, BioRead);
    BIO_meth_set_puts(m, BioPuts);
    BIO_meth_set_ctrl(m, BioCtrl);
    BIO_meth_set_create(m, BioCreate);
    BIO_meth_set_destroy(m, BioDestroy);
    return m;
  }();
  return method;
}

}  // namespace

absl::Status SetNonBlocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return ErrnoStatus("fcntl O_NONBLOCK");
  return absl::OkStatus();
}

// poll() one fd for `events` for up to `timeout` (infinite when zero or negative with
// `forever`). Returns false on timeout.
bool PollFd(int fd, short events, absl::Duration timeout, bool forever) {
  while (true) {
    int ms = -1;
    if (!forever) {
      if (timeout <= absl::ZeroDuration()) return false;
      ms = static_cast<int>(std::min<int64_t>(
          absl::ToInt64Milliseconds(absl::Ceil(timeout, absl::Milliseconds(1))), 1 << 30));
    }
    struct pollfd p = {fd, events, 0};
    const absl::Time t0 = absl::Now();
    int n = ::poll(&p, 1, ms);
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return true;  // let the next I/O call report the error
    if (!forever) timeout -= absl::Now() - t0;
  }
}

SSL* NewSsl(ssl_ctx_st* ctx, int fd) {
  SSL* ssl = SSL_new(ctx);
  if (!ssl) return nullptr;
  BIO* bio = BIO_new(SocketBioMethod());
  if (!bio) {
    SSL_free(ssl);
    return nullptr;
  }
  BIO_set_data(bio, new SockBio{fd, false});
  BIO_set_init(bio, 1);
  SSL_set_bio(ssl, bio, bio);
  SSL_set_mode(ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return ssl;
}

}  // namespace tls_internal

using tls_internal::Capture;
using tls_internal::DataError;
using tls_internal::kRecordBytes;
using tls_internal::PeerClosed;
using tls_internal::PollFd;
using tls_internal::SslFailure;

// ---- Stream ----

Stream::Stream() = default;
Stream::Stream(UniqueFd fd) : fd_(std::move(fd)) {}
Stream::Stream(Stream&& o) noexcept = default;

Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    tls_.reset();  // close_notify goes out on the old socket before it is closed
    fd_ = std::move(o.fd_);
    tls_ = std::move(o.tls_);
  }
  return *this;
}

Stream::~Stream() { tls_.reset(); }

std::string Stream::Describe() const {
  if (!tls_) return "plain TCP";
  std::lock_guard<std::mutex> l(tls_->mu);
  return absl::StrCat(SSL_get_version(tls_->ssl), " ", SSL_get_cipher_name(tls_->ssl));
}

void Stream::SetReadTimeout(absl::Duration timeout) {
  if (tls_) {
    std::lock_guard<std::mutex> l(tls_->mu);
    tls_->read_timeout = timeout;
    return;
  }
  struct timeval tv = absl::ToTimeval(timeout);
  setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

void Stream::ShutdownSocket() {
  if (fd_.valid()) ::shutdown(fd_.get(), SHUT_RDWR);
}

void Stream::SpinUntilReadable(const std::atomic<bool>& stop) {
  if (tls_) {
    std::lock_guard<std::mutex> l(tls_->mu);
    // Bytes OpenSSL already holds: the next read starts with them.
    if (tls_->failed || SSL_has_pending(tls_->ssl)) return;
  }
  uint8_t b;
  while (!stop.load(std::memory_order_relaxed)) {
    ssize_t r = ::recv(fd_.get(), &b, 1, MSG_DONTWAIT | MSG_PEEK);
    if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) break;
  }
}

absl::Status Stream::ReadAll(void* data, size_t n) {
  if (!tls_) return faultline::ReadAll(fd_.get(), data, n);
  auto* p = static_cast<uint8_t*>(data);
  const size_t want = n;
  {
    // Nothing buffered in OpenSSL: wait for the socket first (poll + recv rather than a recv
    // that fails with EAGAIN, then poll, then recv: one syscall less per wait).
    absl::Duration timeout;
    bool pending;
    {
      std::lock_guard<std::mutex> l(tls_->mu);
      timeout = tls_->read_timeout;
      pending = tls_->failed || SSL_has_pending(tls_->ssl);
    }
    if (!pending && n > 0 && !PollFd(fd_.get(), POLLIN, timeout, timeout == absl::ZeroDuration())) {
      return absl::DeadlineExceededError("peer did not answer in time");
    }
  }
  while (n > 0) {
    SslFailure f;
    absl::Duration timeout;
    {
      std::lock_guard<std::mutex> l(tls_->mu);
      if (tls_->failed) return absl::UnavailableError("the TLS connection already failed");
      timeout = tls_->read_timeout;
      size_t got = 0;
      ERR_clear_error();
      const int r = SSL_read_ex(tls_->ssl, p, n, &got);
      if (r == 1) {
        p += got;
        n -= got;
        continue;
      }
      f = Capture(tls_->ssl, r);
      if (f.code != SSL_ERROR_WANT_READ && f.code != SSL_ERROR_WANT_WRITE) tls_->failed = true;
    }
    if (f.code == SSL_ERROR_WANT_READ || f.code == SSL_ERROR_WANT_WRITE) {
      const bool forever = timeout == absl::ZeroDuration();
      if (!PollFd(fd_.get(), f.code == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, timeout, forever)) {
        return absl::DeadlineExceededError("peer did not answer in time");
      }
      continue;
    }
    absl::Status s = DataError(f, tls_->client, true);
    if (PeerClosed(f) && want != n) {
      return absl::UnavailableError(absl::StrCat("peer closed the connection mid-frame (", want - n,
                                                 " of ", want, " bytes read)"));
    }
    return s;
  }
  return absl::OkStatus();
}

absl::Status Stream::WriteAll(const void* data, size_t n) {
  if (!tls_) return faultline::WriteAll(fd_.get(), data, n);
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    SslFailure f;
    {
      std::lock_guard<std::mutex> l(tls_->mu);
      if (tls_->failed) return absl::UnavailableError("the TLS connection already failed");
      size_t put = 0;
      ERR_clear_error();
      const int r = SSL_write_ex(tls_->ssl, p, n, &put);
      if (r == 1) {
        p += put;
        n -= put;
        continue;
      }
      f = Capture(tls_->ssl, r);
      if (f.code != SSL_ERROR_WANT_READ && f.code != SSL_ERROR_WANT_WRITE) tls_->failed = true;
    }
    if (f.code == SSL_ERROR_WANT_READ || f.code == SSL_ERROR_WANT_WRITE) {
      PollFd(fd_.get(), f.code == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, absl::ZeroDuration(),
             true);
      continue;
    }
    return DataError(f, tls_->client, false);
  }
  return absl::OkStatus();
}

absl::Status Stream::WritevAll(struct iovec* iov, int n) {
  if (!tls_) return faultline::WritevAll(fd_.get(), iov, n);
  // TLS has no writev: small pieces (a frame's head, single pages) are gathered into whole
  // records; pieces of a record or more are encrypted straight from where they are.
  uint8_t stage[kRecordBytes];
  size_t staged = 0;
  for (int i = 0; i < n; ++i) {
    const uint8_t* p = static_cast<const uint8_t*>(iov[i].iov_base);
    size_t len = iov[i].iov_len;
    while (len > 0) {
      if (staged == 0 && len >= sizeof(stage)) {
        if (absl::Status s = WriteAll(p, len); !s.ok()) return s;
        break;
      }
      const size_t k = std::min(len, sizeof(stage) - staged);
      memcpy(stage + staged, p, k);
      staged += k;
      p += k;
      len -= k;
      if (staged == sizeof(stage)) {
        if (absl::Status s = WriteAll(stage, staged); !s.ok()) return s;
        staged = 0;
      }
    }
  }
  return staged ? WriteAll(stage, staged) : absl::OkStatus();
}

}  // namespace faultline
