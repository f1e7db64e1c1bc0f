// CPU lists ("0-3,6", as taskset and cpuset take them) and the calling thread's affinity.
//
// For operators who keep faultline's background work off the cores their guests' vCPUs run
// on (`--bulk_cpus`): on a host whose cores the vCPUs and the bulk stream share, a fault's
// answer waits behind a bulk thread for a core (bench/RESULTS.md, 2026-12-06 afternoon).
#ifndef FAULTLINE_BASE_CPU_LIST_H_
#define FAULTLINE_BASE_CPU_LIST_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace faultline {

// "0", "0-3", "0-3,6,8-9" → the CPUs, ascending, each once. Empty text → empty list (no
// affinity asked for). InvalidArgument names what is wrong.
absl::StatusOr<std::vector<int>> ParseCpuList(absl::string_view text);
// {0,1,2,3,6} → "0-3,6".
std::string FormatCpuList(const std::vector<int>& cpus);

// The CPUs a thread may run on (sched_getaffinity); `tid` 0: the calling thread. Empty when
// the thread is gone.
std::vector<int> AllowedCpus(pid_t tid = 0);

// OK when every CPU of `cpus` is one the calling thread may run on; else InvalidArgument
// naming the first that is not, and the allowed list.
absl::Status CheckCpusAllowed(const std::vector<int>& cpus);

// Confines the calling thread to `cpus` (sched_setaffinity). Empty: nothing changes.
absl::Status PinCallingThread(const std::vector<int>& cpus);

}  // namespace faultline

#endif  // FAULTLINE_BASE_CPU_LIST_H_
