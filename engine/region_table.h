// RegionTable: the guest memory an engine serves — its regions, one page-state map per region,
// a placer per region, and the global page keys the statistics use. Built once, then read-only
// in its structure; the page-state maps inside are the engine's shared state (atomics, see
// page_state.h), so any thread may use the table.
//
// A global page key is (region << 40) | page: unique across regions, ordered like the memory.
#ifndef FAULTLINE_ENGINE_REGION_TABLE_H_
#define FAULTLINE_ENGINE_REGION_TABLE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/page_state.h"
#include "engine/placer.h"
#include "engine/region.h"
#include "engine/uffd_ops.h"
#include "transport/page_source.h"

namespace faultline {

// The most regions one engine serves.
inline constexpr size_t kMaxEngineRegions = 64;

class RegionTable {
 public:
  struct Entry {
    Entry(GuestRegion* r, UffdOps* u, PlacerCounters* c, uint64_t key,
          std::atomic<uint8_t>* storage)
        : region(r), state(r->pages(), storage), placer(u, r, c), key_base(key) {}
    GuestRegion* region;
    PageStateMap state;
    Placer placer;
    uint64_t key_base;  // global key of page 0
  };
  static constexpr int kKeyShift = 40;

  // `maps[i]`, if given, is the storage of region i's state map (a state file's mapping).
  static absl::StatusOr<std::unique_ptr<RegionTable>> Create(
      const std::vector<GuestRegion*>& regions, UffdOps* uffd, PlacerCounters* counters,
      const std::vector<std::atomic<uint8_t>*>& maps = {});

  size_t size() const { return entries_.size(); }
  Entry& operator[](size_t i) { return *entries_[i]; }
  const Entry& operator[](size_t i) const { return *entries_[i]; }

  // The region and page holding guest address `addr` (a registered-range address), or false.
  bool Locate(uint64_t addr, uint32_t* region, uint64_t* page) const;
  uint64_t Key(uint32_t region, uint64_t page) const { return entries_[region]->key_base + page; }
  static uint32_t RegionOfKey(uint64_t key) { return static_cast<uint32_t>(key >> kKeyShift); }
  static uint64_t PageOfKey(uint64_t key) { return key & ((uint64_t{1} << kKeyShift) - 1); }

  uint64_t total_pages() const { return total_pages_; }
  uint64_t total_bytes() const { return total_bytes_; }
  uint32_t max_page_size() const { return max_page_size_; }
  // Pages neither present nor discarded, over every region.
  uint64_t remaining() const;
  // Whether a source's region table matches ours (count, sizes, page sizes).
  absl::Status CheckSource(const std::vector<RegionInfo>& table) const;

 private:
  RegionTable() = default;
  std::vector<std::unique_ptr<Entry>> entries_;
  std::vector<uint64_t> bases_;  // base address of each region, for Locate()
  uint64_t total_pages_ = 0, total_bytes_ = 0;
  uint32_t max_page_size_ = 0;
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_REGION_TABLE_H_
