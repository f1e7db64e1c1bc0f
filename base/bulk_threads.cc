#include "base/bulk_threads.h"

#include "base/cpu_list.h"

namespace faultline {

void BulkThreads::ApplyToBulkThread() const {
  (void)PinCallingThread(cpus);  // empty: nothing changes
  if (nice != 0) (void)SetThreadNice(nice);
}

void BulkThreads::ApplyToFaultPathThread() const {
  if (const int n = fault_path_nice(); n != 0) (void)SetThreadNice(n);
}

}  // namespace faultline
