#include "transport/page_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/crc32c.h"
#include "base/errno_status.h"
#include "base/thread_slice.h"
#include "transport/socket.h"

namespace faultline {

// How long a new connection may take to say HELLO (and finish its TLS handshake).
constexpr absl::Duration kHandshakeTimeout = absl::Seconds(10);
// FaultInjector::kSendLater: a held frame goes out once no request has come for this long.
constexpr int kHeldFrameQuietMs = 50;

namespace {

bool CopiesOut(SourceRead read, uint32_t page_size) {
  return read == SourceRead::kCopy || (read == SourceRead::kAuto && page_size < (2u << 20));
}

// Pages [first, first + count) of `reg` copied into `scratch` (grown as needed): where they are.
absl::StatusOr<const uint8_t*> CopyOut(const SourceRegion& reg, uint64_t first, uint32_t count,
                                       std::vector<uint8_t>* scratch) {
  const uint64_t len = uint64_t{count} * reg.info().page_size;
  if (scratch->size() < len) scratch->resize(len);
  if (absl::Status s = reg.ReadPages(first, count, scratch->data()); !s.ok()) return s;
  return scratch->data();
}

}  // namespace

absl::StatusOr<SourceRead> ParseSourceRead(absl::string_view s) {
  if (s == "auto") return SourceRead::kAuto;
  if (s == "copy") return SourceRead::kCopy;
  if (s == "map") return SourceRead::kMap;
  return absl::InvalidArgumentError(
      absl::StrCat("source read mode '", s, "': expected auto, copy or map"));
}

absl::StatusOr<SourceRegion> SourceRegion::MapFd(const std::string& name, int fd, uint64_t offset,
                                                 uint64_t size, uint32_t page_size) {
  if (name.empty() || name.size() > kMaxRegionName) {
    return absl::InvalidArgumentError(
        absl::StrCat("region name '", name, "' must be 1..", kMaxRegionName, " bytes"));
  }
  if (page_size < 4096 || (page_size & (page_size - 1)) || size == 0 || size % page_size ||
      offset % page_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("region '", name, "': size ", size, " and offset ", offset,
                     " must be non-zero multiples of the page size ", page_size));
  }
  struct stat st;
  if (fstat(fd, &st) < 0) return ErrnoStatus("fstat");
  if (S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) < offset + size) {
    return absl::InvalidArgumentError(absl::StrCat("region '", name, "': file holds ", st.st_size,
                                                   " bytes, need ", offset + size));
  }
  void* p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) return ErrnoStatus(absl::StrCat("mmap source region '", name, "'"));
  SourceRegion r;
  r.info_ = RegionInfo{name, size, page_size};
  r.base_ = static_cast<const uint8_t*>(p);
  r.map_len_ = size;
  r.fd_ = UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!r.fd_.valid()) return ErrnoStatus(absl::StrCat("dup source region '", name, "'"));
  r.file_offset_ = offset;
  return r;
}

absl::StatusOr<SourceRegion> SourceRegion::MapFile(const std::string& name, const std::string& path,
                                                   uint64_t offset, uint64_t size,
                                                   uint32_t page_size) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(absl::StrCat("open ", path));
  return MapFd(name, fd.get(), offset, size, page_size);
}

SourceRegion::SourceRegion(SourceRegion&& o) noexcept
    : info_(std::move(o.info_)),
      base_(std::exchange(o.base_, nullptr)),
      map_len_(std::exchange(o.map_len_, 0)),
      fd_(std::move(o.fd_)),
      file_offset_(o.file_offset_) {}

