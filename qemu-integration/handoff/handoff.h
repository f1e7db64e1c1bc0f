// The VMM → faultline hand-off on the destination host. A VMM (patched QEMU, the reference VMM,
// Firecracker) creates a userfaultfd, registers its guest RAM, connects to faultline's Unix
// socket and hands over the uffd, the memory fds and a region table. faultline acknowledges,
// resolves faults, and finally reports "complete" so the VMM can finish. Two wire formats are
// accepted on one listening socket; the first byte received tells them apart.
//
// faultline format, version 1 (SOCK_STREAM). Every message is one sendmsg: a u32 little-endian
// length N (1..65536), then N bytes of JSON (an object); fds ride as SCM_RIGHTS on the first byte.
//   VMM → faultline  hello     {"type":"hello","version":1,"vmm":"faultline-vmm",
//                               "uffd_features":u64,"registered":true,"uffd_fd":0,
//                               "regions":[{"name":"pc.ram","host_addr":u64,"length":u64,
//                                 "page_size":4096,"kind":"memfd","fd":1,"offset":u64}, ...]}
//   faultline → VMM  ack       {"type":"ack","ok":true}
//                              {"type":"ack","ok":false,"error":"...","code":"INVALID_ARGUMENT"}
//                    progress  {"type":"progress","done_pages":N,"total_pages":M}  (optional)
//                    complete  {"type":"complete","ok":true,"stats":{...}}
//                              {"type":"complete","ok":false,"error":"...","code":"..."}
//   VMM → faultline  bye       {"type":"bye"}  (optional)
// "resume": true (optional, default false) in hello: the VMM hands over the same uffd again
// because the faultline that served it went away mid-migration (its hand-off connection
// closed before "complete"). faultline then continues from the dead engine's page-state file
// and refuses (ack{ok:false}) if it has none, rather than guess which pages are placed. A VMM
// must keep its own uffd fd open until "complete" for this to work: the uffd's registration
// and its sleeping faults live only as long as some process holds the fd.
// "migration": "<id>" (optional) in hello: the migration this VMM's memory belongs to, as
// registered with the host daemon; optional. 1..64 bytes of ASCII letters, digits, '-', '_',
// '.' and ':' (anything else is refused, naming "migration"). Older faultlines ignore it.
// "code" (an absl::StatusCode name) is an optional extension; readers that lack it see a plain
// error. Unknown keys are ignored (additive extensions); unknown message types are skipped.
//
// Version 2 (QEMU 10.2's x-postcopy-external-pager, qemu-integration/qemu/): the VMM hands over
// at the START of the migration (QEMU: post-copy ADVISE, the source still running the guest) and
// says later when the source's memory is final (QEMU: post-copy LISTEN, the source stopped). So
// everything faultline does before placing — validating the table, reaching the source, dropping
// pages the VMM's memory files already hold — happens outside the migration's downtime. The same
// framing; the additions, in order:
//   VMM → faultline  attach    {"type":"attach","version":2,"vmm":"qemu-10.2.2"}  (optional; the
//                              first message, e.g. as soon as the VMM has its connection; no fds;
//                              "vmm" optional, 1..256 printable bytes)
//   faultline → VMM  attached  {"type":"attached","version":2,"pager":"faultline"}
//                              (a version-1-only faultline answers ack{ok:false}: "expected a
//                              hello message first, got type \"attach\"")
//   VMM → faultline  hello     as version 1, with "version":2 and "start":"listen"|"now"
//                              (optional, default "now"). After an attach the hello may take up
//                              to kAttachedHelloWait (1 h), and must be of the attach's version.
//   faultline → VMM  ack       as version 1, sent once the table is valid, the source reached and
//                              its table matches, and stale pages are dropped. "now": then as
//                              version 1 (faultline places pages at once). "listen": faultline
//                              places no page and asks the source for none until
//   VMM → faultline  listen    {"type":"listen"}: the source's memory is final from here on.
//                              Then progress / complete / bye as version 1. There is no time
//                              limit between ack and listen (the connection is the VMM's liveness).
//   VMM → faultline  running   {"type":"running"} (optional; only from a VMM whose hello said
//                              "notify_running": true): its guest runs here from now on (QEMU:
//                              the destination's VM started). Until then faultline asks the
//                              source for faulted pages only, so the VMM's switch-over — device
//                              state that reads guest RAM — has the host's cores to itself; a
//                              bounded wait (HandoffRunOptions::bulk_hold_until_running), so a
//                              VMM that never says it only delays the background stream.
// Before listen, a bye or a closed connection (the VMM's migration failed or was cancelled in
// pre-copy) ends the hand-off: faultline has placed nothing, sends nothing more, closes, and
// reports the error (bye: Aborted, close: Unavailable, "... before \"listen\" ..."). A faultline
// that stops (cancel, shutdown) before listen sends complete{ok:false,code:"CANCELLED"}, one
// that stops between attached and hello ack{ok:false,code:"CANCELLED"}. Other messages before
// listen are skipped (fds closed); a listen after "start":"now" is skipped.
// "start":"listen" with "resume":true is refused (a resume happens during post-copy).
// An attach or hello of a version faultline does not speak is refused with ack{ok:false,
// code:"FAILED_PRECONDITION"} naming both: "hand-off protocol version mismatch: the VMM speaks
// version 3, faultline speaks versions 1 to 2"; an attach of version 1 is refused too (version 1
// has no attach). HandoffClient speaks version 1 (Listen() is for version 2 peers and tests).
//
// Hello rules (anything else is refused with ack{ok:false}): version 1 or 2 first ("version
// mismatch" otherwise); "migration", when present, as above; 1..64 regions; name 1..64
// printable bytes, unique; page_size a power of two in [4096, 1 GiB]; host_addr, length (> 0)
// and offset multiples of page_size; no two regions overlap in the VMM's address space; kind one
// of anon (fd must be -1), memfd, hugetlb, guest_memfd — exactly MemoryKindName's names
// (base/memory_kind.h), no alias — (fd must index an attached fd; regions may share one); uffd_fd
// indexes an attached fd no region uses; every attached fd is claimed. Server-side, the uffd must
// be a userfaultfd, a region's fd must cover offset + length, memfd/hugetlb fds must be files, and
// a hugetlb fd must be on hugetlbfs with that page size. Numbers must be JSON integers (a string or
// a fraction is refused, naming the field). Every fd received is owned and closed on every error
// path. The whole hello must arrive within 5 s of connecting (HandoffServer::set_hello_timeout;
// HandoffSession::Open takes a deadline), or within kAttachedHelloWait of an attach.
//
// Firecracker's UFFD hand-off, unchanged: one sendmsg of a JSON array, no length prefix,
//   [{"base_host_virt_addr":u64,"size":u64,"offset":u64,"page_size":u64,"page_size_kib":u64}]
// with exactly one fd, the uffd. No reply is sent. Regions are "anon", named "fc-<i>", with
// Firecracker's "offset" (into its snapshot file) passed through. Firecracker has always put the
// page size in BYTES into "page_size_kib" despite the name; so "page_size" wins, and a lone
// "page_size_kib" is read as bytes when >= 4096 and as KiB below that.
//
// Format detection: '[' first → Firecracker, else faultline. A faultline hello whose length's low
// byte happens to be 0x5B is still recognised (its bytes 2..3 are zero, which JSON text never
// contains), and HandoffClient pads such hellos with a space anyway.
//
// Threads: a HandoffSession's senders (Ack, SendProgress, SendComplete) and PeerClosed() may be
// called from different threads; a HandoffClient is used from one thread at a time.
#ifndef FAULTLINE_QEMU_INTEGRATION_HANDOFF_HANDOFF_H_
#define FAULTLINE_QEMU_INTEGRATION_HANDOFF_HANDOFF_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/memory_kind.h"
#include "base/unique_fd.h"
#include "nlohmann/json.hpp"

