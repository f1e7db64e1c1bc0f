// FakeUffd: a scripted userfaultfd for unit tests of the engine's parts — in addition to the
// real one (engine/uffd_test.cc and every migration test use the kernel's). It models what the
// engine relies on, and lets a test make the kernel's races happen on demand:
//
//   mapped pages   Copy/ZeroPage write the bytes into the test's memory and mark the pages
//                  mapped; Continue marks them mapped (the bytes are already there: the test's
//                  memory stands for the page cache). A call on a mapped page fails EEXIST for
//                  that page after placing the ones before it, as the kernel does.
//   scripted errors  FailNext(Op, code, n): the next n calls of that operation fail with
//                  Unavailable (EAGAIN), NotFound (ENOENT) or any status, placing nothing.
//   events         QueueFault/QueueRemove/QueueUnmap; Read() returns them in order; fd() is an
//                  eventfd that is readable while any is queued.
//   wakes          every Wake() and every waking placement is recorded.
// Thread-safety: every method, from any thread (one mutex).
#ifndef FAULTLINE_ENGINE_TESTING_FAKE_UFFD_H_
#define FAULTLINE_ENGINE_TESTING_FAKE_UFFD_H_

#include <linux/userfaultfd.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "base/unique_fd.h"
#include "engine/uffd_ops.h"

namespace faultline {

class FakeUffd : public UffdOps {
 public:
  enum class Op { kCopy, kZeroPage, kContinue, kWake };
  // `page_size`: the granularity of the mapped-page model.
  explicit FakeUffd(uint32_t page_size = 4096, uint64_t features = ~0ull);

  int fd() const override { return event_fd_.get(); }
  uint64_t features() const override { return features_; }
  absl::Status Register(void* addr, size_t len, bool missing, bool minor,
                        uint64_t* ioctls = nullptr) override;
  absl::Status Unregister(void* addr, size_t len) override;
  absl::Status Copy(void* dst, const void* src, size_t len, bool wake,
                    size_t* done = nullptr) override;
  absl::Status ZeroPage(void* dst, size_t len, bool wake, size_t* done = nullptr) override;
  absl::Status Continue(void* dst, size_t len, bool wake, size_t* done = nullptr) override;
  absl::Status Wake(void* addr, size_t len) override;
  absl::StatusOr<int> Read(struct uffd_msg* msgs, int n) override;

  // Scripting.
  void FailNext(Op op, absl::Status status, int times = 1);
  void QueueFault(const void* addr, bool minor = false, uint32_t tid = 1);
  void QueueRemove(const void* start, size_t len);
  void QueueUnmap(const void* start, size_t len);
  // Marks pages mapped without a placement (a page the VMM touched, a dead engine placed).
  void MarkMapped(const void* addr, size_t len);
  void Unmap(const void* addr, size_t len);  // as MADV_DONTNEED: no longer mapped
  // Called at the start of every COPY, ZEROPAGE and CONTINUE (without the fake's lock held),
  // to observe what the caller had done by then.
  void OnPlace(std::function<void(Op, const void* dst)> f) { on_place_ = std::move(f); }

  // Observations.
  bool mapped(const void* addr) const;
  int calls(Op op) const;
  // Every address range woken (by Wake() or a placement without DONTWAKE), in order.
  std::vector<std::pair<uintptr_t, size_t>> wakes() const;
  bool WokenAt(const void* addr) const;  // some wake covered addr
  size_t queued_events() const;

 private:
  absl::Status Place(Op op, void* dst, const void* src, size_t len, bool wake, size_t* done);
  bool ScriptedFailure(Op op, absl::Status* out);  // mu_ held
  void SignalLocked();                             // mu_ held

  const uint32_t page_size_;
  const uint64_t features_;
  UniqueFd event_fd_;
  mutable std::mutex mu_;
  std::function<void(Op, const void*)> on_place_;
  std::set<uintptr_t> mapped_;  // page addresses
  std::map<Op, std::deque<absl::Status>> script_;
  std::map<Op, int> calls_;
  std::deque<struct uffd_msg> events_;
  std::vector<std::pair<uintptr_t, size_t>> wakes_;
};

}  // namespace faultline

#endif  // FAULTLINE_ENGINE_TESTING_FAKE_UFFD_H_
