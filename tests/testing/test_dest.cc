#include "tests/testing/test_dest.h"

#include <unistd.h>

#include "workload/pattern.h"

namespace faultline {

absl::StatusOr<Dest> MakeDest(RegionKind kind, uint64_t size, const TcpSourceOptions& source,
                              const EngineOptions& eo) {
  Dest d;
  absl::StatusOr<std::unique_ptr<GuestRegion>> r = GuestRegion::Create("ram", kind, size);
  if (!r.ok()) return r.status();
  d.region = std::move(*r);
  absl::StatusOr<Userfaultfd> u = Userfaultfd::Open();
  if (!u.ok()) return u.status();
  absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create({d.region.get()}, std::move(*u), eo);
  if (!e.ok()) return e.status();
  d.engine = std::move(*e);
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
