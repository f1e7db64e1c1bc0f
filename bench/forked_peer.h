// ForkedPeer: the sending end of a bulk benchmark in a child process of its own, so that the
// benchmark process holds only the receiving end and its CPU time (CLOCK_PROCESS_CPUTIME_ID,
// getrusage) is the receiver's alone. Two kinds:
//   kPageServer  a real PageServer over a memfd filled with the test pattern (tests/testing's
//                TestSource), serving any number of destinations one after another
//   kRawSender   every accepted connection gets the same memfd's bytes, written straight from
//                the mapping with write(): the link's ceiling, memcpy-bound on both ends
// Start it before the benchmark makes threads (fork). The child dies with the ForkedPeer.
#ifndef FAULTLINE_BENCH_FORKED_PEER_H_
#define FAULTLINE_BENCH_FORKED_PEER_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "transport/tcp_page_source.h"
#include "workload/pattern.h"

namespace faultline {

class ForkedPeer {
 public:
  enum class Kind { kPageServer, kRawSender };
  static absl::StatusOr<std::unique_ptr<ForkedPeer>> Start(Kind kind, uint64_t size,
                                                           PatternSpec pattern);
  ~ForkedPeer();  // SIGKILLs and reaps the child

  std::string address() const;
  TcpSourceOptions options() const;  // kPageServer: address + token
  // The child's CPU time so far (user + system, all its threads), ns: the sender's cost.
  uint64_t CpuNs() const;

 private:
  ForkedPeer() = default;
  pid_t pid_ = -1;
  int port_ = 0;
  Token token_{};
};

// CPU time of this process (all threads) and of the calling thread, in ns, and the process's
// user / system split from getrusage.
struct CpuSample {
  uint64_t process_ns = 0, thread_ns = 0, user_ns = 0, sys_ns = 0;
  static CpuSample Now();
};

}  // namespace faultline

#endif  // FAULTLINE_BENCH_FORKED_PEER_H_
