// PageServer: the source side. Serves the frozen source VM's memory, mapped read-only, to one
// migration's destination over TCP. Each connection says in its HELLO whether it is the urgent
// or the bulk channel; each gets its own thread, so an urgent request is answered at once,
// never behind a bulk batch being written. The destination drives the background order (it
// knows what it still lacks); the server answers requests, refuses anything outside the
// regions, and stops when the destination sends DONE. With a TLS server context every
// connection is TLS 1.3 (and, if the context has a CA, the destination must present a client
// certificate signed by it); the token handshake runs inside TLS unchanged.
#ifndef FAULTLINE_TRANSPORT_PAGE_SERVER_H_
#define FAULTLINE_TRANSPORT_PAGE_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/unique_fd.h"
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

 private:
  SourceRegion() = default;
  RegionInfo info_;
  const uint8_t* base_ = nullptr;
  size_t map_len_ = 0;
};

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

class PageServer {
 public:
  // `tls`: a server context (transport/tls.h), or null for plain TCP.
  PageServer(std::vector<SourceRegion> regions, Token token,
             std::shared_ptr<const TlsContext> tls = nullptr);
  ~PageServer();

  // Accepts and serves connections on `listen_fd` until a destination sends DONE (returns
  // OK) or Shutdown() is called (returns Cancelled).
  absl::Status Serve(int listen_fd);
  // Thread-safe: makes Serve() return soon.
  void Shutdown();

  // Before Serve(); `ext` must outlive it.
  void SetExtension(ServerExtension* ext) {
    std::lock_guard<std::mutex> l(mu_);
    ext_ = ext;
  }
  const std::vector<SourceRegion>& regions() const { return regions_; }

  const ServerStats& stats() const { return stats_; }
  std::vector<RegionInfo> region_table() const;
  // Why the latest refused connection was refused (empty: none was).
  std::string last_refusal() const;

 private:
  void ServeConnection(UniqueFd fd);
  absl::Status Handshake(Stream& stream, Channel* ch);
  absl::Status SendPages(Stream& stream, const PageRange& r, Channel ch);
  absl::Status SendVerified(Stream& stream, const PageRange& r);

  std::vector<SourceRegion> regions_;
  std::vector<RegionInfo> table_;
  Token token_;
  std::shared_ptr<const TlsContext> tls_;
  ServerExtension* ext_ = nullptr;
  UniqueFd stop_fd_;  // eventfd
  std::atomic<bool> done_{false};
  mutable std::mutex mu_;
  std::vector<std::thread> threads_;
  std::vector<int> live_fds_;
  std::string last_refusal_;
  ServerStats stats_;
};

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_PAGE_SERVER_H_