absl::Status SourceRegion::ReadPages(uint64_t first, uint32_t count, uint8_t* out) const {
  const uint64_t ps = info_.page_size;
  uint64_t done = 0;
  const uint64_t len = uint64_t{count} * ps;
  while (done < len) {
    ssize_t n = pread(fd_.get(), out + done, len - done,
                      static_cast<off_t>(file_offset_ + first * ps + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(absl::StrCat("read source region '", info_.name, "'"));
    if (n == 0) {
      return absl::DataLossError(absl::StrCat("source region '", info_.name, "': its file ends at ",
                                              file_offset_ + first * ps + done, " bytes"));
    }
    done += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

SourceRegion::~SourceRegion() {
  if (base_) munmap(const_cast<uint8_t*>(base_), map_len_);
}

PageServer::PageServer(std::vector<SourceRegion> regions, Token token,
                       std::shared_ptr<const TlsContext> tls, DirtyTracker* dirty)
    : multi_(false), tls_(std::move(tls)), stop_fd_(eventfd(0, EFD_CLOEXEC)) {
  auto t = std::make_shared<Tenant>();
  t->regions = std::move(regions);
  t->token = token;
  for (const SourceRegion& r : t->regions) t->table.push_back(r.info());
  if (dirty != nullptr) t->rounds = std::make_unique<DirtyRounds>(dirty, t->table);
  tenants_.push_back(std::move(t));
}

PageServer::PageServer(std::shared_ptr<const TlsContext> tls)
    : multi_(true), tls_(std::move(tls)), stop_fd_(eventfd(0, EFD_CLOEXEC)) {}

absl::Status PageServer::AddMigration(const std::string& id, std::vector<SourceRegion> regions,
                                      Token token, DirtyTracker* dirty) {
  if (!multi_) return absl::FailedPreconditionError("a one-migration page server");
  if (regions.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("migration '", id, "' has no region"));
  }
  auto t = std::make_shared<Tenant>();
  t->id = id;
  t->regions = std::move(regions);
  t->token = token;
  for (const SourceRegion& r : t->regions) t->table.push_back(r.info());
  if (dirty != nullptr) t->rounds = std::make_unique<DirtyRounds>(dirty, t->table);
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& o : tenants_) {
    if (o->id == id) {
      return absl::AlreadyExistsError(absl::StrCat("migration '", id, "' is already served"));
    }
    if (TokensEqual(o->token, token)) {
      return absl::AlreadyExistsError(
          absl::StrCat("migration '", o->id, "' is served with the same token"));
    }
  }
  tenants_.push_back(std::move(t));
  return absl::OkStatus();
}

absl::Status PageServer::RemoveMigration(const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  for (auto it = tenants_.begin(); it != tenants_.end(); ++it) {
    if ((*it)->id == id) {
      tenants_.erase(it);
      return absl::OkStatus();
    }
  }
  return absl::NotFoundError(absl::StrCat("no migration '", id, "' is served"));
}

bool PageServer::MigrationDone(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& t : tenants_) {
    if (t->id == id) return t->done.load();
  }
  return false;
}

PageServer::~PageServer() {
  Shutdown();
  std::lock_guard<std::mutex> l(mu_);
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

std::vector<RegionInfo> PageServer::region_table() const {
  std::lock_guard<std::mutex> l(mu_);
  return tenants_.empty() ? std::vector<RegionInfo>() : tenants_.front()->table;
}

std::string PageServer::last_refusal() const {
  std::lock_guard<std::mutex> l(mu_);
  return last_refusal_;
}

void PageServer::Shutdown() {
  uint64_t one = 1;
  (void)!write(stop_fd_.get(), &one, sizeof(one));
  std::lock_guard<std::mutex> l(mu_);
  for (int fd : live_fds_) ::shutdown(fd, SHUT_RDWR);
}

absl::Status PageServer::Serve(int listen_fd) {
  absl::Status result = absl::CancelledError("page server shut down before the migration ended");
  while (true) {
    struct pollfd p[2] = {{listen_fd, POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    int n = poll(p, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("poll");
    if (p[1].revents) break;
    if (!(p[0].revents & POLLIN)) continue;
    UniqueFd fd(accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd.valid()) continue;
    std::lock_guard<std::mutex> l(mu_);
    live_fds_.push_back(fd.get());
    threads_.emplace_back([this, f = fd.release()]() mutable { ServeConnection(UniqueFd(f)); });
  }
  if (done_.load()) result = absl::OkStatus();
  // Close every connection and wait for its thread.
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (int fd : live_fds_) ::shutdown(fd, SHUT_RDWR);
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
  return result;
}

absl::Status PageServer::Handshake(Stream& stream, FaultInjector* faults, Channel* ch,
                                   std::shared_ptr<Tenant>* tenant) {
  const int fd = stream.fd();
  stream.SetReadTimeout(kHandshakeTimeout);  // a silent peer must not hold a thread forever
  if (!stream.tls()) {
    // A TLS hello (a handshake record: 22) where a HELLO frame (magic 0xFA17) should be.
    uint8_t first = 0;
    if (::recv(fd, &first, 1, MSG_PEEK) == 1 && first == 22) {
      return absl::FailedPreconditionError(
          "the destination speaks TLS, and this source serves plain TCP");
    }
  }
  FrameHeader h;
  std::string payload;
  if (absl::Status s = ReadSmallFrame(stream, &h, &payload); !s.ok()) return s;
  if (h.type != FrameType::kHello) {
    return absl::InvalidArgumentError(absl::StrCat("expected HELLO, got ", FrameTypeName(h.type)));
  }
  absl::StatusOr<Hello> hello = DecodeHello(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
  if (!hello.ok()) return hello.status();
  {
    // Every migration's token is compared (in constant time each): the match is the one.
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& t : tenants_) {
      if (TokensEqual(hello->token, t->token)) *tenant = t;
    }
  }
  if (*tenant == nullptr) {
    return absl::PermissionDeniedError("authentication failed: wrong migration token");
  }
  *ch = hello->channel;
  if (faults != nullptr) {
    if (absl::Status s = faults->OnHello(*ch); !s.ok()) return s;
  }
  stream.SetReadTimeout(absl::ZeroDuration());
  // Every frame goes out in one writev: Nagle could only hold a small answer (a one-page
  // batch of a warm-up round's scattered pages) until the destination's delayed ACK.
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  pthread_setname_np(pthread_self(), *ch == Channel::kUrgent ? "fl-src-urgent" : "fl-src-bulk");
  BulkThreads bulk_threads;
  absl::Duration urgent_slice;
  {
    std::lock_guard<std::mutex> l(mu_);
    bulk_threads = bulk_threads_;
    urgent_slice = urgent_slice_;
  }
  // Each setting below is this connection's thread's own.
  if (*ch == Channel::kUrgent) {
    bulk_threads.ApplyToFaultPathThread();
    (void)SetThreadSlice(urgent_slice);  // a kernel < 6.12 leaves it as is
    int prio = 6;
    setsockopt(fd, SOL_SOCKET, SO_PRIORITY, &prio, sizeof(prio));
  } else {
    bulk_threads.ApplyToBulkThread();
    int big = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
  }
  if (multi_ && *ch == Channel::kBulk) {
    // Many VMs share this process: background streams yield the CPU to fault answers
    // (SCHED_IDLE, this thread only: see TcpSourceOptions::bulk_idle).
    sched_param none = {};
    (void)sched_setscheduler(0, SCHED_IDLE, &none);
  }
  if ((*tenant)->rounds != nullptr) {
    // A live source: no page may be read before the guest's writes are tracked (a VMM that
    // begins tracking when its migration starts, e.g. QEMU, may not have yet).
    if (absl::Status s = (*tenant)->rounds->WaitTracking(absl::Now() + kHandshakeTimeout);
        !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("the source VMM's dirty tracking: ", s.message()));
    }
  }
  Welcome w;
  w.regions = (*tenant)->table;
  if ((*tenant)->rounds != nullptr) w.flags |= kWelcomeLive;
  if (faults != nullptr) faults->OnWelcome(*ch, &w.regions);
  std::string out;
  EncodeWelcome(w, &out);
  return stream.WriteAll(out.data(), out.size());
}

void PageServer::ServeConnection(UniqueFd fd) {
  const int raw_fd = fd.get();  // in live_fds_ until the stream is closed
  Stream stream(std::move(fd));
  Channel ch = Channel::kUrgent;
  absl::Status s;
  bool can_answer = true;  // a peer we can still send an ERROR frame to
  if (tls_) {
    s = tls_->Accept(&stream, absl::Now() + kHandshakeTimeout);
    can_answer = false;  // a failed TLS handshake has answered with an alert (or ERROR) itself
  }
  FaultInjector* faults;
  SourceRead read;
  {
    std::lock_guard<std::mutex> l(mu_);
    faults = faults_;
    read = source_read_;
  }
  std::vector<uint8_t> scratch;  // SourceRead::kCopy's buffer, reused by every request
  std::shared_ptr<Tenant> tenant;
  if (s.ok()) {
    can_answer = true;
    s = Handshake(stream, faults, &ch, &tenant);
  }
  if (!s.ok()) {
    {
      std::lock_guard<std::mutex> l(mu_);
      last_refusal_ = std::string(s.message());
    }
    stats_.refused_connections.fetch_add(1);  // after: a reader of the count sees the reason
  }
  HeldFrame held;  // FaultInjector::kSendLater
  while (s.ok()) {
    if (held.held()) {
      // A held frame goes out once the destination has been quiet for a while.
      struct pollfd p = {stream.fd(), POLLIN, 0};
      if (poll(&p, 1, kHeldFrameQuietMs) == 0) {
        s = stream.WriteAll(held.bytes.data(), held.bytes.size());
        held.bytes.clear();
        continue;
      }
    }
    FrameHeader h;
    std::string payload;
    s = ReadSmallFrame(stream, &h, &payload);
    if (!s.ok()) break;
    auto span =
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
    if (h.type == FrameType::kRequest || h.type == FrameType::kVerify) {
      absl::StatusOr<PageRange> r = DecodeRange(span);
      if (!r.ok()) {
        s = r.status();
        break;
      }
      s = CheckRange(*r, tenant->table, kMaxPagesPerFrame);
      if (s.ok() && h.type == FrameType::kRequest &&
          uint64_t{r->count} * tenant->table[r->region].page_size > kMaxPagesPayload) {
        s = absl::OutOfRangeError(absl::StrCat("request for ", r->count, " pages of ",
                                               tenant->table[r->region].page_size,
                                               " bytes exceeds one frame"));
      }
      if (!s.ok()) {
        stats_.refused_requests.fetch_add(1);
        break;
      }
      s = h.type == FrameType::kRequest
              ? SendPages(*tenant, stream, *r, ch, read, &scratch, faults, &held)
              : SendVerified(*tenant, stream, *r, read, &scratch);
    } else if (h.type == FrameType::kDone) {
      tenant->done.store(true);
      if (!multi_) {  // one migration: its end is the server's
        done_.store(true);
        uint64_t one = 1;
        (void)!write(stop_fd_.get(), &one, sizeof(one));
      }
      break;
    } else if (h.type == FrameType::kDirtySync || h.type == FrameType::kDirtyApplied) {
      s = HandleDirty(*tenant, stream, h.type, span);
    } else if (ext_ != nullptr && ext_->Handles(h.type)) {
      s = ext_->Handle(stream, h.type, span);
    } else if (h.type == FrameType::kRdmaConnect) {
      s = absl::FailedPreconditionError(
          "the destination asks for RDMA, and this source serves TCP only");
    } else {
      s = absl::InvalidArgumentError(
          absl::StrCat("unexpected ", FrameTypeName(h.type), " frame from the destination"));
    }
  }
  if (!s.ok() && can_answer && s.code() != absl::StatusCode::kUnavailable) {
    std::string out;
    EncodeError(s, &out);
    (void)stream.WriteAll(out.data(), out.size());
  }
  // A throttle asked for by a destination lasts only as long as its urgent connection: a
  // destination that is gone must not leave the guest slowed down.
  if (tenant != nullptr && tenant->rounds != nullptr && ch == Channel::kUrgent) {
    tenant->rounds->ReleaseThrottle();
  }
  std::lock_guard<std::mutex> l(mu_);
  live_fds_.erase(std::remove(live_fds_.begin(), live_fds_.end(), raw_fd), live_fds_.end());
  // `stream` closes the socket after it left live_fds_ (Shutdown never touches a reused fd).
}

absl::Status PageServer::HandleDirty(Tenant& t, Stream& stream, FrameType type,
                                     absl::Span<const uint8_t> payload) {
  if (t.rounds == nullptr) {
    return absl::FailedPreconditionError(
        "the destination asks which pages changed (warm-up), but this source serves frozen "
        "memory and tracks no writes");
  }
  if (type == FrameType::kDirtyApplied) {
    absl::StatusOr<uint64_t> round = DecodeDirtyApplied(payload);
    if (!round.ok()) return round.status();
    t.rounds->Applied(*round);
    return absl::OkStatus();
  }
  absl::StatusOr<DirtySync> sync = DecodeDirtySync(payload);
  if (!sync.ok()) return sync.status();
  absl::StatusOr<std::vector<DirtyFrame>> frames =
      t.rounds->Sync(sync->flags & kDirtyFinal, sync->throttle);
  if (!frames.ok()) return frames.status();
  std::string out;
  for (const DirtyFrame& f : *frames) EncodeDirty(f, &out);
  return stream.WriteAll(out.data(), out.size());
}

absl::Status PageServer::SendPages(const Tenant& t, Stream& stream, const PageRange& r, Channel ch,
                                   SourceRead read, std::vector<uint8_t>* scratch,
                                   FaultInjector* faults, HeldFrame* held) {
  const SourceRegion& reg = t.regions[r.region];
  const uint32_t ps = reg.info().page_size;
  std::vector<PageDesc> descs(r.count);
  std::vector<struct iovec> iov;
  iov.reserve(r.count + 1);
  iov.push_back({});
  uint64_t data_bytes = 0, zeros = 0;
  // The pages are checked and sent from one place, the mapping or a copy (see SourceRead):
  // with a copy, the CRC always describes the bytes sent, even of a page the guest is still
  // writing (warm-up; the dirty tracking sends it again either way).
  const uint8_t* src = reg.base() + r.first * ps;
  if (CopiesOut(read, ps)) {  // count * ps <= kMaxPagesPayload: checked by the caller
    absl::StatusOr<const uint8_t*> copy = CopyOut(reg, r.first, r.count, scratch);
    if (!copy.ok()) return copy.status();
    src = *copy;
  }
  for (uint32_t i = 0; i < r.count; ++i) {
    const uint8_t* page = src + uint64_t{i} * ps;
    if (IsZeroPage(page, ps)) {
      descs[i].flags = kPageZero;
      ++zeros;
      continue;
    }
    descs[i].crc = Crc32c(page, ps);
    // Coalesce adjacent data pages into one iovec.
    if (iov.size() > 1 && static_cast<uint8_t*>(iov.back().iov_base) + iov.back().iov_len == page) {
      iov.back().iov_len += ps;
    } else {
      iov.push_back({const_cast<uint8_t*>(page), ps});
    }
    data_bytes += ps;
  }
  if (faults != nullptr) {
    return SendInjected(stream, r, reg.info(), ch, faults, &descs, iov.data() + 1,
                        static_cast<int>(iov.size()) - 1, held);
  }
  std::string prefix;
  EncodePagesPrefix(PagesHead{r.region, r.count, r.first}, descs, ps, &prefix);
  iov[0] = {prefix.data(), prefix.size()};
  absl::Status s = stream.WritevAll(iov.data(), static_cast<int>(iov.size()));
  if (s.ok()) {
    (ch == Channel::kUrgent ? stats_.urgent_pages : stats_.bulk_pages).fetch_add(r.count - zeros);
    stats_.zero_pages.fetch_add(zeros);
    stats_.bytes.fetch_add(prefix.size() + data_bytes);
  }
  return s;
}

absl::Status PageServer::SendInjected(Stream& stream, const PageRange& r, const RegionInfo& region,
                                      Channel ch, FaultInjector* faults,
                                      std::vector<PageDesc>* descs, const struct iovec* data,
                                      int data_iovs, HeldFrame* held) {
  std::string instead;
  const FaultInjector::PagesAction action = faults->OnPages(ch, r, region, descs, &instead);
  if (action == FaultInjector::PagesAction::kSendInstead) {
    absl::Status s = stream.WriteAll(instead.data(), instead.size());
    if (!s.ok()) return s;
    return absl::UnavailableError("fault injection: connection closed after a substitute frame");
  }
  // The whole frame in one buffer: it may be held, or sent in part.
  std::string frame;
  EncodePagesPrefix(PagesHead{r.region, r.count, r.first}, *descs, region.page_size, &frame);
  for (int i = 0; i < data_iovs; ++i) {
    frame.append(static_cast<const char*>(data[i].iov_base), data[i].iov_len);
  }
  switch (action) {
    case FaultInjector::PagesAction::kTruncateAndCloseAll: {
      (void)stream.WriteAll(frame.data(), frame.size() / 2);
      std::lock_guard<std::mutex> l(mu_);
      for (int fd : live_fds_) ::shutdown(fd, SHUT_RDWR);
      return absl::UnavailableError("fault injection: connections closed mid-frame");
    }
    case FaultInjector::PagesAction::kSendLater:
      if (!held->held()) {
        held->bytes = std::move(frame);
        return absl::OkStatus();
      }
      break;  // one is held already: this one now, then that one
    default: break;
  }
  if (absl::Status s = stream.WriteAll(frame.data(), frame.size()); !s.ok()) return s;
  if (held->held()) {
    absl::Status s = stream.WriteAll(held->bytes.data(), held->bytes.size());
    held->bytes.clear();
    return s;
  }
  return absl::OkStatus();
}

absl::Status PageServer::SendVerified(const Tenant& t, Stream& stream, const PageRange& r,
                                      SourceRead read, std::vector<uint8_t>* scratch) {
  const SourceRegion& reg = t.regions[r.region];
  const uint32_t ps = reg.info().page_size;
  std::vector<uint32_t> crcs(r.count);
  if (CopiesOut(read, ps)) {
    // A VERIFY range may be larger than a PAGES frame: read it a frame's worth at a time.
    const uint32_t step = static_cast<uint32_t>(std::max<uint64_t>(1, kMaxPagesPayload / ps));
    for (uint32_t i = 0; i < r.count; i += step) {
      const uint32_t n = std::min(step, r.count - i);
      absl::StatusOr<const uint8_t*> copy = CopyOut(reg, r.first + i, n, scratch);
      if (!copy.ok()) return copy.status();
      for (uint32_t j = 0; j < n; ++j) crcs[i + j] = Crc32c(*copy + uint64_t{j} * ps, ps);
    }
  } else {
    for (uint32_t i = 0; i < r.count; ++i) crcs[i] = Crc32c(reg.base() + (r.first + i) * ps, ps);
  }
  std::string out;
  EncodeVerified(r, crcs, &out);
  return stream.WriteAll(out.data(), out.size());
}

}  // namespace faultline
