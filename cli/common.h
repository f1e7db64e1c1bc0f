// What the faultline subcommands share: the flags several of them take (connection to the
// source, TLS, transport, engine tuning, output), their parsing into library options, and the
// one place that turns a library error into the CLI's message, adding which flag to change.
// Each subcommand (cli/cmd_*.cc) owns the flags only it takes.
#ifndef FAULTLINE_CLI_COMMON_H_
#define FAULTLINE_CLI_COMMON_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/flags/declare.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/bulk_threads.h"
#include "cli/setup.h"  // ParseSize
#include "engine/engine.h"
#include "transport/page_source.h"
#include "transport/protocol.h"
#include "transport/tcp_page_source.h"
#include "transport/tls.h"
#include "workload/thread_guest.h"

ABSL_DECLARE_FLAG(std::string, kind);
ABSL_DECLARE_FLAG(std::string, size);
ABSL_DECLARE_FLAG(std::string, connect);
ABSL_DECLARE_FLAG(std::string, token);
ABSL_DECLARE_FLAG(std::string, guest);
ABSL_DECLARE_FLAG(int64_t, touches);
ABSL_DECLARE_FLAG(std::string, stats_json);
ABSL_DECLARE_FLAG(bool, progress);
ABSL_DECLARE_FLAG(bool, busy_poll);
ABSL_DECLARE_FLAG(int32_t, bulk_batch_kib);
ABSL_DECLARE_FLAG(int32_t, bulk_window);
ABSL_DECLARE_FLAG(int32_t, bulk_channels);
ABSL_DECLARE_FLAG(bool, warmup);
ABSL_DECLARE_FLAG(int32_t, churn_permille);
ABSL_DECLARE_FLAG(int32_t, warmup_rounds);
ABSL_DECLARE_FLAG(int32_t, warmup_rate_mib);
ABSL_DECLARE_FLAG(int32_t, warmup_throttle);
ABSL_DECLARE_FLAG(int32_t, warmup_throttle_step);
ABSL_DECLARE_FLAG(int64_t, warmup_converge_pages);
ABSL_DECLARE_FLAG(double, warmup_shrink);
ABSL_DECLARE_FLAG(absl::Duration, reconnect_deadline);
ABSL_DECLARE_FLAG(absl::Duration, fault_slice);
ABSL_DECLARE_FLAG(std::string, bulk_cpus);
ABSL_DECLARE_FLAG(int32_t, bulk_nice);
ABSL_DECLARE_FLAG(std::string, handoff);
ABSL_DECLARE_FLAG(std::string, transport);
ABSL_DECLARE_FLAG(std::string, rdma_device);
ABSL_DECLARE_FLAG(std::string, tls_cert);
ABSL_DECLARE_FLAG(std::string, tls_key);
ABSL_DECLARE_FLAG(std::string, tls_ca);
ABSL_DECLARE_FLAG(std::string, tls_server_name);

namespace faultline {

// A bar on a terminal, a line per quarter otherwise.
void ProgressBar(uint64_t done, uint64_t total);
// Prints "faultline: error: <message>" plus, where the error is one a flag fixes, which flag;
// returns the exit status 1.
int Fail(const absl::Status& s);

// --bulk_cpus and --bulk_nice, checked once per command: every CPU one this process may use;
// the nice value in range and one this process may give (CAP_SYS_NICE below 0; 0 is not
// probed). An error names the flag and what to use instead.
absl::StatusOr<BulkThreads> BulkThreadsFromFlags();
// --bulk_batch_kib, --bulk_window, --busy_poll, --reconnect_deadline, --warmup*: an error
// names the flag. The fault loop's nice value is `bulk`'s fault_path_nice().
absl::StatusOr<EngineOptions> EngineOptionsFromFlags(const BulkThreads& bulk);
// --guest, --touches.
absl::StatusOr<GuestOptions> GuestOptionsFromFlags();
// --tls_cert/--tls_key/--tls_ca for one side; null without any of them (plain TCP).
absl::StatusOr<std::shared_ptr<const TlsContext>> TlsFromFlags(TlsContext::Role role);
std::string TlsMode(const std::shared_ptr<const TlsContext>& tls);
// --connect, --token, --busy_poll, --bulk_channels, TLS (client side); the bulk threads as
// `bulk` says.
absl::StatusOr<TcpSourceOptions> SourceOptionsFromFlags(const BulkThreads& bulk);
// --transport: a TCP or an RDMA transport to the source.
absl::StatusOr<std::unique_ptr<PageSource>> ConnectSource(const TcpSourceOptions& topts);

// The subcommands (cli/cmd_<name>.cc). Each returns the process's exit status.
int RunLocal();
int RunSource();
int RunDest();
int RunServe();
int RunDemo();
int RunMigrate();
int RunExpect();
int RunStatus();
int RunCancelOrForget(const std::string& op);

}  // namespace faultline

#endif  // FAULTLINE_CLI_COMMON_H_
