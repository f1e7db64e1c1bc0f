// Fix: what the user of a library can change to cure an error, attached to the error as a
// status payload. Library messages say what went wrong in the library's own terms and never
// name a command-line flag; a front end turns the Fix into its own knob (the CLI: the flag to
// change, cli/common.cc).
#ifndef FAULTLINE_BASE_FIX_H_
#define FAULTLINE_BASE_FIX_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/types/optional.h"

namespace faultline {

enum class Fix : int {
  kSourceServesTls = 1,    // the source must serve TLS (a certificate and its key)
  kDestUsesTls,            // the destination must connect with TLS (the CA of the source's cert)
  kDestClientCertificate,  // the destination must present a client certificate and key
  kSourceClientCa,         // the source trusts client certificates of another CA
  kTlsServerName,          // the name the source's certificate must carry
  kTlsCertKeyPair,         // a certificate and its private key go together
  kSourceServesRdma,       // the source must serve RDMA
  kUseTcp,                 // no RDMA device here: use TCP
};

inline constexpr char kFixPayload[] = "faultline.dev/fix";

inline absl::Status WithFix(absl::Status s, Fix f) {
  if (!s.ok()) s.SetPayload(kFixPayload, absl::Cord(std::to_string(static_cast<int>(f))));
  return s;
}

// `s` with a new message and the same code and payloads (its Fix survives re-wording).
inline absl::Status Reworded(const absl::Status& s, const std::string& message) {
  absl::Status out(s.code(), message);
  s.ForEachPayload(
      [&](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

inline absl::optional<Fix> FixOf(const absl::Status& s) {
  absl::optional<absl::Cord> p = s.GetPayload(kFixPayload);
  int v = 0;
  if (!p || !absl::SimpleAtoi(std::string(*p), &v)) return absl::nullopt;
  return static_cast<Fix>(v);
}

}  // namespace faultline

#endif  // FAULTLINE_BASE_FIX_H_
