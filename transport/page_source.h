// The engine's whole view of a transport, and the transport's whole view of the engine:
//
//   engine ──PageSource::RequestUrgent / RequestBulk──► transport ──► source
//   transport receive thread ──PageSink::Deliver(run of checked pages)──► engine places them
//
// A transport never calls the engine for anything but these four PageSink calls, and never
// includes engine/. Pages cross as runs of consecutive pages whose bytes are already checked
// (CRC32C on TCP, per page); the engine copies what it keeps before Deliver() returns, so the
// transport reuses its receive buffer at once (a small, cache-hot buffer: the bytes are
// touched while they are still in cache).
#ifndef FAULTLINE_TRANSPORT_PAGE_SOURCE_H_
#define FAULTLINE_TRANSPORT_PAGE_SOURCE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace faultline {

// One region of guest memory as a source announces it.
struct RegionInfo {
  std::string name;
  uint64_t size = 0;
  uint32_t page_size = 0;
  uint64_t pages() const { return page_size ? size / page_size : 0; }
};

// Why a page was asked for: a fault waits on it (urgent), or nobody does yet (bulk).
enum class Urgency : uint8_t { kUrgent, kBulk };

// Consecutive pages [first, first + count) of one region, every one checked. Page i's bytes
// are at data + i * page_size, except where zero[i] is 1: an all-zero page, whose bytes in
// `data` are unspecified (the transport sent only a marker). `zero` is null when no page is
// zero. Valid only during the Deliver() call.
struct PageRun {
  uint32_t region = 0;
  uint64_t first = 0;
  uint32_t count = 0;
  uint32_t page_size = 0;
  const uint8_t* data = nullptr;
  const uint8_t* zero = nullptr;
  Urgency urgency = Urgency::kBulk;
  uint32_t lane = 0;  // the bulk lane it came on (0 for urgent)
  bool is_zero(uint32_t i) const { return zero != nullptr && zero[i] != 0; }
};

// Warm-up (the guest still runs on the source): the pages written since the previous round,
// plus any earlier round's pages the destination has not confirmed dropping. Every range is
// inside the regions (checked by the transport).
struct DirtyRange {
  uint32_t region = 0;
  uint64_t first = 0;
  uint64_t count = 0;
};
// The most of a guest's vCPU time warm-up may ask the source to take away (percent).
inline constexpr uint32_t kMaxThrottle = 99;

struct DirtySet {
  uint64_t round = 0;
  bool final = false;  // the source stopped the guest before collecting: the last set
  // A throttle was asked for and the source cannot slow its guest (its tracker has none).
  bool no_throttle = false;
  std::vector<DirtyRange> ranges;
  uint64_t pages() const {
    uint64_t n = 0;
    for (const DirtyRange& r : ranges) n += r.count;
    return n;
  }
};

// Why a source stopped delivering. The kind decides what the engine does next, the status
// says what happened; they are separate so that no status code doubles as a control signal.
struct SourceError {
  enum class Kind : uint8_t {
    kNetwork,   // the connection broke or timed out: reconnecting may heal it
    kProtocol,  // the peer sent what the protocol forbids: it will not heal
    kRefused,   // the peer refused us (token, TLS, region table, an ERROR frame)
  };
  Kind kind;
  absl::Status status;
  bool reconnectable() const { return kind == Kind::kNetwork; }
};

class PageSink {
 public:
  virtual ~PageSink() = default;
  // A run of checked pages arrived. Called on the transport's receive threads, concurrently
  // for different connections; the sink must not block for long (it places the pages).
  virtual void Deliver(const PageRun& run) = 0;
  // `page` was sent but its bytes failed the check: nothing of it is delivered. The sink asks
  // again (urgently if a fault waits on it).
  virtual void Rejected(uint32_t region, uint64_t page, Urgency urgency) = 0;
  // Every page of a bulk request on `lane` was delivered or rejected: the lane has room.
  virtual void BulkDone(uint32_t lane) = 0;
  // The answer to PageSource::RequestDirty(): one whole round. Receive thread; may block
  // briefly (it hands the set over).
  virtual void Dirty(DirtySet set) {}
  // The source can deliver nothing more on some connection. At most once per connection and
  // never after PageSource::Stop(). Requests without an answer are lost with it.
  virtual void Failed(const SourceError& why) = 0;
};

// What a source can carry: the engine sizes its requests by this, never by protocol constants.
struct SourceLimits {
  uint32_t max_request_pages = 1;
  uint64_t max_request_bytes = 4096;
  uint32_t bulk_lanes = 1;  // independent bulk connections, each with its own receive thread
};

class PageSource {
 public:
  virtual ~PageSource() = default;
  // The source's region table, as announced in its WELCOME.
  virtual const std::vector<RegionInfo>& regions() const = 0;
  virtual SourceLimits limits() const = 0;
  // Whether the guest still runs on the source (its memory changes; it tracks the writes): the
  // engine must then warm up — ask which pages changed, in rounds — before its guest may run.
  virtual bool live() const { return false; }
  // Before Start(): whether every connection is still open as far as can be told without
  // waiting (the peer has not closed it or reset it). A source connected ahead of its VMM's
  // hand-off is checked with this before it is trusted (serve/migration.h).
  virtual bool Connected() const { return true; }
  // Starts delivering to `sink` (receive threads run until Stop()).
  virtual absl::Status Start(PageSink* sink) = 0;
  // Thread-safe. Asks for one page ahead of any bulk traffic. An error means this request is
  // lost (the connection is gone, and Failed() says why); the caller need not act on it.
  virtual absl::Status RequestUrgent(uint32_t region, uint64_t page) = 0;
  // Thread-safe. Asks for a run of pages on bulk lane `lane` (< limits().bulk_lanes); answered
  // by Deliver()/Rejected() for every page, then BulkDone(lane). Errors as RequestUrgent.
  virtual absl::Status RequestBulk(uint32_t lane, uint32_t region, uint64_t first,
                                   uint32_t count) = 0;
  // Warm-up. Thread-safe. Asks the source which pages were written since the last round;
  // answered once by PageSink::Dirty() (a request lost with a connection is simply not
  // answered: ask again). `final`: the source first stops the guest for good. `throttle`
  // (0..kMaxThrottle percent): the share of the guest's vCPU time the source takes away from
  // now on, so that its writes fall behind the transfer (0: full speed).
  virtual absl::Status RequestDirty(bool final, uint32_t throttle) {
    return absl::UnimplementedError(
        "this transport cannot warm up (ask which pages changed while the guest runs)");
  }
  // Every page of `round` was dropped here (the final round: the guest may run here).
  virtual absl::Status ConfirmDirty(uint64_t round) {
    return absl::UnimplementedError("this transport cannot warm up");
  }
  // Tells the source every page is present (it may stop serving).
  virtual absl::Status Finish() = 0;
  // Closes every connection and joins the receive threads. Idempotent.
  virtual void Stop() = 0;
  // After Failed(): closes what is left, joins the receive threads, then connects again —
  // retrying with backoff until `deadline` — and resumes delivering to the same sink. Requests
  // in flight are lost: the caller asks again. A kNetwork error kind only for a deadline
  // passed; a refusal on the way (token, region table changed) is kRefused.
  virtual absl::Status Reconnect(absl::Time deadline) {
    return absl::UnimplementedError("this transport cannot reconnect");
  }
};

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_PAGE_SOURCE_H_
