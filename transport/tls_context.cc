// TlsContext: one side's certificate, key and CA (checked at load, naming the file), and the
// client and server handshakes that turn a plain Stream into a TLS one.
#include <arpa/inet.h>
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
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "base/fix.h"
#include "transport/protocol.h"
#include "transport/socket.h"
#include "transport/tls.h"
#include "transport/tls_internal.h"

namespace faultline {
namespace {

using tls_internal::Capture;
using tls_internal::DrainErrors;
using tls_internal::HandshakeError;
using tls_internal::kRecordBytes;
using tls_internal::NewSsl;
using tls_internal::PollFd;
using tls_internal::SetNonBlocking;
using tls_internal::SslFailure;

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
