// FlakyProxy: a TCP proxy on loopback between the destination and a real page server that
// breaks the network on demand: it cuts every connection after a number of bytes have flowed
// from the server, or at seeded random byte offsets in either direction, and can refuse new
// connections (a source that is gone).
#ifndef FAULTLINE_TESTS_TESTING_FLAKY_PROXY_H_
#define FAULTLINE_TESTS_TESTING_FLAKY_PROXY_H_

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/unique_fd.h"

namespace faultline {

class FlakyProxy {
 public:
  explicit FlakyProxy(const std::string& upstream);
  ~FlakyProxy();
  std::string address() const;
  // Cut every connection each time this many more bytes went server → client (0: never).
  void CutEvery(uint64_t bytes) { cut_every_.store(bytes); }
  // Random cuts, reproducible from `seed`: after each cut the next one comes after a number
  // of bytes drawn uniformly from [min_bytes, max_bytes], counted over both directions, and
  // falls exactly there — mid-frame, mid-page, mid-request, mid-handshake. Each cut drops
  // either the connection it falls on or every connection (a coin toss).
  void CutRandomly(uint64_t seed, uint64_t min_bytes, uint64_t max_bytes);
  // Down: new connections are closed at once, and live ones are cut.
  void SetDown(bool down);
  // A slow source: hold every chunk from the server for this long before passing it on.
  void SetDelayPerChunkUs(uint32_t us) { delay_us_.store(us); }
  int cuts() const { return cuts_.load(); }
  int connections() const { return connections_.load(); }
  // New connections the proxy had to close because the upstream did not answer.
  int upstream_failures() const { return upstream_failures_.load(); }

 private:
  void AcceptLoop();
  void Pump(int from, int to, bool from_server);
  void CutAll();
  // Random mode: whether a cut falls within the next `n` bytes; if so, *pass receives how many
  // of them go through first and *all whether the cut drops every connection.
  bool RandomCutWithin(size_t n, size_t* pass, bool* all);

  std::string upstream_;
  UniqueFd listen_;
  int port_ = 0;
  std::atomic<bool> stop_{false}, down_{false};
  std::atomic<uint64_t> cut_every_{0}, since_cut_{0};
  std::atomic<int> cuts_{0}, connections_{0}, upstream_failures_{0};
  std::atomic<uint32_t> delay_us_{0};
  std::mutex rnd_mu_;
  uint64_t rnd_state_ = 0, rnd_min_ = 0, rnd_max_ = 0;  // guarded by rnd_mu_; max 0: off
  uint64_t rnd_left_ = 0;                               // bytes until the next random cut
  std::mutex mu_;
  std::vector<int> fds_;
  std::vector<UniqueFd> owned_;
  std::vector<std::thread> threads_;
  std::thread accept_;
};

}  // namespace faultline

#endif  // FAULTLINE_TESTS_TESTING_FLAKY_PROXY_H_
