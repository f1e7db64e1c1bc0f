// `faultline migrate`: libvirt's domain events of both sides, recorded for the driver.
#include <libvirt/libvirt.h>

#include "absl/strings/str_cat.h"
#include "qemu-integration/libvirt/libvirt_internal.h"

namespace faultline {
namespace libvirt_internal {
namespace {

std::string LifecycleName(int event, int detail) {
  switch (event) {
    case VIR_DOMAIN_EVENT_STARTED:
      return detail == VIR_DOMAIN_EVENT_STARTED_MIGRATED ? "started (incoming migration)"
                                                         : "started";
    case VIR_DOMAIN_EVENT_SUSPENDED:
      switch (detail) {
        case VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED: return "paused (migration)";
        case VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY: return "paused (post-copy)";
        case VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED: return "paused (post-copy FAILED)";
        default: return absl::StrCat("paused (", detail, ")");
      }
    case VIR_DOMAIN_EVENT_RESUMED:
      switch (detail) {
        case VIR_DOMAIN_EVENT_RESUMED_MIGRATED: return "running (migration completed)";
        case VIR_DOMAIN_EVENT_RESUMED_POSTCOPY: return "running (post-copy)";
        case VIR_DOMAIN_EVENT_RESUMED_POSTCOPY_FAILED: return "running (post-copy FAILED)";
        default: return absl::StrCat("running (", detail, ")");
      }
    case VIR_DOMAIN_EVENT_STOPPED:
      return detail == VIR_DOMAIN_EVENT_STOPPED_MIGRATED ? "stopped (migrated away)"
             : detail == VIR_DOMAIN_EVENT_STOPPED_FAILED ? "stopped (FAILED)"
                                                         : absl::StrCat("stopped (", detail, ")");
    default: return absl::StrCat("event ", event, " detail ", detail);
  }
}

void OnLifecycle(virConnectPtr, virDomainPtr, int event, int detail, void* opaque) {
  auto* w = static_cast<Watch*>(opaque);
  std::lock_guard<std::mutex> l(w->shared->mu);
  w->shared->Note(absl::StrCat(w->side, ": ", LifecycleName(event, detail)));
  const bool failed =
      (event == VIR_DOMAIN_EVENT_SUSPENDED &&
       detail == VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED) ||
      (event == VIR_DOMAIN_EVENT_RESUMED && detail == VIR_DOMAIN_EVENT_RESUMED_POSTCOPY_FAILED);
  const bool postcopy =
      (event == VIR_DOMAIN_EVENT_SUSPENDED && detail == VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY) ||
      (event == VIR_DOMAIN_EVENT_RESUMED && detail == VIR_DOMAIN_EVENT_RESUMED_POSTCOPY);
  if (failed) w->shared->postcopy_failed = true;
  if (postcopy && !w->shared->postcopy) {
    w->shared->postcopy = true;
    w->shared->postcopy_at = absl::ToDoubleSeconds(absl::Now() - w->shared->start);
  }
  w->shared->cv.notify_all();
}

void OnIteration(virConnectPtr, virDomainPtr, int iteration, void* opaque) {
  auto* w = static_cast<Watch*>(opaque);
  std::lock_guard<std::mutex> l(w->shared->mu);
  w->shared->iterations = iteration;
  w->shared->Note(absl::StrCat(w->side, ": pre-copy pass ", iteration, " done"));
  w->shared->cv.notify_all();
}

}  // namespace

Json ParamsJson(virTypedParameterPtr params, int n) {
  Json j = Json::object();
  for (int i = 0; i < n; ++i) {
    const virTypedParameter& p = params[i];
    switch (p.type) {
      case VIR_TYPED_PARAM_INT: j[p.field] = p.value.i; break;
      case VIR_TYPED_PARAM_UINT: j[p.field] = p.value.ui; break;
      case VIR_TYPED_PARAM_LLONG: j[p.field] = p.value.l; break;
      case VIR_TYPED_PARAM_ULLONG: j[p.field] = p.value.ul; break;
      case VIR_TYPED_PARAM_DOUBLE: j[p.field] = p.value.d; break;
      case VIR_TYPED_PARAM_BOOLEAN: j[p.field] = p.value.b != 0; break;
      case VIR_TYPED_PARAM_STRING: j[p.field] = p.value.s ? p.value.s : ""; break;
      default: break;
    }
  }
  return j;
}

namespace {

void OnJobCompleted(virConnectPtr, virDomainPtr, virTypedParameterPtr params, int n, void* opaque) {
  auto* w = static_cast<Watch*>(opaque);
  std::lock_guard<std::mutex> l(w->shared->mu);
  w->shared->completed = ParamsJson(params, n);
  w->shared->Note(absl::StrCat(w->side, ": job completed"));
  w->shared->cv.notify_all();
}

}  // namespace

Registrations::Registrations(virConnectPtr conn, Watch* w, bool job_events) : conn_(conn) {
  Add(VIR_DOMAIN_EVENT_ID_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(OnLifecycle), w);
  if (job_events) {
    Add(VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION, VIR_DOMAIN_EVENT_CALLBACK(OnIteration), w);
    Add(VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, VIR_DOMAIN_EVENT_CALLBACK(OnJobCompleted), w);
  }
}

void Registrations::Add(int event, virConnectDomainEventGenericCallback cb, Watch* w) {
  const int id = virConnectDomainEventRegisterAny(conn_, nullptr, event, cb, w, nullptr);
  if (id < 0) {
    ok_ = false;
  } else {
    ids_.push_back(id);
  }
}

}  // namespace libvirt_internal
}  // namespace faultline
