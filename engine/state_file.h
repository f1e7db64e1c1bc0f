// StateFile: the page-state map of one migration in a MAP_SHARED file, so that it outlives the
// engine process. The VMM owns the userfaultfd and the guest memory; if faultline dies
// mid-migration, the VMM hands the same uffd to a new faultline process, which opens the same
// state file (named after the migration) and continues where the dead one stopped: pages it
// placed stay placed, nothing is fetched twice over guest-written data (engine.cc explains the
// rules per page state and the kernel behaviour they rely on).
//
// Why a file and not a scan of guest memory: the engine cannot tell a page the guest wrote
// from one the source sent, nor (for memfd) a page cache page that is mapped in the VMM from
// one that is not; the map records exactly what was done, one byte per page, written by the
// same compare-and-swap that the live engine uses anyway — no extra cost on the fault path.
// The bytes are the page cache pages of the file, so a process death (SIGKILL, a crash) loses
// nothing: they need no msync. A host crash loses the VM too, so nothing needs to reach disk;
// the directory should be a tmpfs (/run is one on standard systems).
//
// Layout: a 4 KiB-aligned header (magic, version, an identity blob the caller chooses — the
// token's hash, the VMM's pid and start time, each region's address, size and backing inode —
// and the page count of every region), then each region's map, 4 KiB-aligned.
//
// Ownership: the file is flock()ed (LOCK_EX) for as long as this object lives. The kernel
// drops the lock only when the last reference to the open file goes away, i.e. after every
// thread of a dead engine has left the kernel — so a new engine that gets the lock knows no
// thread of the old one can still issue a UFFDIO_* ioctl or touch the map. A live engine's
// lock makes a second one refuse instead of serving the same uffd twice.
#ifndef FAULTLINE_ENGINE_STATE_FILE_H_
#define FAULTLINE_ENGINE_STATE_FILE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/unique_fd.h"

namespace faultline {

class StateFile {
 public:
  enum class Mode {
    kCreateOrAdopt,  // adopt the file if it exists, else create it (all pages absent)
    kAdoptOnly,      // the caller resumes: the file must exist (NotFound otherwise)
  };
  // Opens the state of one migration at `path`. An existing file must carry the same identity
  // and page counts (FailedPrecondition naming what differs otherwise: never adopt another
  // VMM's state), and must not be held by a live engine (FailedPrecondition naming its pid).
  static absl::StatusOr<std::unique_ptr<StateFile>> Open(const std::string& path,
                                                         absl::string_view identity,
                                                         const std::vector<uint64_t>& pages,
                                                         Mode mode = Mode::kCreateOrAdopt);
  ~StateFile();  // unmaps and closes (drops the lock); the file stays
  StateFile(const StateFile&) = delete;
  StateFile& operator=(const StateFile&) = delete;

  const std::string& path() const { return path_; }
  // True when the file existed: a previous engine's state, to be adopted.
  bool adopted() const { return adopted_; }
  // The pid of the engine that wrote the file before this one (adopted only).
  int32_t previous_pid() const { return previous_pid_; }
  size_t regions() const { return offsets_.size(); }
  uint64_t region_pages(size_t i) const { return pages_[i]; }
  std::atomic<uint8_t>* region_map(size_t i) const;
  // The migration is over: unlinks the file (still locked, so nobody adopts it meanwhile).
  void Remove();

 private:
  StateFile() = default;
  std::string path_;
  UniqueFd fd_;
  uint8_t* map_ = nullptr;
  size_t map_len_ = 0;
  std::vector<uint64_t> offsets_, pages_;
  bool adopted_ = false;
  int32_t previous_pid_ = 0;
  bool removed_ = false;
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_STATE_FILE_H_
