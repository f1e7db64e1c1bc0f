#include "transport/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "base/fix.h"
#include "transport/protocol.h"
#include "transport/socket.h"

namespace faultline {

struct Stream::Tls {
  SSL* ssl = nullptr;
  bool client = true;
  std::mutex mu;        // held for every call on `ssl`; never while waiting in poll()
  bool failed = false;  // a fatal error happened (guarded by mu): no more SSL calls
  absl::Duration read_timeout = absl::ZeroDuration();
  ~Tls() {
    if (!ssl) return;
    if (!failed) {
      ERR_clear_error();
      (void)SSL_shutdown(ssl);  // best effort close_notify; the socket is non-blocking
      ERR_clear_error();
    }
    SSL_free(ssl);
  }
};

namespace {

constexpr size_t kRecordBytes = 16384;  // TLS's largest record payload

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

// ---- Errors ----

// Empties this thread's OpenSSL error queue into one string; *first gets the oldest error.
std::string DrainErrors(unsigned long* first = nullptr) {
  std::string out;
  char buf[256];
  if (first) *first = 0;
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    if (first && *first == 0) *first = e;
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

struct SslFailure {
  int code = SSL_ERROR_NONE;  // SSL_get_error()
  int sys_errno = 0;
  unsigned long first = 0;  // the oldest queued OpenSSL error
  std::string errors;       // every queued error, as OpenSSL prints them
  long verify = X509_V_OK;  // certificate verification result
  bool timed_out = false;
};

// Call right after a failed SSL_* call on this thread.
SslFailure Capture(SSL* ssl, int ret) {
  SslFailure f;
  f.sys_errno = errno;
  f.code = SSL_get_error(ssl, ret);
  f.errors = DrainErrors(&f.first);
  f.verify = SSL_get_verify_result(ssl);
  return f;
}

int Reason(const SslFailure& f) {
  return f.first && ERR_GET_LIB(f.first) == ERR_LIB_SSL ? ERR_GET_REASON(f.first) : 0;
}

bool PeerClosed(const SslFailure& f) {
  return f.code == SSL_ERROR_ZERO_RETURN ||
         (f.code == SSL_ERROR_SYSCALL && (f.sys_errno == 0 || f.sys_errno == EPIPE)) ||
         (f.code == SSL_ERROR_SSL && Reason(f) == SSL_R_UNEXPECTED_EOF_WHILE_READING);
}

// The peer sent something that is not TLS 1.3 (e.g. a plain faultline frame).
bool NotTls(int reason) {
  switch (reason) {
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_HTTP_REQUEST:
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
    case SSL_R_RECORD_LENGTH_MISMATCH:
    case SSL_R_UNKNOWN_PROTOCOL: return true;
    default: return false;
  }
}

// The peer refused our certificate (an alert it sent).
bool CertAlert(int reason) {
  switch (reason) {
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
    case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED: return true;
    default: return false;
  }
}

// "certificate verify failed: certificate has expired (OpenSSL: error:0A000086:...)".
std::string Explain(const SslFailure& f) {
  std::string s;
  const char* r = f.first ? ERR_reason_error_string(f.first) : nullptr;
  if (r) {
    s = r;
  } else if (f.code == SSL_ERROR_SYSCALL && f.sys_errno != 0) {
    s = strerror(f.sys_errno);
  } else {
    s = absl::StrCat("SSL error ", f.code);
  }
  if (f.verify != X509_V_OK) absl::StrAppend(&s, ": ", X509_verify_cert_error_string(f.verify));
  if (!f.errors.empty()) absl::StrAppend(&s, " (OpenSSL: ", f.errors, ")");
  return s;
}

constexpr char kClientCertHint[] =
    "; the source requires a client certificate signed by its CA, and the destination "
    "presented none";
constexpr char kWrongClientCertHint[] =
    "; the source accepts only client certificates signed by the CA it was given";

// What a destination should do about the source refusing its certificate.
const char* ClientCertHint(int reason) {
  return reason == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED ? kClientCertHint : kWrongClientCertHint;
}
Fix ClientCertFix(int reason) {
  return reason == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED ? Fix::kDestClientCertificate
                                                           : Fix::kSourceClientCa;
}

// A failure after the handshake, on a read or a write.
absl::Status DataError(const SslFailure& f, bool client, bool reading) {
  if (PeerClosed(f)) {
    return absl::UnavailableError(reading ? "peer closed the connection"
                                          : "peer closed the connection (write failed)");
  }
  if (f.code == SSL_ERROR_SYSCALL) {
    if (f.sys_errno == ECONNRESET) return absl::UnavailableError("peer reset the connection");
    return ErrnoStatus(reading ? "TLS recv" : "TLS send", f.sys_errno);
  }
  const int reason = Reason(f);
  if (CertAlert(reason)) {
    // TLS 1.3 finishes the client's handshake before the server has checked the client's
    // certificate: a refusal arrives as an alert on the first read.
    absl::Status s = absl::PermissionDeniedError(
        absl::StrCat("TLS: the peer refused the connection: ", Explain(f),
                     client ? ClientCertHint(reason) : ""));
    return client ? WithFix(s, ClientCertFix(reason)) : s;
  }
  return absl::UnavailableError(absl::StrCat("TLS: ", Explain(f)));
}

absl::Status HandshakeError(const SslFailure& f, bool client, const std::string& peer,
                            const std::string& server_name, absl::Duration timeout) {
  const std::string what = client ? absl::StrCat("TLS handshake with ", peer)
                                  : std::string("TLS handshake with the destination");
  if (f.timed_out) {
    absl::Status s = absl::DeadlineExceededError(
        absl::StrCat(what, " timed out after ", absl::FormatDuration(timeout),
                     client ? " (is the source serving TLS?)" : ""));
    return client ? WithFix(s, Fix::kSourceServesTls) : s;
  }
  if (PeerClosed(f)) {
    return absl::UnavailableError(absl::StrCat(what, ": the peer closed the connection"));
  }
  if (f.code == SSL_ERROR_SYSCALL) {
    return absl::UnavailableError(
        absl::StrCat(what, ": ", f.sys_errno ? strerror(f.sys_errno) : "connection lost"));
  }
  const int reason = Reason(f);
  if (NotTls(reason)) {
    absl::Status s = absl::FailedPreconditionError(
        absl::StrCat(what, " failed: the peer does not speak TLS 1.3",
                     client ? " (is the source serving plain TCP?)" : "", ": ", Explain(f)));
    return client ? WithFix(s, Fix::kSourceServesTls) : s;
  }
  if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED || f.verify != X509_V_OK) {
    const bool name =
        f.verify == X509_V_ERR_HOSTNAME_MISMATCH || f.verify == X509_V_ERR_IP_ADDRESS_MISMATCH;
    absl::Status s = absl::PermissionDeniedError(absl::StrCat(
        what, " failed: the ", client ? "source's" : "destination's client",
        " certificate was rejected: ", Explain(f),
        name ? absl::StrCat("; the certificate does not name '", server_name, "'") : ""));
    return name ? WithFix(s, Fix::kTlsServerName) : s;
  }
  if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    return absl::PermissionDeniedError(
        absl::StrCat(what,
                     " failed: the destination sent no client certificate and this source requires "
                     "one: ",
                     Explain(f)));
  }
  if (CertAlert(reason)) {
    absl::Status s = absl::PermissionDeniedError(absl::StrCat(
        what, " failed: the ", client ? "source refused our client" : "destination refused our",
        " certificate: ", Explain(f), client ? ClientCertHint(reason) : ""));
    return client ? WithFix(s, ClientCertFix(reason)) : s;
  }
  return absl::UnavailableError(absl::StrCat(what, " failed: ", Explain(f)));
}

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

// Runs SSL_connect / SSL_accept to the end. Returns true when established.
bool RunHandshake(SSL* ssl, int fd, bool client, absl::Time deadline, SslFailure* f) {
  while (true) {
    ERR_clear_error();
    const int r = client ? SSL_connect(ssl) : SSL_accept(ssl);
    if (r == 1) return true;
    *f = Capture(ssl, r);
    if (f->code != SSL_ERROR_WANT_READ && f->code != SSL_ERROR_WANT_WRITE) return false;
    if (!PollFd(fd, f->code == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline - absl::Now(),
                false)) {
      f->timed_out = true;
      return false;
    }
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

std::string AsnTime(const ASN1_TIME* t) {
  BIO* b = BIO_new(BIO_s_mem());
  ASN1_TIME_print(b, t);
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  std::string s(data, static_cast<size_t>(std::max(n, 0L)));
  BIO_free(b);
  return s;
}

absl::Status Readable(const std::string& what, const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (!f) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read TLS ", what, " '", path, "': ", strerror(errno)));
  }
  std::fclose(f);
  return absl::OkStatus();
}

int NoPassphrase(char* buf, int size, int rwflag, void* userdata) { return 0; }

}  // namespace

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

// ---- TlsContext ----

TlsContext::~TlsContext() {
  if (ctx_) SSL_CTX_free(ctx_);
}

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::FromFiles(Role role,
                                                                        const TlsFiles& files) {
  if (!files.any()) return std::shared_ptr<const TlsContext>();
  return Create(role, files);
}

absl::StatusOr<std::shared_ptr<const TlsContext>> TlsContext::Create(Role role,
                                                                     const TlsFiles& files) {
  const bool server = role == Role::kServer;
  if (files.cert.empty() != files.key.empty()) {
    return WithFix(
        absl::InvalidArgumentError("TLS: a certificate and its private key go together; give both"),
        Fix::kTlsCertKeyPair);
  }
  if (server && files.cert.empty()) {
    return WithFix(
        absl::InvalidArgumentError("TLS: the page server needs a certificate and its key"),
        Fix::kSourceServesTls);
  }
  if (!server && files.ca.empty()) {
    return WithFix(absl::InvalidArgumentError(
                       "TLS: the destination needs the CA that signed the source's certificate"),
                   Fix::kDestUsesTls);
  }
  const std::pair<const char*, const std::string*> named[] = {
      {"certificate", &files.cert}, {"key", &files.key}, {"CA file", &files.ca}};
  for (const auto& [what, path] : named) {
    if (path->empty()) continue;
    if (absl::Status s = Readable(what, *path); !s.ok()) return s;
  }

  std::shared_ptr<TlsContext> c(new TlsContext());
  c->role_ = role;
  ERR_clear_error();
  c->ctx_ = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!c->ctx_) return absl::InternalError(absl::StrCat("SSL_CTX_new: ", DrainErrors()));
  SSL_CTX* ctx = c->ctx_;
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  // AES-128-GCM first: as strong as the migration needs, and the fastest with AES-NI.
  SSL_CTX_set_ciphersuites(ctx,
                           "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                           "TLS_CHACHA20_POLY1305_SHA256");
  SSL_CTX_set_default_passwd_cb(ctx, NoPassphrase);  // never prompt on a terminal
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  // Fewer recv() calls per record: read what the socket has.
  SSL_CTX_set_read_ahead(ctx, 1);
  SSL_CTX_set_default_read_buffer_len(ctx, 4 * kRecordBytes + 1024);
  if (server) {
    SSL_CTX_set_num_tickets(ctx, 0);  // no resumption: nothing to send after the handshake
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
  }

  if (!files.cert.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS certificate '", files.cert,
                       "' holds no usable PEM certificate (OpenSSL: ", DrainErrors(), ")"));
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1) {
      unsigned long first = 0;
      std::string errors = DrainErrors(&first);
      if (ERR_GET_LIB(first) == ERR_LIB_X509 &&
          ERR_GET_REASON(first) == X509_R_KEY_VALUES_MISMATCH) {
        return absl::InvalidArgumentError(absl::StrCat("TLS key '", files.key,
                                                       "' does not match the certificate '",
                                                       files.cert, "' (OpenSSL: ", errors, ")"));
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "TLS key '", files.key,
          "' holds no usable private key (PEM, not passphrase-protected) (OpenSSL: ", errors, ")"));
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS key '", files.key, "' does not match the certificate '", files.cert,
                       "' (OpenSSL: ", DrainErrors(), ")"));
    }
    X509* cert = SSL_CTX_get0_certificate(ctx);
    if (cert && X509_cmp_current_time(X509_get0_notAfter(cert)) < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "TLS certificate '", files.cert, "' expired on ", AsnTime(X509_get0_notAfter(cert))));
    }
    if (cert && X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
      return absl::FailedPreconditionError(absl::StrCat("TLS certificate '", files.cert,
                                                        "' is not valid before ",
                                                        AsnTime(X509_get0_notBefore(cert))));
    }
    c->mutual_ = !server;  // a client with a certificate presents it
  }
  if (!files.ca.empty()) {
    if (SSL_CTX_load_verify_locations(ctx, files.ca.c_str(), nullptr) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("TLS CA file '", files.ca,
                                                     "' holds no usable PEM certificate "
                                                     "(OpenSSL: ",
                                                     DrainErrors(), ")"));
    }
    if (server) {
      // Mutual TLS: only destinations with a certificate signed by this CA get in.
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
      STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(files.ca.c_str());
      if (names) SSL_CTX_set_client_CA_list(ctx, names);
      c->mutual_ = true;
    } else {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    }
  }
  ERR_clear_error();
  return std::shared_ptr<const TlsContext>(std::move(c));
}

