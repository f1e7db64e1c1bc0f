#include "engine/region_table.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace faultline {

absl::StatusOr<std::unique_ptr<RegionTable>> RegionTable::Create(
    const std::vector<GuestRegion*>& regions, UffdOps* uffd, PlacerCounters* counters,
    const std::vector<std::atomic<uint8_t>*>& maps) {
  if (regions.empty()) return absl::InvalidArgumentError("no guest memory regions");
  if (!maps.empty() && maps.size() != regions.size()) {
    return absl::InvalidArgumentError("one state map per region");
  }
  std::unique_ptr<RegionTable> t(new RegionTable());
  for (size_t i = 0; i < regions.size(); ++i) {
    GuestRegion* r = regions[i];
    if (r->pages() >= (uint64_t{1} << kKeyShift)) {
      return absl::InvalidArgumentError(absl::StrCat("region '", r->name(), "' is too large"));
    }
    const uint64_t b = reinterpret_cast<uint64_t>(r->base());
    for (size_t j = 0; j < i; ++j) {
      const GuestRegion& o = *regions[j];
      const uint64_t ob = reinterpret_cast<uint64_t>(o.base());
      if (b < ob + o.size() && ob < b + r->size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("regions '", o.name(), "' and '", r->name(), "' overlap"));
      }
    }
    t->entries_.push_back(std::make_unique<Entry>(r, uffd, counters, uint64_t{i} << kKeyShift,
                                                  maps.empty() ? nullptr : maps[i]));
    t->bases_.push_back(b);
    t->total_pages_ += r->pages();
    t->total_bytes_ += r->size();
    t->max_page_size_ = std::max(t->max_page_size_, r->page_size());
  }
  return t;
}

bool RegionTable::Locate(uint64_t addr, uint32_t* region, uint64_t* page) const {
  for (size_t i = 0; i < entries_.size(); ++i) {
    const GuestRegion& r = *entries_[i]->region;
    if (addr >= bases_[i] && addr - bases_[i] < r.size()) {
      *region = static_cast<uint32_t>(i);
      *page = (addr - bases_[i]) / r.page_size();
      return true;
    }
  }
  return false;
}

uint64_t RegionTable::remaining() const {
  uint64_t n = 0;
  for (const auto& e : entries_) n += e->state.remaining();
  return n;
}

absl::Status RegionTable::CheckSource(const std::vector<RegionInfo>& table) const {
  if (table.size() != entries_.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the source has ", table.size(), " memory regions, this side ", entries_.size()));
  }
  for (size_t i = 0; i < table.size(); ++i) {
    const GuestRegion& r = *entries_[i]->region;
    if (table[i].size != r.size() || table[i].page_size != r.page_size()) {
      return absl::FailedPreconditionError(
          absl::StrCat("region ", i, " differs: source '", table[i].name, "' ", table[i].size,
                       " bytes in ", table[i].page_size, "-byte pages, destination '", r.name(),
                       "' ", r.size(), " bytes in ", r.page_size(), "-byte pages"));
    }
  }
  return absl::OkStatus();
}

}  // namespace faultline
