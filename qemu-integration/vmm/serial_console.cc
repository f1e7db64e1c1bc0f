#include "qemu-integration/vmm/serial_console.h"

#include "absl/strings/match.h"

namespace faultline {

void SerialConsole::Feed(int cpu, const uint8_t* data, size_t n,
                         std::vector<ConsoleLine>* completed) {
  std::string& buf = partial_[cpu];
  for (size_t i = 0; i < n; i++) {
    char c = static_cast<char>(data[i]);
    if (c == '\r') continue;
    if (c != '\n') buf.push_back(c);
    if (c == '\n' || buf.size() >= kMaxLine) {
      ConsoleLine line{cpu, std::move(buf)};
      buf.clear();
      if (completed != nullptr) completed->push_back(line);
      lines_.push_back(std::move(line));
      if (lines_.size() > kMaxLines) lines_.pop_front();
    }
  }
}

const ConsoleLine* SerialConsole::Find(absl::string_view prefix) const {
  for (const ConsoleLine& l : lines_) {
    if (absl::StartsWith(l.text, prefix)) return &l;
  }
  return nullptr;
}

std::string SerialConsole::Pending(int cpu) const {
  auto it = partial_.find(cpu);
  return it == partial_.end() ? std::string() : it->second;
}

}  // namespace faultline
