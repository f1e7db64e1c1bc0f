// TestCa: a throwaway certificate authority for TLS tests, made at test time with OpenSSL's C
// API (EC P-256 keys) and written as PEM files into a fresh temporary directory that is removed
// afterwards. No private key is ever committed.
#ifndef FAULTLINE_TESTS_TESTING_TEST_CERTS_H_
#define FAULTLINE_TESTS_TESTING_TEST_CERTS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/tls.h"

namespace faultline {

// When a certificate is valid, relative to now.
struct CertValidity {
  absl::Duration not_before = -absl::Hours(1);
  absl::Duration not_after = absl::Hours(24);
};

class TestCa {
 public:
  using Validity = CertValidity;
  // A CA named `name`, its files under a new directory in $TEST_TMPDIR (or /tmp).
  static absl::StatusOr<std::unique_ptr<TestCa>> Create(const std::string& name,
                                                        CertValidity validity = {});
  ~TestCa();

  const std::string& ca_cert() const { return ca_cert_; }
  const std::string& dir() const { return dir_; }
  // A leaf certificate signed by this CA, with subjectAltName `san` (OpenSSL syntax, e.g.
  // "IP:127.0.0.1,DNS:localhost"). Returns its files, with `ca` set to this CA.
  absl::StatusOr<TlsFiles> Issue(const std::string& name,
                                 const std::string& san = "IP:127.0.0.1,DNS:localhost",
                                 CertValidity validity = {});

 private:
  struct Key;
  TestCa() = default;
  std::string dir_, ca_cert_;
  std::unique_ptr<Key> key_;
  long serial_ = 1;
};

}  // namespace faultline

#endif  // FAULTLINE_TESTS_TESTING_TEST_CERTS_H_
