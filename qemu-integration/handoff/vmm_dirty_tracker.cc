#include "qemu-integration/handoff/vmm_dirty_tracker.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "qemu-integration/handoff/handoff_wire.h"

namespace faultline {

using handoff_internal::Frame;
using handoff_internal::SendAll;
using handoff_internal::StatusMessage;
using handoff_internal::StreamReader;
using json = nlohmann::json;

namespace {

constexpr absl::Duration kHelloTimeout = absl::Seconds(10);

absl::Status Send(int fd, const json& m) {
  absl::StatusOr<std::string> f = Frame(m);
  if (!f.ok()) return f.status();
  return SendAll(fd, *f, {});
}

// The next message from the VMM, errors naming the connection.
absl::StatusOr<json> Next(StreamReader& rd, absl::Time deadline) {
  absl::StatusOr<json> m = handoff_internal::NextMessage(rd, deadline, "the source VMM");
  if (!m.ok()) {
    return absl::Status(m.status().code(),
                        absl::StrCat("the VMM's dirty-log connection: ", m.status().message()));
  }
  return m;
}

}  // namespace

absl::StatusOr<std::unique_ptr<VmmDirtyTracker>> VmmDirtyTracker::Listen(
    const std::string& path, std::vector<RegionInfo> regions) {
  absl::StatusOr<struct sockaddr_un> addr = handoff_internal::UnixAddress(path);
  if (!addr.ok()) return addr.status();
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus("socket");
  unlink(path.c_str());
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0 ||
      listen(fd.get(), 4) != 0) {
    return ErrnoStatus(absl::StrCat("listening on ", path));
  }
  UniqueFd stop(eventfd(0, EFD_CLOEXEC));
  if (!stop.valid()) return ErrnoStatus("eventfd");
  return std::unique_ptr<VmmDirtyTracker>(
      new VmmDirtyTracker(std::move(fd), std::move(stop), std::move(regions)));
}

VmmDirtyTracker::VmmDirtyTracker(UniqueFd listen, UniqueFd stop, std::vector<RegionInfo> regions)
    : regions_(std::move(regions)), listen_(std::move(listen)), stop_(std::move(stop)) {
  accept_ = std::thread([this] { AcceptLoop(); });
}

VmmDirtyTracker::~VmmDirtyTracker() {
  uint64_t one = 1;
  (void)!write(stop_.get(), &one, sizeof(one));
  accept_.join();
}

void VmmDirtyTracker::AcceptLoop() {
  for (;;) {
    pollfd p[2] = {{listen_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (poll(p, 2, -1) < 0) continue;
    if (p[1].revents) return;
    UniqueFd fd(accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd.valid()) continue;
    handoff_internal::SetSendTimeout(fd.get(), handoff_internal::kSendTimeout);
    bool throttle = false;
    if (absl::Status s = Greet(fd.get(), &throttle); !s.ok()) {
      std::lock_guard<std::mutex> l(mu_);
      refusal_ = std::string(s.message());
      continue;  // a later connection may do better
    }
    std::lock_guard<std::mutex> l(mu_);
    vmm_ = std::move(fd);
    can_throttle_ = throttle;
    reader_ = std::make_unique<StreamReader>(vmm_.get());
    tracking_ = true;
    cv_.notify_all();
    return;  // one VMM per migration
  }
}

absl::Status VmmDirtyTracker::Greet(int fd, bool* throttle) {
  StreamReader rd(fd);
  absl::StatusOr<json> hello = Next(rd, absl::Now() + kHelloTimeout);
  if (!hello.ok()) return hello.status();
  auto refuse = [&](absl::Status s) {
    (void)Send(fd, StatusMessage("ack", s));
    return s;
  };
  const json& h = *hello;
  if (h["type"] != "hello" || h.value("role", "") != "source" || h.value("version", 0) != 1) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("expected hello {version: 1, role: \"source\"} from the source VMM, got ",
                     handoff_internal::Dump(h).substr(0, 200))));
  }
  const json regions = h.value("regions", json::array());
  if (!regions.is_array() || regions.size() != regions_.size()) {
    return refuse(absl::FailedPreconditionError(absl::StrCat(
        "the source VMM tracks ", regions.is_array() ? regions.size() : 0,
        " RAM block(s), this page server serves ", regions_.size(),
        " region(s): give faultline source one --region per shared RAM block, in order")));
  }
  for (size_t i = 0; i < regions_.size(); ++i) {
    const json& r = regions[i];
    const uint64_t length = r.is_object() ? r.value("length", uint64_t{0}) : 0;
    const uint64_t page = r.is_object() ? r.value("page_size", uint64_t{0}) : 0;
    if (length != regions_[i].size || page != regions_[i].page_size) {
      return refuse(absl::FailedPreconditionError(
          absl::StrCat("the source VMM's RAM block ", i, " (",
                       r.is_object() ? r.value("name", std::string("?")) : "?", ") is ", length,
                       " bytes in pages of ", page, ", region ", i, " (", regions_[i].name,
                       ") here is ", regions_[i].size, " in pages of ", regions_[i].page_size)));
    }
  }
  if (!rd.buffer().empty()) {
    return refuse(absl::InvalidArgumentError("the source VMM sent more than its hello"));
  }
  *throttle = h.contains("throttle") && h["throttle"].is_boolean() && h["throttle"].get<bool>();
  return Send(fd, StatusMessage("ack", absl::OkStatus()));
}