namespace faultline {

namespace handoff_internal {
class StreamReader;
}  // namespace handoff_internal

inline constexpr uint32_t kHandoffVersion = 1;     // what HandoffClient speaks; the oldest
inline constexpr uint32_t kHandoffVersionMax = 2;  // the newest faultline accepts
// How long a VMM that attached may take until its hello (QEMU: until post-copy ADVISE).
inline constexpr absl::Duration kAttachedHelloWait = absl::Hours(1);
// How often a wait on the VMM (after an attach, before "listen") checks its `stop`.
inline constexpr absl::Duration kHandoffStopPoll = absl::Milliseconds(100);
inline constexpr size_t kMaxHandoffMessage = 64 * 1024;  // JSON bytes in one message
inline constexpr size_t kMaxHandoffRegions = 64;
inline constexpr size_t kMaxHandoffRegionName = 64;
inline constexpr size_t kMaxHandoffMigrationId = 64;
inline constexpr uint64_t kMaxHandoffPageSize = 1ull << 30;

enum class HandoffFormat { kFaultline, kFirecracker };
const char* HandoffFormatName(HandoffFormat f);

struct HandoffRegion {
  std::string name;
  uint64_t host_addr = 0;  // in the VMM's address space
  uint64_t length = 0;
  uint32_t page_size = 4096;
  MemoryKind kind = MemoryKind::kAnonymous;  // on the wire: its MemoryKindName
  UniqueFd fd;                               // invalid for anon
  uint64_t offset = 0;  // of host_addr's first byte within fd (Firecracker: its snapshot file)
  int fd_index = -1;    // index into the attached fds (as parsed; -1 for anon)
};

struct HandoffRequest {
  HandoffFormat format = HandoffFormat::kFaultline;
  uint32_t version = kHandoffVersion;  // 0 for Firecracker (unversioned)
  std::string vmm;                     // "firecracker" for Firecracker
  uint64_t uffd_features = 0;          // 0 for Firecracker (it does not say)
  bool registered = true;              // the VMM registered the regions with the uffd
  bool resume = false;                 // the same uffd again, after a faultline went away
  bool start_on_listen = false;        // version 2 "start":"listen": see WaitListen()
  bool notify_running = false;         // version 2 "notify_running": see WaitRunning()
  bool attached = false;               // an attach came first (version 2)
  std::string migration;               // the hello's "migration" ("" when absent)
  UniqueFd uffd;
  std::vector<HandoffRegion> regions;
  pid_t peer_pid = 0;
  uid_t peer_uid = 0;
  int uffd_index = -1;  // index of the uffd in the attached fds (as parsed)
};

class HandoffSession;

// The connected peer, from SO_PEERCRED.
struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

// A connection taken off the listening socket, not yet read from.
struct AcceptedConnection {
  UniqueFd fd;
  PeerCredentials peer;
};

// Server side (faultline).
class HandoffServer {
 public:
  // Listens on a Unix socket path with mode 0600. A stale socket file (nobody listening) is
  // unlinked first; a live one, or a path that is not a socket, is refused (AlreadyExists).
  static absl::StatusOr<std::unique_ptr<HandoffServer>> Listen(const std::string& path);
  ~HandoffServer();  // closes, and unlinks the socket file if it is still ours

