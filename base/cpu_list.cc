#include "base/cpu_list.h"

#include <sched.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/errno_status.h"

namespace faultline {
namespace {

constexpr int kMaxCpu = CPU_SETSIZE - 1;  // what one cpu_set_t holds

absl::StatusOr<int> ParseCpu(absl::string_view s, absl::string_view text) {
  int v = -1;
  const bool digits =
      !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits || !absl::SimpleAtoi(s, &v) || v < 0 || v > kMaxCpu) {
    return absl::InvalidArgumentError(absl::StrCat("CPU list \"", text, "\": \"", s,
                                                   "\" is not a CPU number (0..", kMaxCpu, ")"));
  }
  return v;
}

}  // namespace

absl::StatusOr<std::vector<int>> ParseCpuList(absl::string_view text) {
  std::vector<int> out;
  if (text.empty()) return out;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    std::vector<absl::string_view> ends = absl::StrSplit(part, absl::MaxSplits('-', 1));
    absl::StatusOr<int> lo = ParseCpu(ends[0], text);
    if (!lo.ok()) return lo.status();
    int hi = *lo;
    if (ends.size() == 2) {
      absl::StatusOr<int> h = ParseCpu(ends[1], text);
      if (!h.ok()) return h.status();
      if (*h < *lo) {
        return absl::InvalidArgumentError(
            absl::StrCat("CPU list \"", text, "\": range ", part, " runs backwards"));
      }
      hi = *h;
    }
    for (int c = *lo; c <= hi; ++c) out.push_back(c);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::string FormatCpuList(const std::vector<int>& cpus) {
  std::string s;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    absl::StrAppend(&s, s.empty() ? "" : ",", cpus[i]);
    if (j > i) absl::StrAppend(&s, "-", cpus[j]);
    i = j + 1;
  }
  return s;
}

std::vector<int> AllowedCpus(pid_t tid) {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> out;
  if (sched_getaffinity(tid, sizeof(set), &set) != 0) return out;
  for (int c = 0; c <= kMaxCpu; ++c) {
    if (CPU_ISSET(c, &set)) out.push_back(c);
  }
  return out;
}

absl::Status CheckCpusAllowed(const std::vector<int>& cpus) {
  const std::vector<int> allowed = AllowedCpus();
  for (int c : cpus) {
    if (!std::binary_search(allowed.begin(), allowed.end(), c)) {
      return absl::InvalidArgumentError(absl::StrCat("CPU ", c,
                                                     " is not one this process may run on "
                                                     "(allowed: ",
                                                     FormatCpuList(allowed), ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status PinCallingThread(const std::vector<int>& cpus) {
  if (cpus.empty()) return absl::OkStatus();
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) {
    if (c < 0 || c > kMaxCpu) return absl::InvalidArgumentError(absl::StrCat("CPU ", c));
    CPU_SET(c, &set);
  }
  if (sched_setaffinity(0, sizeof(set), &set) != 0) {
    return ErrnoStatus(absl::StrCat("sched_setaffinity(", FormatCpuList(cpus), ")"));
  }
  return absl::OkStatus();
}

}  // namespace faultline