absl::Status TlsContext::Connect(Stream* stream, const std::string& server_name,
                                 const std::string& peer, absl::Time deadline) const {
  if (role_ != Role::kClient) return absl::InternalError("TLS: Connect on a server context");
  if (stream->tls()) return absl::InternalError("TLS: the stream is TLS already");
  if (server_name.empty()) {
    return absl::InvalidArgumentError("TLS: no server name to verify the certificate against");
  }
  const int fd = stream->fd();
  if (absl::Status s = SetNonBlocking(fd); !s.ok()) return s;
  auto tls = std::make_unique<Stream::Tls>();
  tls->client = true;
  ERR_clear_error();
  tls->ssl = NewSsl(ctx_, fd);
  if (!tls->ssl) return absl::InternalError(absl::StrCat("SSL_new: ", DrainErrors()));
  unsigned char addr[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, server_name.c_str(), addr) == 1 ||
      inet_pton(AF_INET6, server_name.c_str(), addr) == 1) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(tls->ssl), server_name.c_str());
  } else {
    SSL_set_tlsext_host_name(tls->ssl, server_name.c_str());
    SSL_set_hostflags(tls->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    SSL_set1_host(tls->ssl, server_name.c_str());
  }
  const absl::Duration timeout = deadline - absl::Now();
  SslFailure f;
  if (!RunHandshake(tls->ssl, fd, true, deadline, &f)) {
    tls->failed = true;
    return HandshakeError(f, true, peer, server_name, timeout);
  }
  stream->tls_ = std::move(tls);
  return absl::OkStatus();
}

