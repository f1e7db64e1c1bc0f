// The VMM's end of the hand-off: HandoffClient (faultline format) and SendFirecrackerHandoff
// (Firecracker's message, for tests).
#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "qemu-integration/handoff/handoff.h"
#include "qemu-integration/handoff/handoff_wire.h"

namespace faultline {

using json = nlohmann::json;
using handoff_internal::ConnectUnix;
using handoff_internal::Dump;
using handoff_internal::Frame;
using handoff_internal::FrameText;
using handoff_internal::kSendTimeout;
using handoff_internal::PeerStatus;
using handoff_internal::SendAll;
using handoff_internal::SetSendTimeout;
using handoff_internal::StreamReader;

HandoffClient::HandoffClient(UniqueFd fd)
    : fd_(std::move(fd)), reader_(std::make_unique<StreamReader>(fd_.get())) {}

HandoffClient::~HandoffClient() = default;

namespace {

absl::StatusOr<json> NextMessage(StreamReader& rd, absl::Time deadline) {
  return handoff_internal::NextMessage(rd, deadline, "faultline");
}

}  // namespace

absl::Status HandoffClient::WaitAck(absl::Time deadline) {
  absl::StatusOr<json> m = NextMessage(*reader_, deadline);
  if (!m.ok()) {
    if (absl::IsDeadlineExceeded(m.status())) {
      return absl::DeadlineExceededError("faultline did not acknowledge the hand-off in time");
    }
    if (absl::IsUnavailable(m.status())) {
      return absl::UnavailableError(
          absl::StrCat("faultline closed the connection without acknowledging the hand-off: ",
                       m.status().message()));
    }
    return m.status();
  }
  if ((*m)["type"] != "ack") {
    return absl::DataLossError(absl::StrCat("expected an ack from faultline, got type \"",
                                            (*m)["type"].get<std::string>(), "\""));
  }
  auto ok = m->find("ok");
  if (ok == m->end() || !ok->is_boolean()) {
    return absl::DataLossError("faultline's ack has no boolean \"ok\"");
  }
  if (!ok->get<bool>()) return PeerStatus(*m, "faultline refused the hand-off: ");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<HandoffClient>> HandoffClient::ConnectAndSend(
    const std::string& path, absl::string_view frame, absl::Span<const int> fds,
    absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<UniqueFd> fd = ConnectUnix(path, deadline);
  if (!fd.ok()) return fd.status();
  SetSendTimeout(fd->get(), deadline - absl::Now());
  absl::Status sent = SendAll(fd->get(), frame, fds);
  std::unique_ptr<HandoffClient> client(new HandoffClient(std::move(*fd)));
  if (!sent.ok()) {
    // faultline may have refused early and closed: its ack says why.
    if (absl::IsUnavailable(sent)) {
      absl::Status acked = client->WaitAck(deadline);
      if (!acked.ok() && !absl::IsUnavailable(acked) && !absl::IsDeadlineExceeded(acked)) {
        return acked;
      }
    }
    return sent;
  }
  if (absl::Status s = client->WaitAck(deadline); !s.ok()) return s;
  SetSendTimeout(client->fd(), kSendTimeout);
  return client;
}

absl::StatusOr<std::unique_ptr<HandoffClient>> HandoffClient::Connect(
    const std::string& path, int uffd, uint64_t uffd_features,
    const std::vector<HandoffClientRegion>& regions, absl::Duration timeout,
    const std::string& vmm_name, bool resume, const std::string& migration) {
  if (uffd < 0) return absl::InvalidArgumentError(absl::StrCat("uffd ", uffd, " is not an fd"));
  std::vector<int> fds = {uffd};
  json table = json::array();
  for (const HandoffClientRegion& r : regions) {
    int index = -1;
    if (r.fd < -1) {
      return absl::InvalidArgumentError(absl::StrCat("region '", r.name, "': fd ", r.fd));
    }
    if (r.fd >= 0) {
      auto it = std::find(fds.begin(), fds.end(), r.fd);
      index = static_cast<int>(it - fds.begin());
      if (it == fds.end()) fds.push_back(r.fd);
    }
    table.push_back(json{{"name", r.name},
                         {"host_addr", r.host_addr},
                         {"length", r.length},
                         {"page_size", r.page_size},
                         {"kind", MemoryKindName(r.kind)},
                         {"fd", index},
                         {"offset", r.offset}});
  }
  json hello = {{"type", "hello"},
                {"version", kHandoffVersion},
                {"vmm", vmm_name},
                {"uffd_features", uffd_features},
                {"registered", true},
                {"uffd_fd", 0},
                {"regions", std::move(table)}};
  if (resume) hello["resume"] = true;
  if (!migration.empty()) hello["migration"] = migration;
  std::string body = Dump(hello);
  // Keep the length prefix's first byte off '[' (Firecracker's first byte): JSON allows a
  // trailing space.
  if ((body.size() & 0xff) == '[') body.push_back(' ');
  return ConnectAndSend(path, FrameText(body), fds, timeout);
}

absl::StatusOr<std::unique_ptr<HandoffClient>> HandoffClient::ConnectWithHello(
    const std::string& path, absl::string_view hello_json, absl::Span<const int> fds,
    absl::Duration timeout) {
  return ConnectAndSend(path, FrameText(hello_json), fds, timeout);
}

absl::StatusOr<json> HandoffClient::Next(absl::Duration timeout) {
  return NextMessage(*reader_, absl::Now() + timeout);
}

absl::StatusOr<json> HandoffClient::WaitComplete(
    absl::Duration timeout, std::function<void(uint64_t done, uint64_t total)> on_progress) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    absl::StatusOr<json> m = NextMessage(*reader_, deadline);
    if (!m.ok()) return m.status();
    const std::string type = (*m)["type"].get<std::string>();
    if (type == "progress") {
      auto done = m->find("done_pages");
      auto total = m->find("total_pages");
      if (done == m->end() || total == m->end() || !done->is_number_unsigned() ||
          !total->is_number_unsigned()) {
        return absl::DataLossError("faultline's progress lacks unsigned done_pages/total_pages");
      }
      if (on_progress) on_progress(done->get<uint64_t>(), total->get<uint64_t>());
    } else if (type == "complete") {
      auto ok = m->find("ok");
      if (ok == m->end() || !ok->is_boolean()) {
        return absl::DataLossError("faultline's complete has no boolean \"ok\"");
      }
      if (!ok->get<bool>()) return PeerStatus(*m, "faultline reported the migration failed: ");
      auto stats = m->find("stats");
      if (stats != m->end() && stats->is_object()) return *stats;
      return json::object();
    }
    // Anything else (a newer message type) is skipped.
  }
}

