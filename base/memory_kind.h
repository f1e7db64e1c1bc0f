// MemoryKind: what backs a range of guest memory. One vocabulary for the engine's destination
// regions (engine/region.h: RegionKind), the reference VMM's RAM (qemu-integration/vmm:
// RamBacking) and the hand-off's region table (qemu-integration/handoff: "kind").
//
//   kind         name (wire, reports)   also accepted by ParseMemoryKind   page size
//   anonymous    "anon"                 "anonymous"                        4 KiB
//   memfd        "memfd"                "shmem"                            4 KiB
//   hugetlb      "hugetlb"              "hugetlbfs"                        2 MiB
//   guest_memfd  "guest_memfd"          "gmem"                             4 KiB
#ifndef FAULTLINE_BASE_MEMORY_KIND_H_
#define FAULTLINE_BASE_MEMORY_KIND_H_

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace faultline {

enum class MemoryKind { kAnonymous, kMemfd, kHugetlb, kGuestMemfd };

inline constexpr MemoryKind kAllMemoryKinds[] = {MemoryKind::kAnonymous, MemoryKind::kMemfd,
                                                 MemoryKind::kHugetlb, MemoryKind::kGuestMemfd};

// The canonical name: "anon", "memfd", "hugetlb", "guest_memfd" (what the hand-off's wire
// format carries and what reports print).
const char* MemoryKindName(MemoryKind k);
// A canonical name only (as MemoryKindName writes it): for wire formats, where an alias would
// be an extension of the format. nullopt for anything else.
std::optional<MemoryKind> MemoryKindFromName(absl::string_view name);
// A canonical name or one of its aliases (command lines, configuration). InvalidArgument
// naming the accepted names otherwise.
absl::StatusOr<MemoryKind> ParseMemoryKind(absl::string_view s);
// The page size memory of this kind is made of here: 2 MiB for hugetlb, 4 KiB otherwise.
uint32_t MemoryKindPageSize(MemoryKind k);
// Whether memory of this kind lives in a file the VMM can pass as an fd (all but anonymous).
bool MemoryKindHasFd(MemoryKind k);

}  // namespace faultline

#endif  // FAULTLINE_BASE_MEMORY_KIND_H_
