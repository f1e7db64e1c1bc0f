#include "engine/testing/fake_uffd.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace faultline {

FakeUffd::FakeUffd(uint32_t page_size, uint64_t features)
    : page_size_(page_size),
      features_(features),
      event_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

absl::Status FakeUffd::Register(void*, size_t, bool, bool, uint64_t* ioctls) {
  if (ioctls) {
    *ioctls = (uint64_t{1} << _UFFDIO_WAKE) | (uint64_t{1} << _UFFDIO_COPY) |
              (uint64_t{1} << _UFFDIO_ZEROPAGE) | (uint64_t{1} << _UFFDIO_CONTINUE);
  }
  return absl::OkStatus();
}

absl::Status FakeUffd::Unregister(void*, size_t) { return absl::OkStatus(); }

bool FakeUffd::ScriptedFailure(Op op, absl::Status* out) {
  auto it = script_.find(op);
  if (it == script_.end() || it->second.empty()) return false;
  *out = it->second.front();
  it->second.pop_front();
  return true;
}

absl::Status FakeUffd::Place(Op op, void* dst, const void* src, size_t len, bool wake,
                             size_t* done) {
  if (on_place_) on_place_(op, dst);
  std::lock_guard<std::mutex> l(mu_);
  ++calls_[op];
  if (done) *done = 0;
  absl::Status scripted;
  if (ScriptedFailure(op, &scripted)) return scripted;
  const uintptr_t base = reinterpret_cast<uintptr_t>(dst);
  for (size_t off = 0; off < len; off += page_size_) {
    if (mapped_.count(base + off)) {
      if (done) *done = off;
      return absl::AlreadyExistsError(
          absl::StrCat("fake: page at ", absl::Hex(base + off), " already mapped"));
    }
    if (op == Op::kCopy)
      memcpy(reinterpret_cast<uint8_t*>(base + off), static_cast<const uint8_t*>(src) + off,
             page_size_);
    if (op == Op::kZeroPage) memset(reinterpret_cast<uint8_t*>(base + off), 0, page_size_);
    mapped_.insert(base + off);
  }
  if (done) *done = len;
  if (wake) wakes_.emplace_back(base, len);
  return absl::OkStatus();
}

absl::Status FakeUffd::Copy(void* dst, const void* src, size_t len, bool wake, size_t* done) {
  return Place(Op::kCopy, dst, src, len, wake, done);
}

absl::Status FakeUffd::ZeroPage(void* dst, size_t len, bool wake, size_t* done) {
  return Place(Op::kZeroPage, dst, nullptr, len, wake, done);
}

absl::Status FakeUffd::Continue(void* dst, size_t len, bool wake, size_t* done) {
  return Place(Op::kContinue, dst, nullptr, len, wake, done);
}

absl::Status FakeUffd::Wake(void* addr, size_t len) {
  std::lock_guard<std::mutex> l(mu_);
  ++calls_[Op::kWake];
  absl::Status scripted;
  if (ScriptedFailure(Op::kWake, &scripted)) return scripted;
  wakes_.emplace_back(reinterpret_cast<uintptr_t>(addr), len);
  return absl::OkStatus();
}

absl::StatusOr<int> FakeUffd::Read(struct uffd_msg* msgs, int n) {
  std::lock_guard<std::mutex> l(mu_);
  int got = 0;
  while (got < n && !events_.empty()) {
    msgs[got++] = events_.front();
    events_.pop_front();
  }
  uint64_t v;
  if (events_.empty()) (void)!read(event_fd_.get(), &v, sizeof(v));
  return got;
}

void FakeUffd::SignalLocked() {
  uint64_t one = 1;
  (void)!write(event_fd_.get(), &one, sizeof(one));
}

void FakeUffd::FailNext(Op op, absl::Status status, int times) {
  std::lock_guard<std::mutex> l(mu_);
  for (int i = 0; i < times; ++i) script_[op].push_back(status);
}

void FakeUffd::QueueFault(const void* addr, bool minor, uint32_t tid) {
  struct uffd_msg m = {};
  m.event = UFFD_EVENT_PAGEFAULT;
  m.arg.pagefault.address = reinterpret_cast<uintptr_t>(addr) & ~uintptr_t{page_size_ - 1};
  m.arg.pagefault.flags = minor ? UFFD_PAGEFAULT_FLAG_MINOR : 0;
  m.arg.pagefault.feat.ptid = tid;
  std::lock_guard<std::mutex> l(mu_);
  events_.push_back(m);
  SignalLocked();
}

void FakeUffd::QueueRemove(const void* start, size_t len) {
  struct uffd_msg m = {};
  m.event = UFFD_EVENT_REMOVE;
  m.arg.remove.start = reinterpret_cast<uintptr_t>(start);
  m.arg.remove.end = m.arg.remove.start + len;
  std::lock_guard<std::mutex> l(mu_);
  events_.push_back(m);
  SignalLocked();
}

void FakeUffd::QueueUnmap(const void* start, size_t len) {
  struct uffd_msg m = {};
  m.event = UFFD_EVENT_UNMAP;
  m.arg.remove.start = reinterpret_cast<uintptr_t>(start);
  m.arg.remove.end = m.arg.remove.start + len;
  std::lock_guard<std::mutex> l(mu_);
  events_.push_back(m);
  SignalLocked();
}

void FakeUffd::MarkMapped(const void* addr, size_t len) {
  std::lock_guard<std::mutex> l(mu_);
  const uintptr_t base = reinterpret_cast<uintptr_t>(addr);
  for (size_t off = 0; off < len; off += page_size_) mapped_.insert(base + off);
}

void FakeUffd::Unmap(const void* addr, size_t len) {
  std::lock_guard<std::mutex> l(mu_);
  const uintptr_t base = reinterpret_cast<uintptr_t>(addr);
  for (size_t off = 0; off < len; off += page_size_) mapped_.erase(base + off);
}

bool FakeUffd::mapped(const void* addr) const {
  std::lock_guard<std::mutex> l(mu_);
  return mapped_.count(reinterpret_cast<uintptr_t>(addr) & ~uintptr_t{page_size_ - 1}) > 0;
}

int FakeUffd::calls(Op op) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = calls_.find(op);
  return it == calls_.end() ? 0 : it->second;
}

std::vector<std::pair<uintptr_t, size_t>> FakeUffd::wakes() const {
  std::lock_guard<std::mutex> l(mu_);
  return wakes_;
}

bool FakeUffd::WokenAt(const void* addr) const {
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& [start, len] : wakes_) {
    if (a >= start && a < start + len) return true;
  }
  return false;
}

size_t FakeUffd::queued_events() const {
  std::lock_guard<std::mutex> l(mu_);
  return events_.size();
}

}  // namespace faultline
