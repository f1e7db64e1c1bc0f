// The calling thread's scheduler time slice (Linux >= 6.12, EEVDF's custom slice), and its
// nice value (its share of the CPU).
//
// A thread that sleeps most of the time and must answer quickly when woken (the fault path:
// the uffd reader, the urgent receive thread, the source's urgent server) asks for a short
// slice. EEVDF gives a waking thread with a shorter slice an earlier virtual deadline, and
// with the PREEMPT_SHORT feature (on by default) it preempts a running thread of the default
// slice (1.4 ms on a 2-CPU machine here) instead of waiting for that thread's slice to end. Its
// share of the CPU is unchanged (that is the nice value); only when it runs changes.
#ifndef FAULTLINE_BASE_THREAD_SLICE_H_
#define FAULTLINE_BASE_THREAD_SLICE_H_

#include <sys/types.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace faultline {

// The slice faultline's fault-path threads ask for (the engine's fault loop, the transports'
// urgent receive threads, the page server's urgent threads). On this 2-core machine, a 1 GiB
// QEMU guest with two bulk lanes, alternating runs: fault-latency mean with 2 vCPUs 154 -> 67 us
// and 183 -> 73 us (two series), with 1 vCPU 128 -> 69 us and 72 -> 81 us; total time
// unchanged (bench/RESULTS.md, 2026-12-05).
inline constexpr absl::Duration kDefaultFaultSlice = absl::Microseconds(100);

// Sets the calling thread's slice (the kernel clamps it to 0.1..100 ms); keeps its policy
// (SCHED_OTHER only) and nice value. Zero: nothing is changed. Errors (an older kernel: E2BIG
// or EINVAL; another policy: FailedPrecondition) leave the thread as it was.
absl::Status SetThreadSlice(absl::Duration slice);

// Gives the calling thread the kernel's default slice back (after SetThreadSlice).
absl::Status ClearThreadSlice();

// A thread's slice as the kernel has it (sched_getattr: its custom slice, or the kernel's
// default — 1.4 ms on a 2-CPU machine here), for tests.
// `tid` 0: the calling thread.
absl::StatusOr<absl::Duration> ThreadSlice(pid_t tid = 0);

// Sets the calling thread's nice value (-20..19; Linux keeps it per thread). A value below the
// thread's own needs CAP_SYS_NICE or a high enough RLIMIT_NICE: PermissionDenied then, and the
// thread is left as it was. The slice is kept.
absl::Status SetThreadNice(int nice);

// A thread's nice value. `tid` 0: the calling thread.
absl::StatusOr<int> ThreadNice(pid_t tid = 0);

// Whether this process may give its threads `nice` (tried on a short-lived thread of its own:
// nothing here changes). OutOfRange outside -20..19, PermissionDenied naming the privilege.
absl::Status CheckNiceAllowed(int nice);

}  // namespace faultline

#endif  // FAULTLINE_BASE_THREAD_SLICE_H_
