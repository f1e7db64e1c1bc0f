// SerialConsole: turns the bytes each vCPU writes to the serial port into lines.
//
// One line buffer per vCPU, so two vCPUs printing at once never interleave within a line.
// '\r' is dropped, '\n' ends a line, lines longer than kMaxLine are cut there. The console
// keeps the last kMaxLines complete lines. Not thread-safe (the Vm serialises calls).
#ifndef FAULTLINE_QEMU_INTEGRATION_VMM_SERIAL_CONSOLE_H_
#define FAULTLINE_QEMU_INTEGRATION_VMM_SERIAL_CONSOLE_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace faultline {

struct ConsoleLine {
  int cpu;
  std::string text;
};

class SerialConsole {
 public:
  static constexpr size_t kMaxLine = 4096;
  static constexpr size_t kMaxLines = 100000;

  // Feeds bytes written by `cpu`; appends each completed line to *completed (if not null).
  void Feed(int cpu, const uint8_t* data, size_t n, std::vector<ConsoleLine>* completed);

  const std::deque<ConsoleLine>& lines() const { return lines_; }
  // The first kept line starting with `prefix`, or null.
  const ConsoleLine* Find(absl::string_view prefix) const;
  // Bytes of `cpu`'s unfinished line.
  std::string Pending(int cpu) const;

 private:
  std::map<int, std::string> partial_;
  std::deque<ConsoleLine> lines_;
};

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_VMM_SERIAL_CONSOLE_H_
