// TcpPageSource: the destination's TCP transport. Two connections per migration:
//  - urgent: fault requests only, TCP_NODELAY, its own receive thread — never behind bulk;
//  - bulk: background batches, received straight into the place the engine chose.
// Each is plain TCP or, with TcpSourceOptions::tls, TLS 1.3 (transport/tls.h); both go through
// the same Stream code.
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
#include "base/unique_fd.h"
#include "transport/page_source.h"
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
};

class TcpPageSource : public PageSource {
 public:
  static absl::StatusOr<std::unique_ptr<TcpPageSource>> Connect(const TcpSourceOptions& opts);
  ~TcpPageSource() override;

  const std::vector<RegionInfo>& regions() const override { return regions_; }
  absl::Status Start(PageSink* sink) override;
  absl::Status RequestUrgent(uint32_t region, uint64_t page) override;
  absl::Status RequestBulk(uint32_t region, uint64_t first, uint32_t count) override;
  absl::Status Finish() override;
  void Stop() override;
  absl::Status Reconnect(absl::Time deadline) override;
  int reconnects() const { return reconnects_.load(); }

 private:
  struct Conn {
    Stream stream;
    std::mutex write_mu;  // one writer at a time
    std::thread rx;
  };
  TcpPageSource() = default;
  absl::Status Request(Conn& c, uint32_t region, uint64_t first, uint32_t count);
  void ReceiveLoop(Channel ch);
  absl::Status ReceivePages(Channel ch, Stream& stream, const FrameHeader& h);

  TcpSourceOptions opts_;
  std::vector<RegionInfo> regions_;
  Conn conns_[2];  // indexed by Channel
  PageSink* sink_ = nullptr;
  std::atomic<bool> stopping_{false};
  std::atomic<int> reconnects_{0};
  std::mutex reconnect_mu_;  // one Reconnect() at a time
};

// Opens one channel: connect, TLS handshake (with opts.tls), HELLO, WELCOME. Exposed for tests
// and the bench.
absl::StatusOr<Stream> OpenChannel(const TcpSourceOptions& opts, Channel ch,
                                   std::vector<RegionInfo>* regions);

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
