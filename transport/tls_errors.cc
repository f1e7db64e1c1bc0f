// TLS failures, explained: OpenSSL's error queue and verification result turned into a status
// that says what went wrong and on which side, with what would fix it (base/fix.h).
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "base/fix.h"
#include "transport/tls_internal.h"

namespace faultline {
namespace tls_internal {
namespace {

int Reason(const SslFailure& f) {
  return f.first && ERR_GET_LIB(f.first) == ERR_LIB_SSL ? ERR_GET_REASON(f.first) : 0;
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

}  // namespace

std::string DrainErrors(unsigned long* first) {
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

SslFailure Capture(SSL* ssl, int ret) {
  SslFailure f;
  f.sys_errno = errno;
  f.code = SSL_get_error(ssl, ret);
  f.errors = DrainErrors(&f.first);
  f.verify = SSL_get_verify_result(ssl);
  return f;
}

bool PeerClosed(const SslFailure& f) {
  return f.code == SSL_ERROR_ZERO_RETURN ||
         (f.code == SSL_ERROR_SYSCALL && (f.sys_errno == 0 || f.sys_errno == EPIPE)) ||
         (f.code == SSL_ERROR_SSL && Reason(f) == SSL_R_UNEXPECTED_EOF_WHILE_READING);
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

}  // namespace tls_internal
}  // namespace faultline
