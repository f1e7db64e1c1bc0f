#include "base/thread_slice.h"

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"

namespace faultline {
namespace {

// The kernel's struct sched_attr (glibc 2.36 has no wrapper or type).
struct SchedAttr {
  uint32_t size;
  uint32_t sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime;  // for SCHED_OTHER/BATCH: the custom slice in ns (0: default)
  uint64_t sched_deadline;
  uint64_t sched_period;
  uint32_t sched_util_min;
  uint32_t sched_util_max;
};

absl::Status Get(pid_t tid, SchedAttr* a) {
  *a = {};
  if (syscall(SYS_sched_getattr, tid, a, sizeof(*a), 0) != 0) return ErrnoStatus("sched_getattr");
  return absl::OkStatus();
}

absl::Status SetRuntime(uint64_t runtime_ns) {
  SchedAttr a;
  if (absl::Status s = Get(0, &a); !s.ok()) return s;
  if (a.sched_policy != SCHED_OTHER) {
    return absl::FailedPreconditionError(
        absl::StrCat("thread slice: the thread's policy is ", a.sched_policy, ", not SCHED_OTHER"));
  }
  a.size = sizeof(a);
  a.sched_flags = 0;
  a.sched_runtime = runtime_ns;  // 0: the kernel's default slice again
  if (syscall(SYS_sched_setattr, 0, &a, 0) != 0) return ErrnoStatus("sched_setattr (slice)");
  return absl::OkStatus();
}

}  // namespace

absl::Status SetThreadSlice(absl::Duration slice) {
  if (slice <= absl::ZeroDuration()) return absl::OkStatus();
  return SetRuntime(static_cast<uint64_t>(absl::ToInt64Nanoseconds(slice)));
}

absl::Status ClearThreadSlice() { return SetRuntime(0); }

absl::Status SetThreadNice(int nice) {
  if (nice < -20 || nice > 19) {
    return absl::OutOfRangeError(absl::StrCat("nice ", nice, " is outside -20..19"));
  }
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), nice) != 0) {
    const int e = errno;
    if (e == EACCES || e == EPERM) {
      return absl::PermissionDeniedError(absl::StrCat(
          "nice ", nice, ": raising a thread's priority needs CAP_SYS_NICE or RLIMIT_NICE >= ",
          20 - nice, " (this process has neither)"));
    }
    return ErrnoStatus("setpriority", e);
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ThreadNice(pid_t tid) {
  SchedAttr a;
  if (absl::Status s = Get(tid, &a); !s.ok()) return s;
  return a.sched_nice;
}

absl::Status CheckNiceAllowed(int nice) {
  absl::Status result;
  std::thread probe([&] { result = SetThreadNice(nice); });  // dies with its nice value
  probe.join();
  return result;
}

absl::StatusOr<absl::Duration> ThreadSlice(pid_t tid) {
  SchedAttr a;
  if (absl::Status s = Get(tid, &a); !s.ok()) return s;
  return absl::Nanoseconds(a.sched_runtime);
}

}  // namespace faultline
