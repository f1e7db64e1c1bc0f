// Internal to //qemu-integration/libvirt:libvirt_migration (the public header is
// libvirt_migration.h):
//   libvirt_events.cc     libvirt's event loop on a thread, the domain events of both sides
//                         (lifecycle, pre-copy passes, the completed job) into one record
//   libvirt_qemu.cc       the QEMU monitor passthrough: the pager capability
//   libvirt_migration.cc  the driver: checks, set-up, the migration and its report
#ifndef FAULTLINE_QEMU_INTEGRATION_LIBVIRT_LIBVIRT_INTERNAL_H_
#define FAULTLINE_QEMU_INTEGRATION_LIBVIRT_LIBVIRT_INTERNAL_H_

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace faultline {
namespace libvirt_internal {

using Json = nlohmann::json;

inline constexpr char kCap[] = "x-postcopy-external-pager";

// libvirt keeps the last error per thread; read it on the thread that failed.
std::string LastError();
void Quiet(void*, virErrorPtr);  // errors are reported through our statuses, not stderr

struct ConnClose {
  void operator()(virConnectPtr c) const { virConnectClose(c); }
};
struct DomFree {
  void operator()(virDomainPtr d) const { virDomainFree(d); }
};
using Conn = std::unique_ptr<virConnect, ConnClose>;
using Dom = std::unique_ptr<virDomain, DomFree>;

// ---- Events (libvirt_events.cc) ----

// libvirt's default event loop on a thread of its own, woken every 100 ms so it can stop.
class EventLoop {
 public:
  static absl::Status RegisterOnce() {
    static const int rc = virEventRegisterDefaultImpl();
    if (rc < 0) return absl::InternalError("cannot register libvirt's event loop: " + LastError());
    return absl::OkStatus();
  }
  EventLoop() {
    timer_ = virEventAddTimeout(
        100, [](int, void*) {}, nullptr, nullptr);
    thread_ = std::thread([this] {
      while (!stop_.load()) virEventRunDefaultImpl();
    });
  }
  ~EventLoop() {
    stop_.store(true);
    thread_.join();
    if (timer_ >= 0) virEventRemoveTimeout(timer_);
  }

 private:
  std::atomic<bool> stop_{false};
  int timer_ = -1;
  std::thread thread_;
};

// What the event callbacks see, shared with the driving thread.
struct Shared {
  std::mutex mu;
  std::condition_variable cv;
  absl::Time start;
  std::vector<std::string> events;
  std::function<void(const std::string&)> log;
  int iterations = 0;
  bool postcopy = false;         // the source reported post-copy (suspended or resumed)
  bool postcopy_failed = false;  // either side reported a failed post-copy
  double postcopy_at = -1;
  std::optional<Json> completed;  // the JOB_COMPLETED statistics

  void Note(const std::string& what) {  // with mu held
    std::string line =
        absl::StrFormat("+%.3fs %s", absl::ToDoubleSeconds(absl::Now() - start), what);
    events.push_back(line);
    if (log) log(line);
  }
};

struct Watch {  // one side's registration
  Shared* shared;
  const char* side;
};

// Typed parameters (job statistics) as a JSON object.
Json ParamsJson(virTypedParameterPtr params, int n);

// Registers the callbacks of one side; deregisters on destruction.
class Registrations {
 public:
  // Lifecycle events; with job_events also pre-copy passes and the completed job.
  Registrations(virConnectPtr conn, Watch* w, bool job_events);
  ~Registrations() {
    for (int id : ids_) virConnectDomainEventDeregisterAny(conn_, id);
  }
  bool ok() const { return ok_; }

 private:
  void Add(int event, virConnectDomainEventGenericCallback cb, Watch* w);
  virConnectPtr conn_;
  std::vector<int> ids_;
  bool ok_ = true;
};

// ---- The QEMU monitor passthrough (libvirt_qemu.cc) ----

// One QMP command through the passthrough; with fd >= 0 that fd goes along (for getfd).
absl::StatusOr<Json> Monitor(virDomainPtr dom, const Json& cmd, int fd = -1);

// What the domain's QEMU offers: the series of 7.2 or of 10.2.
struct PagerSeries {
  bool on = false;              // the pager capability is on now
  bool switchover_ack = false;  // QEMU >= 8.1: the 10.2 series, which gates the switchover on
                                // the pager's ack (switchover-ack, return-path) and can warm up
};
// FailedPrecondition when the QEMU has no pager capability (not faultline's series).
absl::StatusOr<PagerSeries> QueryPagerSeries(virDomainPtr dom);
// Whether the domain's QEMU has the pager capability on; FailedPrecondition when it has none.
absl::StatusOr<bool> HasPagerCapability(virDomainPtr dom);
// postcopy-ram, x-ignore-shared and the pager capability — with switchover_ack also
// return-path and switchover-ack — on or off.
absl::Status SetPagerCapabilities(virDomainPtr dom, bool on, bool switchover_ack);

// Warm-up (the 10.2 series): connects to `faultline source --vmm_dirty_socket` at `path` and
// passes that connection to the source QEMU (getfd with the fd over libvirt's socket, then the
// x-postcopy-external-pager-fd parameter); its guest's writes are reported there from the
// migration's start. Drop closes it again in QEMU (the parameter set to "").
inline constexpr char kWarmupFdName[] = "faultline-warmup";
absl::Status GiveWarmupConnection(virDomainPtr dom, const std::string& path);
absl::Status DropWarmupConnection(virDomainPtr dom);

}  // namespace libvirt_internal
}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_LIBVIRT_LIBVIRT_INTERNAL_H_
