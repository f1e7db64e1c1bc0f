#include "tests/testing/test_dest.h"

#include <unistd.h>

#include "cli/setup.h"
#include "workload/pattern.h"

namespace faultline {

absl::StatusOr<Dest> MakeDest(RegionKind kind, uint64_t size, const TcpSourceOptions& source,
                              const EngineOptions& eo) {
  absl::StatusOr<Destination> dest = CreateDestination(kind, size, eo);
  if (!dest.ok()) return dest.status();
  Dest d;
  d.region = std::move(dest->regions.front());
  d.engine = std::move(dest->engine);
  absl::StatusOr<std::unique_ptr<TcpPageSource>> s = TcpPageSource::Connect(source);
  if (!s.ok()) return s.status();
  d.source = std::move(*s);
  return d;
}

absl::StatusOr<Dest> MakeDest(RegionKind kind, TestSource& src, const EngineOptions& eo) {
  return MakeDest(kind, src.size(), src.options(), eo);
}

uint64_t FirstNonZeroPage(uint64_t from) {
  while (PatternPageIsZero(PatternSpec{}, from)) ++from;
  return from;
}

bool WaitFor(const std::function<bool()>& cond) {
  for (int i = 0; i < 2000 && !cond(); ++i) usleep(1000);
  return cond();
}

}  // namespace faultline