absl::Status VmmDirtyTracker::WaitTracking(absl::Time deadline) {
  std::unique_lock<std::mutex> l(mu_);
  while (!tracking_) {
    if (cv_.wait_for(l, absl::ToChronoNanoseconds(deadline - absl::Now())) ==
            std::cv_status::timeout &&
        absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the source VMM has not begun tracking its guest's writes (no hello on its dirty-log "
          "connection: is its migration started, with the connection set?)",
          refusal_.empty() ? "" : absl::StrCat("; a connection was refused: ", refusal_)));
    }
  }
  return absl::OkStatus();
}

absl::Status VmmDirtyTracker::Collect(bool final, std::vector<PageRange>* out) {
  if (absl::Status s = WaitTracking(absl::Now() + kHelloTimeout); !s.ok()) return s;
  // After the final set, the guest is stopped for good: nothing more to ask (a final request
  // asked twice by the destination).
  if (final_done_) return absl::OkStatus();
  const int fd = vmm_.get();
  if (absl::Status s = Send(fd, {{"type", "collect"}, {"final", final}}); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("the VMM's dirty-log connection: ", s.message()));
  }
  for (;;) {
    // A final answer comes once QEMU has switched over: as long as that takes.
    absl::StatusOr<json> m =
        Next(*reader_, final ? absl::InfiniteFuture() : absl::Now() + absl::Seconds(30));
    if (!m.ok()) return m.status();
    if ((*m)["type"] == "collected") {
      if ((*m).value("final", !final) != final) {
        return absl::InternalError("the source VMM answered a collect with the wrong kind");
      }
      final_done_ = final;
      return absl::OkStatus();
    }
    if ((*m)["type"] != "dirty") continue;  // unknown types are skipped
    const uint64_t region = (*m).value("region", uint64_t{UINT64_MAX});
    const json ranges = (*m).value("ranges", json());
    if (region >= regions_.size() || !ranges.is_array()) {
      return absl::InvalidArgumentError(absl::StrCat("the source VMM sent a dirty set for region ",
                                                     region, " (", regions_.size(),
                                                     " here) or without ranges"));
    }
    for (const json& r : ranges) {
      if (!r.is_array() || r.size() != 2 || !r[0].is_number_unsigned() ||
          !r[1].is_number_unsigned()) {
        return absl::InvalidArgumentError(
            "the source VMM sent a dirty range that is not "
            "[first, count]");
      }
      const uint64_t first = r[0].get<uint64_t>(), count = r[1].get<uint64_t>();
      const uint64_t pages = regions_[region].pages();
      if (count == 0 || first >= pages || count > pages - first) {
        return absl::InvalidArgumentError(absl::StrCat("the source VMM sent dirty pages [", first,
                                                       ", +", count, ") of region ", region,
                                                       ", which has ", pages));
      }
      // PageRange counts are 32-bit: split huge runs.
      for (uint64_t f = first; f < first + count;) {
        const uint64_t n = std::min<uint64_t>(first + count - f, 1u << 30);
        out->push_back({static_cast<uint32_t>(region), static_cast<uint32_t>(n), f});
        f += n;
      }
    }
  }
}

absl::Status VmmDirtyTracker::Throttle(uint32_t percent) {
  if (absl::Status s = WaitTracking(absl::Now() + kHelloTimeout); !s.ok()) return s;
  if (final_done_) return absl::OkStatus();  // stopped for good: nothing to slow down
  if (!can_throttle_) {
    return absl::UnimplementedError(
        "the source QEMU takes no throttle requests (its hello does not offer them: a series "
        "older than the throttle)");
  }
  if (absl::Status s = Send(vmm_.get(), {{"type", "throttle"}, {"percent", percent}}); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("the VMM's dirty-log connection: ", s.message()));
  }
  for (;;) {
    absl::StatusOr<json> m = Next(*reader_, absl::Now() + absl::Seconds(30));
    if (!m.ok()) return m.status();
    if ((*m)["type"] != "throttled") continue;  // unknown types are skipped
    const uint64_t now = (*m).value("percent", uint64_t{UINT64_MAX});
    if (now != percent) {
      return absl::FailedPreconditionError(absl::StrCat("the source QEMU throttles its guest by ",
                                                        now, " %, not the ", percent, " % asked"));
    }
    return absl::OkStatus();
  }
}

void VmmDirtyTracker::Switched() {
  // QEMU waits for this before it sends its post-copy package; if it is lost, QEMU's wait
  // times out and the migration fails with the guest still on the source — never a guest
  // running on pages not dropped.
  (void)Send(vmm_.get(), {{"type", "switched"}});
}

std::string VmmDirtyTracker::last_refusal() const {
  std::lock_guard<std::mutex> l(mu_);
  return refusal_;
}

}  // namespace faultline
