// Optional TLS 1.3 for the TCP transport (OpenSSL 3), and Stream: one connection, plain TCP or
// TLS, behind one Read/Write interface so the page server and the destination's transport have
// a single code path for both.
//
//  - Server (page server): certificate + key; with a CA file it also requires a client
//    certificate signed by that CA (mutual TLS).
//  - Client (destination): a CA file to verify the server's certificate and its name (the host
//    or IP of the address, or an explicit name); certificate + key for mutual TLS.
//
// The per-migration token handshake (HELLO/WELCOME) runs unchanged on top of TLS.
//
// Concurrency: a TLS stream may be read by one thread while another writes (the receive thread
// and the fault loop's requests). OpenSSL forbids concurrent calls on one SSL object, so every
// SSL call runs under the stream's mutex with the socket non-blocking, and waiting (poll) happens
// outside the mutex. Plain streams are the blocking socket, exactly as before.
#ifndef FAULTLINE_TRANSPORT_TLS_H_
#define FAULTLINE_TRANSPORT_TLS_H_

#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"

struct ssl_st;
struct ssl_ctx_st;

namespace faultline {

// PEM files. Empty strings: not given.
struct TlsFiles {
  std::string cert;  // our certificate (chain)
  std::string key;   // its private key (unencrypted)
  std::string ca;    // CA certificate(s) the peer's certificate must be signed by
  bool any() const { return !cert.empty() || !key.empty() || !ca.empty(); }
};

// One connection: a plain TCP socket or TLS over it. Movable; not copyable.
class Stream {
 public:
  Stream();
  explicit Stream(UniqueFd fd);  // plain TCP
  Stream(Stream&&) noexcept;
  Stream& operator=(Stream&&) noexcept;
  ~Stream();

  bool valid() const { return fd_.valid(); }
  int fd() const { return fd_.get(); }
  bool tls() const { return tls_ != nullptr; }
  // "plain TCP" or e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384".
  std::string Describe() const;

  // The same contracts as the fd helpers in socket.h: whole reads and writes, errors that say
  // what happened to the peer; TLS failures carry OpenSSL's error string.
  absl::Status ReadAll(void* data, size_t n);
  absl::Status WriteAll(const void* data, size_t n);
  absl::Status WritevAll(struct iovec* iov, int n);  // modifies iov

  // A read that waits this long without any byte arriving fails with DeadlineExceeded.
  // Zero: wait forever (the default).
  void SetReadTimeout(absl::Duration timeout);
  // Spins (never sleeps) until a read would make progress without waiting, the connection
  // ended, or *stop is set. For the urgent channel's busy-poll mode.
  void SpinUntilReadable(const std::atomic<bool>& stop);
  // shutdown(2) on the socket: wakes every thread blocked on this stream, which then sees the
  // connection closed. Thread-safe; the stream stays valid until destroyed.
  void ShutdownSocket();

 private:
  friend class TlsContext;
  struct Tls;
  UniqueFd fd_;
  std::unique_ptr<Tls> tls_;
};

class TlsContext {
 public:
  enum class Role { kClient, kServer };

  // Loads certificate, key and CA files for one side. Fails with a message naming the file and
  // what is wrong with it (unreadable, not PEM, key not matching the certificate, certificate
  // expired or not yet valid), never prompts for a passphrase.
  static absl::StatusOr<std::shared_ptr<const TlsContext>> Create(Role role, const TlsFiles& files);
  // As Create, but no files at all means plain TCP: returns nullptr. Checks the combination:
  // a server needs cert + key; a client needs a CA; cert and key go together.
  static absl::StatusOr<std::shared_ptr<const TlsContext>> FromFiles(Role role,
                                                                     const TlsFiles& files);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  Role role() const { return role_; }
  // Server: client certificates are required. Client: one is presented.
  bool mutual() const { return mutual_; }

  // Client: the TLS handshake on a connected plain stream, which becomes a TLS stream. The
  // server's certificate must chain to the CA and name `server_name` (a DNS name, or an IP
  // literal matched against IP SANs). `peer` names the server in errors. Gives up at
  // `deadline`. On failure the stream is left plain, its socket open: close it.
  absl::Status Connect(Stream* stream, const std::string& server_name, const std::string& peer,
                       absl::Time deadline) const;
  // Server: the same on an accepted stream. A destination that speaks the faultline protocol
  // in the clear gets a plain ERROR frame saying that TLS is required.
  absl::Status Accept(Stream* stream, absl::Time deadline) const;

 private:
  TlsContext() = default;
  Role role_ = Role::kClient;
  bool mutual_ = false;
  ssl_ctx_st* ctx_ = nullptr;
};

// The host part of "host:port", for verifying the server's certificate by default.
std::string HostOfAddress(const std::string& host_port);

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_TLS_H_
