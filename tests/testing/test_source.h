// TestSource: real source memory (the CLI's source set-up, cli/setup.h: a memfd, or hugetlb
// memfd, filled with the test pattern) served by a real PageServer on a loopback port, on a
// thread of the test.
#ifndef FAULTLINE_TESTS_TESTING_TEST_SOURCE_H_
#define FAULTLINE_TESTS_TESTING_TEST_SOURCE_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "cli/setup.h"
#include "transport/page_server.h"
#include "transport/tcp_page_source.h"
#include "workload/pattern.h"

namespace faultline {

class TestSource {
 public:
  // `tls`: a server context to serve TLS with (null: plain TCP). `faults`: the page server
  // misbehaves as it says (transport/page_server.h; null: it does not); it must outlive the
  // TestSource.
  static absl::StatusOr<std::unique_ptr<TestSource>> Start(
      uint64_t size, uint32_t page_size, PatternSpec pattern = {},
      std::shared_ptr<const TlsContext> tls = nullptr, FaultInjector* faults = nullptr);
  ~TestSource();

  TcpSourceOptions options() const;  // address + token for TcpPageSource::Connect (no TLS)
  const uint8_t* base() const { return mem_->base(); }
  uint8_t* writable_base() { return mem_->base(); }
  uint64_t size() const { return mem_->size(); }
  uint32_t page_size() const { return mem_->page_size(); }
  PageServer& server() { return *server_; }
  const Token& token() const { return token_; }
  int port() const { return port_; }
  // Stops serving (closes every connection) and waits for the server thread.
  void Stop();
  // A page server restart: Stop(), then a new server over the same memory, the same token
  // and the same port (the source VM's memory still exists).
  absl::Status Restart();
  // Pages of `mem` (same size) that differ from the source.
  uint64_t CountMismatches(const uint8_t* mem) const;

 private:
  TestSource() = default;
  absl::Status StartServer();
  std::unique_ptr<PatternMemory> mem_;
  UniqueFd listen_;
  Token token_{};
  std::shared_ptr<const TlsContext> tls_;
  FaultInjector* faults_ = nullptr;
  int port_ = 0;
  std::unique_ptr<PageServer> server_;
  std::thread thread_;
};

}  // namespace faultline

#endif  // FAULTLINE_TESTS_TESTING_TEST_SOURCE_H_
