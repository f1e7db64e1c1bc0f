#include "base/memory_kind.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace faultline {

const char* MemoryKindName(MemoryKind k) {
  switch (k) {
    case MemoryKind::kAnonymous: return "anon";
    case MemoryKind::kMemfd: return "memfd";
    case MemoryKind::kHugetlb: return "hugetlb";
    case MemoryKind::kGuestMemfd: return "guest_memfd";
  }
  return "?";
}

std::optional<MemoryKind> MemoryKindFromName(absl::string_view name) {
  for (MemoryKind k : kAllMemoryKinds) {
    if (name == MemoryKindName(k)) return k;
  }
  return std::nullopt;
}

absl::StatusOr<MemoryKind> ParseMemoryKind(absl::string_view s) {
  if (std::optional<MemoryKind> k = MemoryKindFromName(s)) return *k;
  if (s == "anonymous") return MemoryKind::kAnonymous;
  if (s == "shmem") return MemoryKind::kMemfd;
  if (s == "hugetlbfs") return MemoryKind::kHugetlb;
  if (s == "gmem") return MemoryKind::kGuestMemfd;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown memory kind '", s, "' (anon, memfd, hugetlb, guest_memfd)"));
}

uint32_t MemoryKindPageSize(MemoryKind k) { return k == MemoryKind::kHugetlb ? (2u << 20) : 4096u; }

bool MemoryKindHasFd(MemoryKind k) { return k != MemoryKind::kAnonymous; }

}  // namespace faultline
