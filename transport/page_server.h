// PageServer: the source side. Serves the frozen source VM's memory, mapped read-only, to one
// migration's destination over TCP — or, built with no migration and given several with
// AddMigration(), the memory of several VMs (a host being drained), each to the destination
// that presents its token; every connection serves exactly the migration its HELLO's token
// names. In that mode bulk connections run at a lower CPU priority than urgent ones, so one
// VM's background stream cannot starve another VM's faults, and DONE ends only its migration. Each
// connection says in its HELLO whether it is the urgent or the bulk channel; each gets its own
// thread, so an urgent request is answered at once, never behind a bulk batch being written. The
// destination drives the background order (it knows what it still lacks); the server answers
// requests, refuses anything outside the regions, and stops when the destination sends DONE. With a
// TLS server context every connection is TLS 1.3 (and, if the context has a CA, the destination
// must present a client certificate signed by it); the token handshake runs inside TLS unchanged.
//
// Warm-up: a migration given a DirtyTracker (transport/dirty_tracker.h) is served while its
// guest still runs; the destination then asks in rounds which pages were written since
// (DIRTY_SYNC, answered on the same connection; transport/dirty_rounds.h). Without a tracker
// the memory must be frozen, and a DIRTY_SYNC is refused.
#ifndef FAULTLINE_TRANSPORT_PAGE_SERVER_H_
#define FAULTLINE_TRANSPORT_PAGE_SERVER_H_

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/bulk_threads.h"
#include "base/thread_slice.h"
#include "base/unique_fd.h"
#include "transport/dirty_rounds.h"
#include "transport/dirty_tracker.h"
#include "transport/protocol.h"
#include "transport/tls.h"

namespace faultline {

// One region of source memory: a read-only mapping of the VM's RAM fd.
class SourceRegion {
 public:
  // Maps [offset, offset+size) of `path` (a file, a memfd via /proc/self/fd/N, or a
  // hugetlbfs file) read-only.
  static absl::StatusOr<SourceRegion> MapFile(const std::string& name, const std::string& path,
                                              uint64_t offset, uint64_t size, uint32_t page_size);
  static absl::StatusOr<SourceRegion> MapFd(const std::string& name, int fd, uint64_t offset,
                                            uint64_t size, uint32_t page_size);
  SourceRegion(SourceRegion&&) noexcept;
  SourceRegion& operator=(SourceRegion&&) = delete;
  ~SourceRegion();
  const RegionInfo& info() const { return info_; }
  const uint8_t* base() const { return base_; }
  // Copies pages [first, first + count) into `out` (count * page_size bytes) with pread() from
  // the region's file: nothing of this process's mapping is touched. DataLoss when the file
  // was truncated under the region (where the mapping would raise SIGBUS).
  absl::Status ReadPages(uint64_t first, uint32_t count, uint8_t* out) const;

