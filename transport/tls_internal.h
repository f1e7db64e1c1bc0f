// Internal to transport/tls*.cc (the public header is tls.h): what the stream, the context
// and the error explanations share.
//   tls_stream.cc   Stream: reads and writes, plain or TLS; the socket BIO; waiting on the fd
//   tls_context.cc  TlsContext: certificates, keys, CAs; the client and server handshakes
//   tls_errors.cc   OpenSSL's failures turned into statuses that say what is wrong (and a Fix)
#ifndef FAULTLINE_TRANSPORT_TLS_INTERNAL_H_
#define FAULTLINE_TRANSPORT_TLS_INTERNAL_H_

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstddef>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "transport/tls.h"

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

namespace tls_internal {

constexpr size_t kRecordBytes = 16384;  // TLS's largest record payload

// ---- Errors (tls_errors.cc) ----

struct SslFailure {
  int code = SSL_ERROR_NONE;  // SSL_get_error()
  int sys_errno = 0;
  unsigned long first = 0;  // the oldest queued OpenSSL error
  std::string errors;       // every queued error, as OpenSSL prints them
  long verify = X509_V_OK;  // certificate verification result
  bool timed_out = false;
};

// Empties this thread's OpenSSL error queue into one string; *first gets the oldest error.
std::string DrainErrors(unsigned long* first = nullptr);
// Call right after a failed SSL_* call on this thread.
SslFailure Capture(SSL* ssl, int ret);
// The peer closed the connection (cleanly or not).
bool PeerClosed(const SslFailure& f);
// A failure after the handshake, on a read or a write.
absl::Status DataError(const SslFailure& f, bool client, bool reading);
// A failed handshake: what the peer said, or why we refused it, and what would fix it.
absl::Status HandshakeError(const SslFailure& f, bool client, const std::string& peer,
                            const std::string& server_name, absl::Duration timeout);

// ---- The socket (tls_stream.cc) ----

absl::Status SetNonBlocking(int fd);
// poll() one fd for `events` for up to `timeout` (infinite when zero or negative with
// `forever`). Returns false on timeout.
bool PollFd(int fd, short events, absl::Duration timeout, bool forever);
// An SSL of `ctx` over `fd` through a socket BIO that never raises SIGPIPE; null on failure.
SSL* NewSsl(ssl_ctx_st* ctx, int fd);

}  // namespace tls_internal
}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_TLS_INTERNAL_H_
