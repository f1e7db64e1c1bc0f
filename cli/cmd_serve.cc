// faultline serve: waits for a VMM to hand over its userfaultfd and guest memory (faultline's
// hand-off or Firecracker's), then serves its faults from the source (cli/handoff_run.h).
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/time/time.h"
#include "cli/common.h"
#include "cli/handoff_run.h"

ABSL_FLAG(std::string, state_dir, "/run/faultline",
          "serve: directory of the per-migration page-state files (a tmpfs). If faultline "
          "dies mid-migration, a new `serve` with the same token continues from the file "
          "when the VMM hands the same uffd over again. Empty: keep no state file.");

namespace faultline {

int RunServe() {
  absl::StatusOr<TcpSourceOptions> source = SourceOptionsFromFlags();
  if (!source.ok()) return Fail(source.status());
  absl::StatusOr<std::unique_ptr<HandoffServer>> server =
      HandoffServer::Listen(absl::GetFlag(FLAGS_handoff));
  if (!server.ok()) return Fail(server.status());
  std::printf("waiting for a VMM on %s\n", absl::GetFlag(FLAGS_handoff).c_str());
  std::fflush(stdout);
  absl::StatusOr<std::unique_ptr<HandoffSession>> session =
      (*server)->Accept(absl::Hours(24), getuid());
  if (!session.ok()) return Fail(session.status());
  HandoffRunOptions ho;
  ho.source = *source;
  ho.engine = EngineOptionsFromFlags();
  ho.state_dir = absl::GetFlag(FLAGS_state_dir);
  ho.connect = ConnectSource;
  ho.log = [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };
  nlohmann::json stats;
  absl::Status s = RunHandoff(**session, ho, &stats);
  if (!s.ok()) return Fail(s);
  std::printf("%s\n", stats.dump(2).c_str());
  return 0;
}

}  // namespace faultline