  HandoffServer(const HandoffServer&) = delete;
  HandoffServer& operator=(const HandoffServer&) = delete;

  const std::string& path() const { return path_; }
  int fd() const { return fd_.get(); }
  // How long a connected VMM has to deliver its whole first message (default 5 s).
  void set_hello_timeout(absl::Duration d) { hello_timeout_ = d; }

  // Waits up to `timeout` for one VMM, then up to the hello timeout for its first message.
  // The peer (SO_PEERCRED) must be uid 0 or `allowed_uid`; otherwise PermissionDenied naming
  // both uids, after an ack{ok:false} (sent without reading a byte of the peer's). A hello that
  // fails validation is answered with ack{ok:false,error} (faultline format) and its error is
  // returned; a caller that wants the next VMM calls Accept again. A connection that closes
  // without sending a byte (e.g. another faultline's stale-socket probe) is skipped. On success
  // nothing has been sent yet: the caller answers with session->Ack().
  // Built on AcceptConnection, HandoffSession::Refuse and HandoffSession::Open.
  absl::StatusOr<std::unique_ptr<HandoffSession>> Accept(absl::Duration timeout, uid_t allowed_uid);

  // For a daemon serving many VMMs at once: accepts one pending connection without reading from
  // it, with its peer's credentials. Unavailable (not an error worth logging) when none is
  // pending: fd() is non-blocking, so poll it for POLLIN first. The caller checks the peer and
  // then calls HandoffSession::Open or HandoffSession::Refuse.
  absl::StatusOr<AcceptedConnection> AcceptConnection();