 private:
  SourceRegion() = default;
  RegionInfo info_;
  const uint8_t* base_ = nullptr;
  size_t map_len_ = 0;
  UniqueFd fd_;               // the mapped file, for ReadPages
  uint64_t file_offset_ = 0;  // where the region starts in it
};

// How the page server's sending threads read the source's memory.
//
// Every page a source sends is read once from its mapping — to check for zeros and take the
// CRC — and sent from there. The first touch of a page through a mapping is a page fault, and
// the source process has never touched the guest's pages (the VMM has, through its own
// mapping). Where a fault is dear it dominates: on this project's 2-core machines (software
// KVM, shadow paging) a first touch costs ~45 us at random and ~2.4 us a page in sequence,
// pread() of the same page ~3 us and ~0.5 us (bench/RESULTS.md, 2026-12-05 evening). Copying
// the pages out first costs one more copy, from the page cache into a reused buffer, and no
// fault at all.
enum class SourceRead {
  kAuto,  // kCopy for pages under 2 MiB, kMap for huge pages (one fault maps 2 MiB, and
          // the extra copy of a 2 MiB page costs more than that fault: measured)
  kCopy,  // pread() a request's pages into the connection's buffer; check and send from it
  kMap,   // check and send straight from the region's read-only mapping
};
// "auto", "copy", "map" (the --source_read flag).
absl::StatusOr<SourceRead> ParseSourceRead(absl::string_view s);

struct ServerStats {
  std::atomic<uint64_t> urgent_pages{0}, bulk_pages{0}, zero_pages{0}, bytes{0};
  std::atomic<uint64_t> refused_requests{0}, refused_connections{0};
};

// Frames beyond plain page serving (the RDMA set-up, transport/rdma_page_server.h). Only
// frames after a connection's authenticated HELLO reach it.
class ServerExtension {
 public:
  virtual ~ServerExtension() = default;
  virtual bool Handles(FrameType t) const = 0;
  // Answers one frame on `stream`; an error is sent back as ERROR and closes the connection.
  virtual absl::Status Handle(Stream& stream, FrameType t, absl::Span<const uint8_t> payload) = 0;
};

// Fault injection, for tests: the real page server misbehaving in one precise way, at the few
// points where a source can go wrong. Called on the serving threads, concurrently for different
// connections (implementations are thread-safe). Every default behaves. Frames an injector
// sees are not counted in ServerStats; kSendLater's quiet wait polls the socket (plain TCP).
class FaultInjector {
 public:
  // What becomes of one PAGES frame.
  enum class PagesAction {
    kSend,       // send it (with the descriptors as OnPages left them)
    kSendLater,  // hold it and send it right after the next PAGES frame on this connection, or
                 // once no request has arrived for 50 ms (answers out of order). A frame held
                 // already is sent after this one instead: one is held at a time.
    kTruncateAndCloseAll,  // send the first half of it, then shut down every connection of this
                           // server (a source dying mid-frame); it keeps accepting new ones
    kSendInstead,          // send *instead (garbage, a frame for another range) in its place,
                           // then close this connection
  };
  virtual ~FaultInjector() = default;
  // An authenticated HELLO on `channel`: a non-OK status refuses the connection, sent to the
  // destination as an ERROR frame.
  virtual absl::Status OnHello(Channel channel) { return absl::OkStatus(); }
  // The region table WELCOME is about to announce on `channel`; may alter it (the server keeps
  // serving and checking requests against its own).
  virtual void OnWelcome(Channel channel, std::vector<RegionInfo>* table) {}
  // A PAGES frame answering `range` (pages of `region`) on `channel`, its descriptors built
  // from the source memory. May alter a descriptor's CRC (the page's bytes are sent as they
  // are), never its zero flag; to send a frame for another range, build it (EncodePagesPrefix)
  // into *instead and return kSendInstead.
  virtual PagesAction OnPages(Channel channel, const PageRange& range, const RegionInfo& region,
                              std::vector<PageDesc>* descs, std::string* instead) {
    return PagesAction::kSend;
  }
};

class PageServer {
 public:
  // One migration. `tls`: a server context (transport/tls.h), or null for plain TCP.
  // `dirty` (optional, must outlive the server): the guest still runs (warm-up).
  PageServer(std::vector<SourceRegion> regions, Token token,
             std::shared_ptr<const TlsContext> tls = nullptr, DirtyTracker* dirty = nullptr);
  // Several migrations, added with AddMigration() (before or while serving).
  explicit PageServer(std::shared_ptr<const TlsContext> tls);
  ~PageServer();

  // Serves `regions` to the destination that presents `token`. AlreadyExists for an id or a
  // token already served. Thread-safe.
  absl::Status AddMigration(const std::string& id, std::vector<SourceRegion> regions, Token token,
                            DirtyTracker* dirty = nullptr);
  // Stops serving a migration (connections already open keep theirs). Thread-safe.
  absl::Status RemoveMigration(const std::string& id);
  // Whether that migration's destination has sent DONE.
  bool MigrationDone(const std::string& id) const;

  // Accepts and serves connections on `listen_fd` until a destination sends DONE (one
  // migration: returns OK) or Shutdown() is called (returns Cancelled).
  absl::Status Serve(int listen_fd);
  // Thread-safe: makes Serve() return soon.
  void Shutdown();

