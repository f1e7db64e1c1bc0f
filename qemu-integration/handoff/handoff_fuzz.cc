// libFuzzer entry point for the hand-off parsers (pure functions: no fds, no syscalls). The
// first byte picks how many fds the hello (or attach) claims came with; the rest is the JSON.
// Firecracker's parser sees the whole input.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "qemu-integration/handoff/handoff.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view all(reinterpret_cast<const char*>(data), size);
  (void)faultline::ParseFirecrackerMessage(all);
  if (size > 0) {
    (void)faultline::ParseFaultlineHello(all.substr(1), data[0] % 70);
    (void)faultline::ParseFaultlineAttach(all.substr(1), data[0] % 2);
  }
  return 0;
}
