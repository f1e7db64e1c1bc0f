// Internal to the wire protocol's codec (protocol.cc, protocol_rdma.cc): little-endian
// writers and a bounds-checked reader. Not part of protocol.h's contract.
#ifndef FAULTLINE_TRANSPORT_PROTOCOL_CODEC_H_
#define FAULTLINE_TRANSPORT_PROTOCOL_CODEC_H_

#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "transport/protocol.h"

namespace faultline {
namespace protocol_internal {

inline void Put16(std::string* o, uint16_t v) { o->append(reinterpret_cast<const char*>(&v), 2); }
inline void Put32(std::string* o, uint32_t v) { o->append(reinterpret_cast<const char*>(&v), 4); }
inline void Put64(std::string* o, uint64_t v) { o->append(reinterpret_cast<const char*>(&v), 8); }

inline void PutHeader(std::string* o, FrameType t, uint32_t len) {
  Put16(o, kFrameMagic);
  o->push_back(static_cast<char>(t));
  o->push_back(0);
  Put32(o, len);
}

// Bounds-checked little-endian reader.
class Reader {
 public:
  explicit Reader(absl::Span<const uint8_t> in) : in_(in) {}
  bool Get(void* dst, size_t n) {
    if (in_.size() - pos_ < n) return false;
    memcpy(dst, in_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  template <typename T>
  bool Get(T* v) {
    return Get(static_cast<void*>(v), sizeof(T));
  }
  size_t left() const { return in_.size() - pos_; }

 private:
  absl::Span<const uint8_t> in_;
  size_t pos_ = 0;
};

inline absl::Status Malformed(const char* frame, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("malformed ", frame, " frame: ", why));
}

}  // namespace protocol_internal
}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_PROTOCOL_CODEC_H_
