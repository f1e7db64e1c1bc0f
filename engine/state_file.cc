#include "engine/state_file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/crc32c.h"
#include "base/errno_status.h"

namespace faultline {
namespace {

constexpr char kMagic[8] = {'F', 'L', 'T', 'S', 'T', 'A', 'T', 'E'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kAlign = 4096;
constexpr size_t kMaxIdentity = 64 * 1024;
constexpr size_t kMaxRegions = 4096;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t regions;
  uint64_t file_size;
  uint32_t identity_len;
  int32_t writer_pid;  // the engine that holds (or last held) the file; not covered by the CRC
  uint32_t crc;        // CRC32C of the header (crc, writer_pid zero), the tables, the identity
  uint32_t reserved;
  // Followed by uint64_t pages[regions], uint64_t offsets[regions], identity bytes.
};
static_assert(sizeof(Header) == 40, "on-disk layout");

uint64_t AlignUp(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

size_t TablesBytes(size_t regions, size_t identity_len) {
  return sizeof(Header) + 16 * regions + identity_len;
}

uint32_t HeaderCrc(const uint8_t* h, size_t n) {
  Header copy;
  memcpy(&copy, h, sizeof(copy));
  copy.crc = 0;
  copy.writer_pid = 0;
  uint32_t crc = Crc32c(&copy, sizeof(copy));
  return Crc32c(h + sizeof(Header), n - sizeof(Header), crc);
}

// The whole header image of a new file and its size.
std::string BuildHeader(absl::string_view identity, const std::vector<uint64_t>& pages,
                        std::vector<uint64_t>* offsets, uint64_t* file_size) {
  const size_t n = pages.size();
  uint64_t off = AlignUp(TablesBytes(n, identity.size()));
  offsets->clear();
  for (uint64_t p : pages) {
    offsets->push_back(off);
    off = AlignUp(off + p);
  }
  *file_size = off;
  std::string img(TablesBytes(n, identity.size()), '\0');
  Header h = {};
  memcpy(h.magic, kMagic, sizeof(kMagic));
  h.version = kVersion;
  h.regions = static_cast<uint32_t>(n);
  h.file_size = *file_size;
  h.identity_len = static_cast<uint32_t>(identity.size());
  memcpy(&img[0], &h, sizeof(h));
  memcpy(&img[sizeof(Header)], pages.data(), 8 * n);
  memcpy(&img[sizeof(Header) + 8 * n], offsets->data(), 8 * n);
  memcpy(&img[sizeof(Header) + 16 * n], identity.data(), identity.size());
  const uint32_t crc = HeaderCrc(reinterpret_cast<const uint8_t*>(img.data()), img.size());
  memcpy(&img[offsetof(Header, crc)], &crc, sizeof(crc));
  return img;
}

absl::Status LockOrSayWho(int fd, const std::string& path) {
  if (flock(fd, LOCK_EX | LOCK_NB) == 0) return absl::OkStatus();
  if (errno != EWOULDBLOCK) return ErrnoStatus(absl::StrCat("flock ", path));
  Header h = {};
  int32_t pid = 0;
  if (pread(fd, &h, sizeof(h), 0) == static_cast<ssize_t>(sizeof(h))) pid = h.writer_pid;
  return absl::FailedPreconditionError(
      absl::StrCat("another faultline engine (pid ", pid, ") is serving this migration: it holds ",
                   path, ". One engine per userfaultfd; stop that one first"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<StateFile>> StateFile::Open(const std::string& path,
                                                           absl::string_view identity,
                                                           const std::vector<uint64_t>& pages,
                                                           Mode mode) {
  if (pages.empty() || pages.size() > kMaxRegions) {
    return absl::InvalidArgumentError(absl::StrCat("state file: ", pages.size(), " regions"));
  }
  if (identity.size() > kMaxIdentity) {
    return absl::InvalidArgumentError("state file: identity too long");
  }
  std::vector<uint64_t> offsets;
  uint64_t file_size = 0;
  const std::string image = BuildHeader(identity, pages, &offsets, &file_size);

  std::unique_ptr<StateFile> sf(new StateFile());
  sf->path_ = path;
  // A few rounds: the file may be created or removed by another engine between our steps.
  for (int round = 0; round < 8; ++round) {
    UniqueFd fd(open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
    if (fd.valid()) {
      if (absl::Status s = LockOrSayWho(fd.get(), path); !s.ok()) return s;
      // Locked. Still the file at `path`? (An engine that finished unlinks it under its lock.)
      struct stat mine, now;
      if (fstat(fd.get(), &mine) != 0) return ErrnoStatus(absl::StrCat("fstat ", path));
      if (mine.st_nlink == 0 || stat(path.c_str(), &now) != 0 || now.st_ino != mine.st_ino ||
          now.st_dev != mine.st_dev) {
        continue;
      }
      if (static_cast<uint64_t>(mine.st_size) != file_size) {
        return absl::FailedPreconditionError(
            absl::StrCat("state file ", path, " is ", mine.st_size,
                         " bytes where this migration's is ", file_size,
                         ": it describes another guest memory layout; refusing to adopt it "
                         "(delete it if that migration is over)"));
      }
      std::string found(image.size(), '\0');
      if (pread(fd.get(), &found[0], found.size(), 0) != static_cast<ssize_t>(found.size())) {
        return ErrnoStatus(absl::StrCat("read ", path));
      }
      Header h;
      memcpy(&h, found.data(), sizeof(h));
      if (memcmp(h.magic, kMagic, sizeof(kMagic)) != 0 || h.version != kVersion) {
        return absl::FailedPreconditionError(
            absl::StrCat(path, " is not a faultline state file (version ", kVersion, ")"));
      }
      if (HeaderCrc(reinterpret_cast<const uint8_t*>(found.data()), found.size()) != h.crc) {
        return absl::DataLossError(absl::StrCat("state file ", path, ": header checksum fails"));
      }
      // Everything but the writer's pid must be what this migration would write.
      memcpy(&found[offsetof(Header, writer_pid)], &image[offsetof(Header, writer_pid)], 4);
      if (found != image) {
        return absl::FailedPreconditionError(absl::StrCat(
            "state file ", path,
            " belongs to the same migration token but another VMM or "
            "guest memory layout (process, region addresses, sizes or backing files differ): "
            "refusing to adopt it — its pages say nothing about this VMM's memory. Delete it "
            "if that migration is over"));
      }
      sf->adopted_ = true;
      sf->previous_pid_ = h.writer_pid;
      sf->fd_ = std::move(fd);
      break;
    }
    if (errno != ENOENT) return ErrnoStatus(absl::StrCat("open ", path));
    if (mode == Mode::kAdoptOnly) {
      return absl::NotFoundError(absl::StrCat(
          "no state for this migration at ", path,
          ": the engine that served it kept none (or "
          "it was deleted), so which pages are placed is unknown; refusing to resume rather "
          "than overwrite guest memory"));
    }
    // Create under a private name, fill, lock, then link into place: nobody ever sees a
    // half-written header, and of two engines creating at once one wins (link fails EEXIST).
    const std::string tmp = absl::StrCat(path, ".new.", getpid());
    unlink(tmp.c_str());
    UniqueFd nfd(open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!nfd.valid()) return ErrnoStatus(absl::StrCat("create ", tmp));
    absl::Status s;
    if (flock(nfd.get(), LOCK_EX | LOCK_NB) != 0) s = ErrnoStatus("flock (new state file)");
    if (s.ok() && ftruncate(nfd.get(), static_cast<off_t>(file_size)) != 0) {
      s = ErrnoStatus(absl::StrCat("ftruncate ", tmp));
    }
    std::string mine = image;
    const int32_t me = getpid();
    memcpy(&mine[offsetof(Header, writer_pid)], &me, sizeof(me));
    if (s.ok() &&
        pwrite(nfd.get(), mine.data(), mine.size(), 0) != static_cast<ssize_t>(mine.size())) {
      s = ErrnoStatus(absl::StrCat("write ", tmp));
    }
    if (s.ok() && link(tmp.c_str(), path.c_str()) != 0) {
      if (errno == EEXIST) {
        unlink(tmp.c_str());
        continue;  // another engine created it first: adopt theirs
      }
      s = ErrnoStatus(absl::StrCat("link ", path));
    }
    unlink(tmp.c_str());
    if (!s.ok()) return s;
    sf->fd_ = std::move(nfd);
    break;
  }
  if (!sf->fd_.valid()) {
    return absl::UnavailableError(absl::StrCat("state file ", path, " keeps changing under us"));
  }
  void* m = mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_SHARED, sf->fd_.get(), 0);
  if (m == MAP_FAILED) return ErrnoStatus(absl::StrCat("mmap ", path));
  sf->map_ = static_cast<uint8_t*>(m);
  sf->map_len_ = file_size;
  sf->offsets_ = offsets;
  sf->pages_ = pages;
  const int32_t me = getpid();
  memcpy(sf->map_ + offsetof(Header, writer_pid), &me, sizeof(me));
  return sf;
}

StateFile::~StateFile() {
  if (map_) munmap(map_, map_len_);
}

std::atomic<uint8_t>* StateFile::region_map(size_t i) const {
  return reinterpret_cast<std::atomic<uint8_t>*>(map_ + offsets_[i]);
}

void StateFile::Remove() {
  if (removed_) return;
  removed_ = true;
  unlink(path_.c_str());
}

}  // namespace faultline
