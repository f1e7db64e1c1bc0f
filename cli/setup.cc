#include "cli/setup.h"

#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/errno_status.h"
#include "engine/uffd.h"

namespace faultline {

// ---- The destination ----

std::vector<GuestRegion*> Destination::region_ptrs() const {
  std::vector<GuestRegion*> out;
  for (const auto& r : regions) out.push_back(r.get());
  return out;
}

uint64_t Destination::bytes() const {
  uint64_t n = 0;
  for (const auto& r : regions) n += r->size();
  return n;
}

absl::StatusOr<Destination> CreateDestination(const std::vector<RegionInfo>& table, MemoryKind kind,
                                              const EngineOptions& eo) {
  Destination d;
  for (const RegionInfo& ri : table) {
    const MemoryKind k =
        ri.page_size == MemoryKindPageSize(MemoryKind::kHugetlb) ? MemoryKind::kHugetlb : kind;
    absl::StatusOr<std::unique_ptr<GuestRegion>> r = GuestRegion::Create(ri.name, k, ri.size);
    if (!r.ok()) return r.status();
    d.regions.push_back(std::move(*r));
  }
  absl::StatusOr<Userfaultfd> uffd =
      Userfaultfd::Open(Userfaultfd::kWantedFeatures, &d.missing_features);
  if (!uffd.ok()) return uffd.status();
  absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(d.region_ptrs(), std::move(*uffd), eo);
  if (!e.ok()) return e.status();
  d.engine = std::move(*e);
  return d;
}

absl::StatusOr<Destination> CreateDestination(MemoryKind kind, uint64_t size,
                                              const EngineOptions& eo) {
  return CreateDestination({RegionInfo{"ram", size, MemoryKindPageSize(kind)}}, kind, eo);
}

// ---- The source ----

absl::StatusOr<std::unique_ptr<PatternMemory>> PatternMemory::Create(uint64_t size,
                                                                     uint32_t page_size,
                                                                     const PatternSpec& pattern) {
  const bool huge = page_size == MemoryKindPageSize(MemoryKind::kHugetlb);
  if (size == 0 || size % page_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("size ", size, " is not a multiple of the page size ", page_size));
  }
  std::unique_ptr<PatternMemory> m(new PatternMemory());
  m->size_ = size;
  m->page_size_ = page_size;
  m->fd_.reset(
      memfd_create("faultline-source", MFD_CLOEXEC | (huge ? MFD_HUGETLB | MFD_HUGE_2MB : 0)));
  if (!m->fd_.valid()) return ErrnoStatus("memfd_create (source)");
  if (ftruncate(m->fd_.get(), static_cast<off_t>(size)) < 0) return ErrnoStatus("ftruncate");
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd_.get(), 0);
  if (p == MAP_FAILED) {
    if (huge) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "source hugetlb memory of ", size >> 20, " MiB: not enough free 2 MiB huge pages (need ",
          2 * size / page_size,
          " for source + destination); reserve them with `echo N > /proc/sys/vm/nr_hugepages`"));
    }
    return ErrnoStatus("mmap source");
  }
  m->base_ = static_cast<uint8_t*>(p);
  FillPattern(pattern, m->base_, size);
  return m;
}

PatternMemory::~PatternMemory() {
  if (base_) munmap(base_, size_);
}

absl::StatusOr<std::vector<SourceRegion>> PatternMemory::Regions(const std::string& name) const {
  absl::StatusOr<SourceRegion> r = SourceRegion::MapFd(name, fd_.get(), 0, size_, page_size_);
  if (!r.ok()) return r.status();
  std::vector<SourceRegion> out;
  out.push_back(std::move(*r));
  return out;
}

uint64_t PatternMemory::CountMismatches(const uint8_t* mem) const {
  uint64_t bad = 0;
  for (uint64_t off = 0; off < size_; off += page_size_) {
    if (memcmp(mem + off, base_ + off, page_size_) != 0) ++bad;
  }
  return bad;
}

absl::StatusOr<SourceRegion> SourceRegionFromSpec(const std::string& spec) {
  std::vector<std::string> nv = absl::StrSplit(spec, absl::MaxSplits('=', 1));
  if (nv.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("region '", spec, "': expected NAME=PATH[:SIZE[:PAGE_SIZE[:OFFSET]]]"));
  }
  std::vector<std::string> parts = absl::StrSplit(nv[1], ':');
  uint64_t size = 0, page_size = 4096, offset = 0;
  if (parts.size() > 1) {
    absl::StatusOr<uint64_t> s = ParseSize(parts[1]);
    if (!s.ok()) return s.status();
    size = *s;
  }
  if (parts.size() > 2) {
    absl::StatusOr<uint64_t> s = ParseSize(parts[2]);
    if (!s.ok()) return s.status();
    page_size = *s;
  }
  if (parts.size() > 3 && !absl::SimpleAtoi(parts[3], &offset)) {
    return absl::InvalidArgumentError(absl::StrCat("region '", spec, "': bad offset"));
  }
  if (size == 0) {
    struct stat st;
    if (stat(parts[0].c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat("region '", spec, "': no file ", parts[0]));
    }
    size = static_cast<uint64_t>(st.st_size) - offset;
  }
  return SourceRegion::MapFile(nv[0], parts[0], offset, size, static_cast<uint32_t>(page_size));
}

absl::StatusOr<std::vector<SourceRegion>> SourceRegionsFromSpecs(
    const std::vector<std::string>& specs) {
  std::vector<SourceRegion> out;
  for (const std::string& spec : specs) {
    absl::StatusOr<SourceRegion> r = SourceRegionFromSpec(spec);
    if (!r.ok()) return r.status();
    out.push_back(std::move(*r));
  }
  return out;
}

absl::StatusOr<uint64_t> ParseSize(const std::string& s) {
  if (s.empty()) return absl::InvalidArgumentError("empty size");
  uint64_t mult = 1;
  std::string num = s;
  switch (s.back()) {
    case 'K':
    case 'k':
      mult = 1ull << 10;
      num.pop_back();
      break;
    case 'M':
    case 'm':
      mult = 1ull << 20;
      num.pop_back();
      break;
    case 'G':
    case 'g':
      mult = 1ull << 30;
      num.pop_back();
      break;
    default: break;
  }
  uint64_t v;
  if (!absl::SimpleAtoi(num, &v) || v == 0) {
    return absl::InvalidArgumentError(absl::StrCat("bad size '", s, "' (e.g. 512M, 1G)"));
  }
  return v * mult;
}

}  // namespace faultline