 private:
  HandoffServer(std::string path, UniqueFd fd, dev_t dev, ino_t ino)
      : path_(std::move(path)), fd_(std::move(fd)), dev_(dev), ino_(ino) {}
  std::string path_;
  UniqueFd fd_;
  dev_t dev_;
  ino_t ino_;
  absl::Duration hello_timeout_ = absl::Seconds(5);
};

class HandoffSession {  // one connected VMM
 public:
  // Reads the hello of an accepted connection until `deadline` (blocking this thread). *silent
  // (may be null) is set when the peer closed without sending a byte (a probe, not a VMM). On a
  // validation error a faultline-format peer gets ack{ok:false,error} and the error is returned.
  // A version 2 attach is answered (attached) and the deadline for the hello then becomes
  // kAttachedHelloWait from it; while waiting that long, `stop` (may be null) is polled every
  // kHandoffStopPoll and ends the wait (Cancelled, no reply) once it returns true.
  // On success only "attached" may have been sent: the caller answers the hello with Ack().
  static absl::StatusOr<std::unique_ptr<HandoffSession>> Open(
      AcceptedConnection c, absl::Time deadline, bool* silent,
      const std::function<bool()>& stop = nullptr);
  // Refuses a connection without reading a byte of it: ack{ok:false,error} (harmless for a
  // Firecracker peer, which never reads), then closes it.
  static void Refuse(AcceptedConnection c, const absl::Status& why);

  ~HandoffSession();
  HandoffSession(const HandoffSession&) = delete;
  HandoffSession& operator=(const HandoffSession&) = delete;

  HandoffRequest& request() { return request_; }  // fds owned by it; std::move them out
  HandoffFormat format() const { return format_; }
  const PeerCredentials& peer() const { return peer_; }  // also in request().peer_pid/peer_uid

  // ack{ok} or ack{ok:false,error}; once. No-op for Firecracker.
  absl::Status Ack(const absl::Status& result);
  // After an ok Ack. No-ops for Firecracker.
  absl::Status SendProgress(uint64_t done, uint64_t total);
  absl::Status SendComplete(const absl::Status& result, const nlohmann::json& stats);
  // Version 2, "start":"listen", after an ok Ack: waits, without a time limit, until the VMM
  // says "listen" (OK: the source's memory is final). Aborted when it says bye first,
  // Unavailable when it closes the connection (or breaks the framing) first — its migration
  // failed or was cancelled in pre-copy; Cancelled once `stop` (may be null; polled every
  // kHandoffStopPoll) returns true. Skips every other message, closing fds that come with it.
  absl::Status WaitListen(const std::function<bool()>& stop = nullptr);
  // Version 2, after "listen" (or an ack of "start":"now"): waits until the VMM says "running"
  // (OK), at most until `deadline` (DeadlineExceeded). Aborted on a bye, Unavailable when the
  // connection closes or the framing breaks, Cancelled once `stop` (as in WaitListen) returns
  // true. Skips every other message.
  absl::Status WaitRunning(absl::Time deadline, const std::function<bool()>& stop = nullptr);
  // Non-blocking: true once the VMM went away (EOF, reset, a malformed message) or said bye.
  // Consumes (and ignores) anything else the VMM sends, closing any fds that come with it.
  bool PeerClosed();
  bool bye_received();
  int fd() const { return fd_.get(); }

 private:
  HandoffSession(UniqueFd fd, const PeerCredentials& peer);
  // *silent: the peer closed without sending a byte (a probe, not a VMM).
  absl::Status ReadHello(absl::Time deadline, const std::function<bool()>& stop, bool* silent);
  // One framed message (`what` names it in errors), with the fds that came with it. `stop` as
  // in Open (null: not polled).
  absl::Status ReadFrame(absl::Time deadline, const std::function<bool()>& stop,
                         absl::string_view what, std::string* payload, std::vector<UniqueFd>* fds);
  absl::Status Send(const nlohmann::json& message);
  // WaitListen and WaitRunning: until a message of `type`. Errors say "before \"<type>\"" and
  // then `consequence` (after ": ", when not empty); a stop says `stopped` after the type.
  absl::Status WaitFor(absl::string_view type, absl::Time deadline,
                       const std::function<bool()>& stop, absl::string_view consequence,
                       absl::string_view stopped);

