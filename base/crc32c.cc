#include "base/crc32c.h"

#include <nmmintrin.h>

#include <array>
#include <cstring>

namespace faultline {
namespace {

constexpr uint32_t kPoly = 0x82f63b78;  // reflected Castagnoli polynomial

std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1) ? kPoly : 0);
    t[i] = c;
  }
  return t;
}

uint32_t Crc32cTable(const uint8_t* p, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = MakeTable();
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc;
}

__attribute__((target("sse4.2"))) uint32_t Crc32cHw(const uint8_t* p, size_t n,
                                                     uint32_t crc32) {
  uint64_t crc = crc32;
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    crc = _mm_crc32_u8(static_cast<uint32_t>(crc), *p++);
    --n;
  }
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    crc = _mm_crc32_u64(crc, v);
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    crc = _mm_crc32_u8(static_cast<uint32_t>(crc), *p++);
    --n;
  }
  return static_cast<uint32_t>(crc);
}

// Three independent streams hide crc32's 3-cycle latency (one stream runs at a third of the
// instruction's throughput): a 4080-byte block is three 1360-byte lanes, CRCed side by side
// and combined. Appending a lane to a CRC register is multiplying the register by x^(8*1360)
// mod P — linear, so a table per register byte does it: Shift(r) = T0[r0]^T1[r1]^T2[r2]^T3[r3],
// with each entry computed once by running the register over 1360 zero bytes.
constexpr size_t kLane = 1360;

struct LaneShift {
  uint32_t t[4][256];
};

const LaneShift& Shift1360() {
  static const LaneShift s = [] {
    LaneShift s{};
    static const uint8_t zeros[kLane] = {};
    for (int k = 0; k < 4; ++k) {
      for (uint32_t b = 0; b < 256; ++b) s.t[k][b] = Crc32cHw(zeros, kLane, b << (8 * k));
    }
    return s;
  }();
  return s;
}

inline uint32_t ShiftLane(const LaneShift& s, uint32_t r) {
  return s.t[0][r & 0xff] ^ s.t[1][(r >> 8) & 0xff] ^ s.t[2][(r >> 16) & 0xff] ^
         s.t[3][r >> 24];
}

__attribute__((target("sse4.2"))) uint32_t Crc32cHw3(const uint8_t* p, size_t n,
                                                      uint32_t crc32) {
  static const LaneShift& shift = Shift1360();
  uint64_t crc = crc32;
  while (n >= 3 * kLane) {
    uint64_t a = crc, b = 0, c = 0;
    for (size_t i = 0; i < kLane; i += 8) {
      uint64_t va, vb, vc;
      memcpy(&va, p + i, 8);
      memcpy(&vb, p + kLane + i, 8);
      memcpy(&vc, p + 2 * kLane + i, 8);
      a = _mm_crc32_u64(a, va);
      b = _mm_crc32_u64(b, vb);
      c = _mm_crc32_u64(c, vc);
    }
    uint32_t r = ShiftLane(shift, static_cast<uint32_t>(a)) ^ static_cast<uint32_t>(b);
    crc = ShiftLane(shift, r) ^ static_cast<uint32_t>(c);
    p += 3 * kLane;
    n -= 3 * kLane;
  }
  return Crc32cHw(p, n, static_cast<uint32_t>(crc));
}

bool HaveSse42() { return __builtin_cpu_supports("sse4.2"); }

}  // namespace

uint32_t Crc32c(const void* data, size_t n, uint32_t crc) {
  static const bool hw = HaveSse42();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  crc = hw ? Crc32cHw3(p, n, crc) : Crc32cTable(p, n, crc);
  return ~crc;
}

bool IsZeroPage(const void* data, size_t n) {
  const auto* p = static_cast<const uint64_t*>(data);
  uint64_t acc = 0;
  // Check the first line quickly: most non-zero pages fail here.
  for (size_t i = 0; i < 8 && i < n / 8; ++i) acc |= p[i];
  if (acc != 0) return false;
  for (size_t i = 8; i < n / 8; i += 8) {
    acc |= p[i] | p[i + 1] | p[i + 2] | p[i + 3] | p[i + 4] | p[i + 5] | p[i + 6] | p[i + 7];
    if (acc != 0) return false;
  }
  return true;
}

}  // namespace faultline
