// The destination side of a test migration: the CLI's destination set-up (cli/setup.h: fresh
// guest memory of a kind, a userfaultfd, an engine) and a TCP connection to a page server —
// plus Runner, which runs Engine::Run on a thread and cancels it if a failed ASSERT leaves the
// test early.
#ifndef FAULTLINE_TESTS_TESTING_TEST_DEST_H_
#define FAULTLINE_TESTS_TESTING_TEST_DEST_H_

#include <functional>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "engine/region.h"
#include "tests/testing/test_source.h"
#include "transport/tcp_page_source.h"

namespace faultline {

struct Dest {
  std::unique_ptr<GuestRegion> region;
  std::unique_ptr<Engine> engine;  // destroyed before `region` (unregisters first)
  std::unique_ptr<TcpPageSource> source;
};

// `size` bytes of `kind` memory (one region "ram", CreateDestination), then a connection to
// the page server at `source`: a source serving another table is the engine's to refuse.
absl::StatusOr<Dest> MakeDest(RegionKind kind, uint64_t size, const TcpSourceOptions& source,
                              const EngineOptions& eo = {});
// The same, straight from a TestSource.
absl::StatusOr<Dest> MakeDest(RegionKind kind, TestSource& src, const EngineOptions& eo = {});

class Runner {
 public:
  Runner(Engine* e, PageSource* s) : e_(e), t_([this, s] { status_ = e_->Run(s); }) {}
  ~Runner() {
    if (t_.joinable()) {
      e_->Cancel();
      t_.join();
    }
  }
  absl::Status Join() {
    t_.join();
    return status_;
  }

 private:
  Engine* e_;
  absl::Status status_;
  std::thread t_;
};

// The first page at or after `from` that the default test pattern does not leave zero.
uint64_t FirstNonZeroPage(uint64_t from);
// Polls `cond` for up to 2 s; returns its last value.
bool WaitFor(const std::function<bool()>& cond);

}  // namespace faultline

#endif  // FAULTLINE_TESTS_TESTING_TEST_DEST_H_
