// TcpPageSource: the destination's TCP transport. 1 + N connections per migration:
//  - urgent: fault requests only, TCP_NODELAY, its own receive thread — never behind bulk;
//  - N bulk lanes (TcpSourceOptions::bulk_lanes): background batches, each lane its own
//    connection and receive thread, so receiving, checking and placing bulk pages can use more
//    than one core.
// A receive thread reads a PAGES frame a chunk at a time (deliver_chunk_bytes) into its own
// reused buffer, checks each page's CRC32C there while the bytes are in cache, and delivers the
// chunk's good pages to the sink as runs; a page that fails its check is Rejected().
// Each connection is plain TCP or, with TcpSourceOptions::tls, TLS 1.3 (transport/tls.h); both
// go through the same Stream code.
#ifndef FAULTLINE_TRANSPORT_TCP_PAGE_SOURCE_H_
#define FAULTLINE_TRANSPORT_TCP_PAGE_SOURCE_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/bulk_threads.h"
#include "base/thread_slice.h"
#include "base/unique_fd.h"
#include "transport/page_source.h"
#include "transport/protocol.h"
#include "transport/tls.h"

namespace faultline {

struct TcpSourceOptions {
  std::string address;  // host:port of the page server
  Token token{};
  absl::Duration connect_timeout = absl::Seconds(10);
  // Spin on the urgent socket instead of sleeping in recv(): lower fault latency, one core.
  bool busy_poll = false;
  // TLS (a client context: the CA that signed the source's certificate, and our certificate
  // for mutual TLS); null: plain TCP. The TLS handshake is bounded by connect_timeout.
  std::shared_ptr<const TlsContext> tls;
  // The name the source's certificate must carry; empty: the host (or IP) of `address`.
  std::string tls_server_name;
  // Bulk connections (lanes), each with its own receive thread; 1..kMaxBulkLanes.
  uint32_t bulk_lanes = 1;
  // Bulk receive threads at SCHED_IDLE: they run on CPU time nothing else wants, so fault
  // answers and the guests' own threads go first where many migrations share the cores (the
  // host daemon sets it). Not strict: CFS still gives an idle-class thread a sliver of CPU
  // under full load, so bulk slows there but never stops.
  bool bulk_idle = false;
  // The urgent receive thread's scheduler slice (base/thread_slice.h): a page's arrival then
  // preempts a bulk thread at once. Zero: the kernel's default.
  absl::Duration urgent_slice = kDefaultFaultSlice;
  // A receive thread checks and delivers a frame this many bytes at a time (at least one
  // page): small enough to stay in cache between the read, the check and the placement.
  uint32_t deliver_chunk_bytes = 256u << 10;
  // CPUs and nice value of the bulk receive threads; the urgent receive thread takes the
  // fault path's nice (base/bulk_threads.h). Keeps background work off the cores the guests'
  // vCPUs and the fault path run on. Checked by the caller; default: threads as they are.
  BulkThreads bulk_threads;
};

inline constexpr uint32_t kMaxBulkLanes = 16;

class TcpPageSource : public PageSource {
 public:
  static absl::StatusOr<std::unique_ptr<TcpPageSource>> Connect(const TcpSourceOptions& opts);
  ~TcpPageSource() override;

  const std::vector<RegionInfo>& regions() const override { return regions_; }
  SourceLimits limits() const override;
  absl::Status Start(PageSink* sink) override;
  absl::Status RequestUrgent(uint32_t region, uint64_t page) override;
  absl::Status RequestBulk(uint32_t lane, uint32_t region, uint64_t first, uint32_t count) override;
  absl::Status RequestDirty(bool final, uint32_t throttle) override;
  absl::Status ConfirmDirty(uint64_t round) override;
  absl::Status Finish() override;
  void Stop() override;
  absl::Status Reconnect(absl::Time deadline) override;
  int reconnects() const { return reconnects_.load(); }
  bool live() const override { return live_; }
  bool Connected() const override;

 private:
  struct Conn {
    Stream stream;
    std::mutex write_mu;  // one writer at a time
    std::thread rx;
    Urgency urgency = Urgency::kBulk;
    uint32_t lane = 0;
    std::vector<uint8_t> buf;   // receive thread only: one chunk of page bytes
    std::vector<uint8_t> zero;  // receive thread only: the chunk's zero flags
    std::vector<uint32_t> crc;  // receive thread only: the chunk's pages' CRCs, as they arrive
    DirtySet dirty;             // receive thread only: a DIRTY round being assembled
    bool dirty_open = false;    // receive thread only
  };
  TcpPageSource() = default;
  // Opens the urgent connection and every bulk lane; fills conns_ (streams only).
  static absl::Status OpenAll(const TcpSourceOptions& opts, std::vector<Stream>* streams,
                              std::vector<RegionInfo>* regions, uint32_t* welcome_flags);
  void StartThreads();
  absl::Status Request(Conn& c, uint32_t region, uint64_t first, uint32_t count);
  void ReceiveLoop(Conn* c);
  // Reads the rest of a PAGES frame, checking and delivering it chunk by chunk.
  absl::Status ReceivePages(Conn& c, const FrameHeader& h);
  // One DIRTY frame: checked, added to the round; the round's last frame hands it to the sink.
  absl::Status ReceiveDirty(Conn& c, absl::Span<const uint8_t> payload);
  absl::Status SendControl(const std::string& frame);

  TcpSourceOptions opts_;
  std::vector<RegionInfo> regions_;
  bool live_ = false;                         // the WELCOME said kWelcomeLive
  std::vector<std::unique_ptr<Conn>> conns_;  // [0] urgent, [1 + lane] bulk
  PageSink* sink_ = nullptr;
  std::atomic<bool> stopping_{false};
  // Finish() sent DONE: the source closing the connections is the end now, not a failure.
  std::atomic<bool> finishing_{false};
  std::atomic<bool> urgent_closed_{false};  // the urgent receive thread saw the end
  std::atomic<int> reconnects_{0};
  std::mutex reconnect_mu_;  // one Reconnect() at a time, and none while Start() runs
};

// Opens one channel: connect, TLS handshake (with opts.tls), HELLO, WELCOME. Exposed for tests
// and the bench.
// `welcome_flags` (optional) receives the WELCOME's flags (kWelcomeLive).
absl::StatusOr<Stream> OpenChannel(const TcpSourceOptions& opts, Channel ch,
                                   std::vector<RegionInfo>* regions,
                                   uint32_t* welcome_flags = nullptr);

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_TCP_PAGE_SOURCE_H_

namespace faultline {

// Compares local memory with the source, page by page, by CRC32C (VERIFY frames over a fresh
// connection); `bases[i]` is region i's memory. Returns the number of mismatching pages and
// sets *verified. With send_done, tells the source DONE afterwards.
absl::StatusOr<uint64_t> VerifyAgainstSource(const TcpSourceOptions& opts,
                                             const std::vector<const uint8_t*>& bases,
                                             uint64_t* verified, bool send_done);

}  // namespace faultline