  // Before Serve(); `ext` must outlive it.
  void SetExtension(ServerExtension* ext) {
    std::lock_guard<std::mutex> l(mu_);
    ext_ = ext;
  }
  // The scheduler slice of the threads serving urgent connections (base/thread_slice.h): a
  // fault's request then preempts a bulk sender at once. For connections accepted from now on
  // (default 100 us). Zero: the kernel's default.
  void SetUrgentSlice(absl::Duration slice) {
    std::lock_guard<std::mutex> l(mu_);
    urgent_slice_ = slice;
  }
  // CPUs and nice value of the threads serving bulk connections; urgent connections' threads
  // take the fault path's nice (base/bulk_threads.h). For connections accepted from now on.
  // Checked by the caller; the default: threads as they are.
  void SetBulkThreads(BulkThreads b) {
    std::lock_guard<std::mutex> l(mu_);
    bulk_threads_ = std::move(b);
  }
  // How sending threads read pages (see SourceRead). For connections accepted from now on.
  void SetSourceRead(SourceRead r) {
    std::lock_guard<std::mutex> l(mu_);
    source_read_ = r;
  }
  // Tests: connections accepted from now on misbehave as `f` says; `f` must outlive Serve().
  // Null: none (the default).
  void SetFaultInjector(FaultInjector* f) {
    std::lock_guard<std::mutex> l(mu_);
    faults_ = f;
  }
  // The regions of the first migration (one-migration servers).
  const std::vector<SourceRegion>& regions() const { return tenants_.front()->regions; }

  const ServerStats& stats() const { return stats_; }
  std::vector<RegionInfo> region_table() const;
  // Why the latest refused connection was refused (empty: none was).
  std::string last_refusal() const;

 private:
  struct Tenant {  // one migration's memory
    std::string id;
    std::vector<SourceRegion> regions;
    std::vector<RegionInfo> table;
    Token token;
    std::atomic<bool> done{false};
    std::unique_ptr<DirtyRounds> rounds;  // warm-up; null: the memory is frozen
  };
  // A PAGES frame a FaultInjector holds back (kSendLater), per connection.
  struct HeldFrame {
    std::string bytes;
    bool held() const { return !bytes.empty(); }
  };
  void ServeConnection(UniqueFd fd);
  absl::Status Handshake(Stream& stream, FaultInjector* faults, Channel* ch,
                         std::shared_ptr<Tenant>* tenant);
  // `scratch`: the connection's buffer for SourceRead::kCopy (grown to the largest request).
  absl::Status SendPages(const Tenant& t, Stream& stream, const PageRange& r, Channel ch,
                         SourceRead read, std::vector<uint8_t>* scratch, FaultInjector* faults,
                         HeldFrame* held);
  // SendPages' fault-injected path: the frame as `faults` makes it.
  absl::Status SendInjected(Stream& stream, const PageRange& r, const RegionInfo& region,
                            Channel ch, FaultInjector* faults, std::vector<PageDesc>* descs,
                            const struct iovec* data, int data_iovs, HeldFrame* held);
  absl::Status SendVerified(const Tenant& t, Stream& stream, const PageRange& r, SourceRead read,
                            std::vector<uint8_t>* scratch);
  // DIRTY_SYNC / DIRTY_APPLIED.
  absl::Status HandleDirty(Tenant& t, Stream& stream, FrameType type,
                           absl::Span<const uint8_t> payload);

  const bool multi_;
  std::vector<std::shared_ptr<Tenant>> tenants_;  // guarded by mu_ (multi_), fixed otherwise
  std::shared_ptr<const TlsContext> tls_;
  ServerExtension* ext_ = nullptr;
  FaultInjector* faults_ = nullptr;                   // guarded by mu_; read once per connection
  absl::Duration urgent_slice_ = kDefaultFaultSlice;  // guarded by mu_
  BulkThreads bulk_threads_;                          // guarded by mu_
  SourceRead source_read_ = SourceRead::kAuto;        // guarded by mu_
  UniqueFd stop_fd_;                                  // eventfd
  std::atomic<bool> done_{false};
  mutable std::mutex mu_;
  std::vector<std::thread> threads_;
  std::vector<int> live_fds_;
  std::string last_refusal_;
  ServerStats stats_;
};

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_PAGE_SERVER_H_