absl::Status TlsContext::Accept(Stream* stream, absl::Time deadline) const {
  if (role_ != Role::kServer) return absl::InternalError("TLS: Accept on a client context");
  if (stream->tls()) return absl::InternalError("TLS: the stream is TLS already");
  const int fd = stream->fd();
  const absl::Duration timeout = deadline - absl::Now();
  // Before any TLS: what does the destination's first byte say? A TLS hello starts with a
  // handshake record (22); a faultline HELLO in the clear with the frame magic.
  if (!PollFd(fd, POLLIN, timeout, false)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "TLS handshake with the destination timed out after ", absl::FormatDuration(timeout)));
  }
  uint8_t first = 0;
  ssize_t r;
  do {
    r = ::recv(fd, &first, 1, MSG_PEEK | MSG_DONTWAIT);
  } while (r < 0 && errno == EINTR);
  if (r == 0) {
    return absl::UnavailableError("the destination closed the connection before TLS");
  }
  if (r < 0) return ErrnoStatus("recv");
  if (first != 22) {
    absl::Status s = absl::FailedPreconditionError(
        "this source requires TLS, and the destination connected without it: the destination "
        "needs the CA that signed the source's certificate (and a client certificate if the "
        "source requires one)");
    if (first == (kFrameMagic & 0xff)) {  // a faultline destination: tell it why, in the clear
      std::string out;
      EncodeError(s, &out);
      (void)faultline::WriteAll(fd, out.data(), out.size());
    }
    return s;
  }
  if (absl::Status s = SetNonBlocking(fd); !s.ok()) return s;
  auto tls = std::make_unique<Stream::Tls>();
  tls->client = false;
  ERR_clear_error();
  tls->ssl = NewSsl(ctx_, fd);
  if (!tls->ssl) return absl::InternalError(absl::StrCat("SSL_new: ", DrainErrors()));
  SslFailure f;
  if (!RunHandshake(tls->ssl, fd, false, deadline, &f)) {
    tls->failed = true;
    return HandshakeError(f, false, "", "", timeout);
  }
  stream->tls_ = std::move(tls);
  return absl::OkStatus();
}

std::string HostOfAddress(const std::string& host_port) {
  std::string host;
  int port;
  if (!SplitHostPort(host_port, &host, &port).ok()) return host_port;
  return host;
}

}  // namespace faultline
