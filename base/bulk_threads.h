// Where the bulk stream's threads run and at what priority — the operator's `--bulk_cpus` and
// `--bulk_nice`, on either side of a migration — and what that leaves the fault path's threads.
//
// One value travels from the command line to every thread that starts a bulk or fault-path
// loop (the destination's receive threads, the source's serving threads, the engine's fault
// loop); each thread applies it to itself when it starts. Copied, never shared.
#ifndef FAULTLINE_BASE_BULK_THREADS_H_
#define FAULTLINE_BASE_BULK_THREADS_H_

#include <vector>

#include "base/thread_slice.h"

namespace faultline {

struct BulkThreads {
  // CPUs the bulk threads are confined to (base/cpu_list.h); empty: no affinity set.
  std::vector<int> cpus;
  // Their nice value (base/thread_slice.h), -20..19; 0: unchanged.
  int nice = 0;

  // The fault path's nice value: its threads never rank below the bulk stream's
  // (bench/RESULTS.md: with bulk at -5 and the fault path at 0 the fault mean rose
  // 29 -> 105 us; at -5 both, 23 us), and are not lowered with it. 0: unchanged.
  int fault_path_nice() const { return nice < 0 ? nice : 0; }

  // Both best effort: the values are checked once, up front (CheckCpusAllowed,
  // CheckNiceAllowed); one a thread may not take leaves it as it is.
  // The calling thread is a bulk stream's: confined to `cpus`, at `nice`.
  void ApplyToBulkThread() const;
  // The calling thread is on the fault path: at fault_path_nice(), on any CPU.
  void ApplyToFaultPathThread() const;
};

}  // namespace faultline

#endif  // FAULTLINE_BASE_BULK_THREADS_H_