namespace {

// A message that is only its type.
absl::Status SendType(int fd, const char* type) {
  absl::StatusOr<std::string> f = Frame(json{{"type", type}});
  if (!f.ok()) return f.status();
  return SendAll(fd, *f, {});
}

}  // namespace

absl::Status HandoffClient::Bye() { return SendType(fd_.get(), "bye"); }
absl::Status HandoffClient::Listen() { return SendType(fd_.get(), "listen"); }
absl::Status HandoffClient::Running() { return SendType(fd_.get(), "running"); }

absl::StatusOr<UniqueFd> SendFirecrackerHandoff(const std::string& path, int uffd,
                                                const std::vector<HandoffClientRegion>& regions) {
  // Field order and values as Firecracker's GuestRegionUffdMapping serialises them
  // (page_size_kib carries bytes there too).
  nlohmann::ordered_json table = nlohmann::ordered_json::array();
  for (const HandoffClientRegion& r : regions) {
    table.push_back(nlohmann::ordered_json{{"base_host_virt_addr", r.host_addr},
                                           {"size", r.length},
                                           {"offset", r.offset},
                                           {"page_size", r.page_size},
                                           {"page_size_kib", r.page_size}});
  }
  const std::string text = table.dump(-1, ' ', false, json::error_handler_t::replace);
  absl::StatusOr<UniqueFd> fd = ConnectUnix(path, absl::Now() + kSendTimeout);
  if (!fd.ok()) return fd.status();
  const int fds[] = {uffd};
  if (absl::Status s = SendAll(fd->get(), text, fds); !s.ok()) return s;
  return std::move(*fd);
}

}  // namespace faultline
