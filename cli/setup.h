// The two set-ups a migration on this machine is made of, one each, shared by the CLI (local,
// dest, source), the tests and the benchmarks:
//
//  - the destination: fresh memory matching a source's region table, registered with a
//    userfaultfd, and an Engine over it (CreateDestination). Nothing is connected yet:
//    Engine::Run takes the PageSource (TCP, TLS, RDMA: the caller's choice).
//  - the source: memory filled with the pattern of workload/pattern.h (PatternMemory), or the
//    files a command line names (SourceRegionsFromSpecs), as read-only regions for a
//    PageServer.
#ifndef FAULTLINE_CLI_SETUP_H_
#define FAULTLINE_CLI_SETUP_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/memory_kind.h"
#include "base/unique_fd.h"
#include "engine/engine.h"
#include "engine/region.h"
#include "transport/page_server.h"
#include "transport/page_source.h"
#include "workload/pattern.h"

namespace faultline {

// ---- The destination ----

struct Destination {
  std::vector<std::unique_ptr<GuestRegion>> regions;
  std::unique_ptr<Engine> engine;  // declared after `regions`: destroyed (unregistered) first
  std::string missing_features;    // userfaultfd features this kernel lacks ("": none)

  GuestRegion* region(size_t i = 0) const { return regions[i].get(); }
  std::vector<GuestRegion*> region_ptrs() const;
  uint64_t bytes() const;  // of every region
};

// For each region of `table`, fresh memory of its name and size: hugetlb for a region of
// 2 MiB pages, `kind` for every other one; then a userfaultfd (the features the engine
// wants, those missing named in missing_features) and an Engine over the regions.
absl::StatusOr<Destination> CreateDestination(const std::vector<RegionInfo>& table, MemoryKind kind,
                                              const EngineOptions& eo = {});
// One region "ram": `size` bytes of `kind` in its pages (MemoryKindPageSize), for a source
// expected to serve exactly that (a different table is the engine's to refuse).
absl::StatusOr<Destination> CreateDestination(MemoryKind kind, uint64_t size,
                                              const EngineOptions& eo = {});

// ---- The source ----

// Source memory filled with `pattern`: a memfd (on 2 MiB huge pages when page_size is 2 MiB),
// mapped writable here; served read-only.
class PatternMemory {
 public:
  static absl::StatusOr<std::unique_ptr<PatternMemory>> Create(uint64_t size, uint32_t page_size,
                                                               const PatternSpec& pattern = {});
  ~PatternMemory();
  PatternMemory(const PatternMemory&) = delete;
  PatternMemory& operator=(const PatternMemory&) = delete;

  int fd() const { return fd_.get(); }
  uint8_t* base() const { return base_; }
  uint64_t size() const { return size_; }
  uint32_t page_size() const { return page_size_; }
  // The whole memory as one read-only region `name`, for a PageServer.
  absl::StatusOr<std::vector<SourceRegion>> Regions(const std::string& name = "ram") const;
  // Pages of `mem` (size() bytes) whose bytes differ from this memory.
  uint64_t CountMismatches(const uint8_t* mem) const;

 private:
  PatternMemory() = default;
  UniqueFd fd_;
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint32_t page_size_ = 4096;
};

// NAME=PATH[:SIZE[:PAGE_SIZE[:OFFSET]]]: a file, a memfd (/proc/PID/fd/N) or a hugetlbfs file
// holding a frozen VM's RAM, mapped read-only. SIZE defaults to the rest of the file.
absl::StatusOr<SourceRegion> SourceRegionFromSpec(const std::string& spec);
absl::StatusOr<std::vector<SourceRegion>> SourceRegionsFromSpecs(
    const std::vector<std::string>& specs);

// "512M", "1G", "4096" → bytes.
absl::StatusOr<uint64_t> ParseSize(const std::string& s);

}  // namespace faultline

#endif  // FAULTLINE_CLI_SETUP_H_
