#include "tests/testing/flaky_proxy.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "transport/socket.h"

namespace faultline {

FlakyProxy::FlakyProxy(const std::string& upstream) : upstream_(upstream) {
  absl::StatusOr<UniqueFd> l = ListenTcp("127.0.0.1:0");
  if (l.ok()) {
    listen_ = std::move(*l);
    port_ = BoundPort(listen_.get()).value_or(0);
  }
  accept_ = std::thread([this] { AcceptLoop(); });
}

FlakyProxy::~FlakyProxy() {
  stop_.store(true);
  CutAll();
  accept_.join();
  std::vector<std::thread> ts;
  {
    std::lock_guard<std::mutex> l(mu_);
    ts.swap(threads_);
  }
  for (auto& t : ts) t.join();
}

std::string FlakyProxy::address() const { return absl::StrCat("127.0.0.1:", port_); }

void FlakyProxy::SetDown(bool down) {
  down_.store(down);
  if (down) CutAll();
}

namespace {
uint64_t SplitMix64(uint64_t* s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

void FlakyProxy::CutRandomly(uint64_t seed, uint64_t min_bytes, uint64_t max_bytes) {
  std::lock_guard<std::mutex> l(rnd_mu_);
  rnd_state_ = seed;
  rnd_min_ = std::max<uint64_t>(1, min_bytes);
  rnd_max_ = std::max(rnd_min_, max_bytes);
  rnd_left_ = rnd_min_ + SplitMix64(&rnd_state_) % (rnd_max_ - rnd_min_ + 1);
}

bool FlakyProxy::RandomCutWithin(size_t n, size_t* pass, bool* all) {
  std::lock_guard<std::mutex> l(rnd_mu_);
  if (rnd_max_ == 0) return false;
  if (n < rnd_left_) {
    rnd_left_ -= n;
    return false;
  }
  *pass = static_cast<size_t>(rnd_left_);
  *all = SplitMix64(&rnd_state_) & 1;
  rnd_left_ = rnd_min_ + SplitMix64(&rnd_state_) % (rnd_max_ - rnd_min_ + 1);
  return true;
}

void FlakyProxy::CutAll() {
  std::lock_guard<std::mutex> l(mu_);
  for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  fds_.clear();
}

void FlakyProxy::AcceptLoop() {
  while (!stop_.load()) {
    struct pollfd p = {listen_.get(), POLLIN, 0};
    if (poll(&p, 1, 20) != 1) continue;
    UniqueFd client(accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!client.valid() || down_.load()) continue;  // closed at once
    connections_.fetch_add(1);
    absl::StatusOr<UniqueFd> server = ConnectTcp(upstream_, absl::Seconds(2));
    if (!server.ok()) {
      upstream_failures_.fetch_add(1);
      continue;
    }
    std::lock_guard<std::mutex> l(mu_);
    int c = client.get(), s = server->get();
    fds_.push_back(c);
    fds_.push_back(s);
    owned_.push_back(std::move(client));
    owned_.push_back(std::move(*server));
    threads_.emplace_back([this, c, s] { Pump(c, s, false); });
    threads_.emplace_back([this, c, s] { Pump(s, c, true); });
  }
}

void FlakyProxy::Pump(int from, int to, bool from_server) {
  char buf[64 << 10];
  while (true) {
    ssize_t n = recv(from, buf, sizeof(buf), 0);
    if (n <= 0) break;
    if (from_server && delay_us_.load() != 0) usleep(delay_us_.load());
    size_t pass = 0;
    bool all = false;
    if (RandomCutWithin(static_cast<size_t>(n), &pass, &all)) {
      if (pass > 0) (void)WriteAll(to, buf, pass);
      cuts_.fetch_add(1);
      if (all) CutAll();
      break;
    }
    if (!WriteAll(to, buf, static_cast<size_t>(n)).ok()) break;
    if (from_server) {
      const uint64_t every = cut_every_.load();
      if (every != 0 && since_cut_.fetch_add(n) + n >= every) {
        since_cut_.store(0);
        cuts_.fetch_add(1);
        CutAll();
        break;
      }
    }
  }
  ::shutdown(from, SHUT_RDWR);
  ::shutdown(to, SHUT_RDWR);
}

}  // namespace faultline
