#include "tests/testing/fake_source.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "absl/strings/str_cat.h"
#include "base/crc32c.h"
#include "transport/socket.h"

namespace faultline {

FakeSource::FakeSource(const uint8_t* mem, uint64_t size, uint32_t page_size, Mode mode, int n)
    : mem_(mem), size_(size), page_size_(page_size), mode_(mode), n_(n), token_(RandomToken()) {
  absl::StatusOr<UniqueFd> l = ListenTcp("127.0.0.1:0");
  if (l.ok()) {
    listen_ = std::move(*l);
    port_ = BoundPort(listen_.get()).value_or(0);
  }
  accept_ = std::thread([this] { AcceptLoop(); });
}

FakeSource::~FakeSource() { Stop(); }

std::string FakeSource::address() const { return absl::StrCat("127.0.0.1:", port_); }

void FakeSource::Stop() {
  stop_.store(true);
  {
    std::lock_guard<std::mutex> l(mu_);
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  }
  if (accept_.joinable()) accept_.join();
  std::vector<std::thread> ts;
  {
    std::lock_guard<std::mutex> l(mu_);
    ts.swap(threads_);
  }
  for (auto& t : ts) t.join();
}

void FakeSource::AcceptLoop() {
  while (!stop_.load()) {
    struct pollfd p = {listen_.get(), POLLIN, 0};
    if (poll(&p, 1, 50) != 1) continue;
    UniqueFd fd(accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd.valid()) continue;
    std::lock_guard<std::mutex> l(mu_);
    fds_.push_back(fd.get());
    threads_.emplace_back([this, f = fd.release()] { Serve(UniqueFd(f)); });
  }
}

bool FakeSource::SendPages(int fd, const PageRange& r, bool bulk) {
  std::vector<PageDesc> descs(r.count);
  std::string data;
  for (uint32_t i = 0; i < r.count; ++i) {
    const uint8_t* page = mem_ + (r.first + i) * page_size_;
    if (IsZeroPage(page, page_size_)) {
      descs[i].flags = kPageZero;
      continue;
    }
    descs[i].crc = Crc32c(page, page_size_);
    const bool corrupt_here = bulk ? mode_ == Mode::kCorruptFirstPages
                                   : mode_ == Mode::kCorruptFirstUrgentPages;
    if (corrupt_here && corrupted_.fetch_add(1) < n_) descs[i].crc ^= 1;
    data.append(reinterpret_cast<const char*>(page), page_size_);
  }
  std::string out;
  EncodePagesPrefix({r.region, r.count, r.first}, descs, page_size_, &out);
  out += data;
  if (bulk && mode_ == Mode::kCloseMidFrame && frames_.load() >= n_) {
    (void)WriteAll(fd, out.data(), out.size() / 2);
    std::lock_guard<std::mutex> l(mu_);
    for (int f : fds_) ::shutdown(f, SHUT_RDWR);
    return false;
  }
  if (bulk && mode_ == Mode::kGarbageAfterWelcome) {
    std::string junk(4096, '\x5a');
    (void)WriteAll(fd, junk.data(), junk.size());
    return false;
  }
  if (bulk && mode_ == Mode::kOutOfRangePages) {
    std::string bad;
    EncodePagesPrefix({r.region, 1, size_ / page_size_ + 5}, {PageDesc{0, kPageZero}},
                      page_size_, &bad);
    (void)WriteAll(fd, bad.data(), bad.size());
    return false;
  }
  frames_.fetch_add(1);
  return WriteAll(fd, out.data(), out.size()).ok();
}

void FakeSource::Serve(UniqueFd fd) {
  FrameHeader h;
  std::string payload;
  if (!ReadSmallFrame(fd.get(), &h, &payload).ok()) return;
  absl::StatusOr<Hello> hello = DecodeHello(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
  if (!hello.ok()) return;
  std::string out;
  if (mode_ == Mode::kRejectToken) {
    EncodeError(absl::PermissionDeniedError("authentication failed: wrong migration token"),
                &out);
    (void)WriteAll(fd.get(), out.data(), out.size());
    return;
  }
  Welcome w;
  w.regions = {{"ram", mode_ == Mode::kWrongRegionTable ? size_ * 2 : size_, page_size_}};
  EncodeWelcome(w, &out);
  if (!WriteAll(fd.get(), out.data(), out.size()).ok()) return;
  const bool bulk = hello->channel == Channel::kBulk;
  std::vector<PageRange> held;  // kReorderBulk: a request waiting for its successor
  while (!stop_.load()) {
    // A held request is answered after the next one, or when the line goes quiet.
    if (!held.empty()) {
      struct pollfd p = {fd.get(), POLLIN, 0};
      if (poll(&p, 1, 50) == 0) {
        if (!SendPages(fd.get(), held.back(), bulk)) return;
        held.clear();
        continue;
      }
    }
    if (!ReadSmallFrame(fd.get(), &h, &payload).ok()) return;
    if (h.type != FrameType::kRequest) continue;
    absl::StatusOr<PageRange> r = DecodeRange(
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
    if (!r.ok()) return;
    if (bulk && mode_ == Mode::kReorderBulk) {
      if (held.empty()) {
        held.push_back(*r);
        continue;
      }
      if (!SendPages(fd.get(), *r, bulk) || !SendPages(fd.get(), held.back(), bulk)) return;
      held.clear();
      continue;
    }
    if (!SendPages(fd.get(), *r, bulk)) return;
  }
}

}  // namespace faultline