  UniqueFd fd_;
  PeerCredentials peer_;
  HandoffFormat format_ = HandoffFormat::kFaultline;  // set once, before Open returns
  HandoffRequest request_;
  std::unique_ptr<handoff_internal::StreamReader> reader_;  // guarded by read_mu_ after Open
  std::mutex send_mu_;
  bool acked_ = false;        // guarded by send_mu_
  bool ack_ok_ = false;       // guarded by send_mu_
  bool send_broken_ = false;  // guarded by send_mu_: a send failed part-way
  std::mutex read_mu_;
  bool closed_ = false;  // guarded by read_mu_
  bool bye_ = false;     // guarded by read_mu_
};

// Client side (the VMM).
struct HandoffClientRegion {
  std::string name;
  uint64_t host_addr = 0;
  uint64_t length = 0;
  uint32_t page_size = 4096;
  MemoryKind kind = MemoryKind::kAnonymous;  // sent as its MemoryKindName
  int fd = -1;                               // -1 for anon; not owned
  uint64_t offset = 0;
};

class HandoffClient {
 public:
  // Connects (retrying while the socket is absent or refuses, until the timeout), sends hello
  // with the uffd and the region fds (SCM_RIGHTS; a region fd used twice is sent once) and waits
  // for the ack; an ack{ok:false} becomes the returned status (its code when it names one).
  // `resume`: the same uffd again after the previous faultline went away (see "resume").
  // `migration`: sent as the hello's "migration" when not empty (see "migration").
  static absl::StatusOr<std::unique_ptr<HandoffClient>> Connect(
      const std::string& path, int uffd, uint64_t uffd_features,
      const std::vector<HandoffClientRegion>& regions, absl::Duration timeout,
      const std::string& vmm_name = "faultline-vmm", bool resume = false,
      const std::string& migration = "");
  // As Connect, but sends `hello_json` verbatim (framed) with `fds`: for VMMs that build their
  // own hello, and for tests.
  static absl::StatusOr<std::unique_ptr<HandoffClient>> ConnectWithHello(
      const std::string& path, absl::string_view hello_json, absl::Span<const int> fds,
      absl::Duration timeout);
  ~HandoffClient();
  HandoffClient(const HandoffClient&) = delete;
  HandoffClient& operator=(const HandoffClient&) = delete;

  // The next message from faultline (an object with a string "type"), waiting up to `timeout`:
  // DeadlineExceeded on timeout, Unavailable when faultline went away.
  absl::StatusOr<nlohmann::json> Next(absl::Duration timeout);
  // Waits for "complete", calling on_progress for each "progress"; returns the complete
  // message's stats (an empty object if it had none), or its error.
  absl::StatusOr<nlohmann::json> WaitComplete(
      absl::Duration timeout,
      std::function<void(uint64_t done, uint64_t total)> on_progress = nullptr);
  absl::Status Bye();
  // Version 2 (a hello sent with ConnectWithHello, "start":"listen"): the source's memory is
  // final, faultline may place pages.
  absl::Status Listen();
  // Version 2 (a hello with "notify_running": true): the guest runs here now.
  absl::Status Running();
  int fd() const { return fd_.get(); }

 private:
  explicit HandoffClient(UniqueFd fd);
  static absl::StatusOr<std::unique_ptr<HandoffClient>> ConnectAndSend(const std::string& path,
                                                                       absl::string_view frame,
                                                                       absl::Span<const int> fds,
                                                                       absl::Duration timeout);
  absl::Status WaitAck(absl::Time deadline);
  UniqueFd fd_;
  std::unique_ptr<handoff_internal::StreamReader> reader_;
};

// Firecracker-side helper for tests: sends Firecracker's exact message (JSON array + uffd) on a
// fresh connection (names, kinds and fds of `regions` are not part of it) and returns the
// connection, which Firecracker keeps open while the VM runs.
absl::StatusOr<UniqueFd> SendFirecrackerHandoff(const std::string& path, int uffd,
                                                const std::vector<HandoffClientRegion>& regions);

// Pure validators (no fds, no syscalls), exposed for fuzzing. ParseFaultlineHello checks a hello
// against `fd_count` attached fds and fills fd_index / uffd_index, not the UniqueFds.
absl::StatusOr<HandoffRequest> ParseFaultlineHello(absl::string_view json, size_t fd_count);
// A version 2 attach (handoff.h's rules) with `fd_count` fds: its version.
absl::StatusOr<uint32_t> ParseFaultlineAttach(absl::string_view json, size_t fd_count);
// The refusal text for a peer speaking another hand-off version.
std::string HandoffVersionMismatch(uint64_t version);
absl::StatusOr<HandoffRequest> ParseFirecrackerMessage(absl::string_view json);

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_HANDOFF_HANDOFF_H_
