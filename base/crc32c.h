// CRC32C (Castagnoli), as used on the wire for every page. Uses the SSE4.2 crc32 instruction
// (three interleaved streams for large buffers); a table fallback when the CPU lacks it.
#ifndef FAULTLINE_BASE_CRC32C_H_
#define FAULTLINE_BASE_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace faultline {

// CRC32C of data[0, n), continuing from `crc` (0 to start).
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

// True when the page is all zero bytes (n a multiple of 8).
bool IsZeroPage(const void* data, size_t n);

}  // namespace faultline

#endif  // FAULTLINE_BASE_CRC32C_H_
