#include "tests/testing/test_source.h"

#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"
#include "transport/socket.h"

namespace faultline {

absl::StatusOr<std::unique_ptr<TestSource>> TestSource::Start(
    uint64_t size, uint32_t page_size, PatternSpec pattern, std::shared_ptr<const TlsContext> tls) {
  std::unique_ptr<TestSource> t(new TestSource());
  t->tls_ = std::move(tls);
  t->size_ = size;
  t->page_size_ = page_size;
  unsigned flags = MFD_CLOEXEC | (page_size == (2u << 20) ? (MFD_HUGETLB | MFD_HUGE_2MB) : 0);
  t->fd_.reset(memfd_create("test-source", flags));
  if (!t->fd_.valid()) return ErrnoStatus("memfd_create");
  if (ftruncate(t->fd_.get(), static_cast<off_t>(size)) < 0) return ErrnoStatus("ftruncate");
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, t->fd_.get(), 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap source");
  t->base_ = static_cast<uint8_t*>(p);
  FillPattern(pattern, t->base_, size);
  t->token_ = RandomToken();
  if (absl::Status s = t->StartServer(); !s.ok()) return s;
  return t;
}

absl::Status TestSource::StartServer() {
  absl::StatusOr<SourceRegion> region = SourceRegion::MapFd("ram", fd_.get(), 0, size_, page_size_);
  if (!region.ok()) return region.status();
  std::vector<SourceRegion> regions;
  regions.push_back(std::move(*region));
  server_ = std::make_unique<PageServer>(std::move(regions), token_, tls_);
  absl::StatusOr<UniqueFd> listen = ListenTcp(absl::StrCat("127.0.0.1:", port_));
  if (!listen.ok()) return listen.status();
  listen_ = std::move(*listen);
  absl::StatusOr<int> port = BoundPort(listen_.get());
  if (!port.ok()) return port.status();
  port_ = *port;
  thread_ = std::thread([this] { (void)server_->Serve(listen_.get()); });
  return absl::OkStatus();
}

absl::Status TestSource::Restart() {
  Stop();
  listen_.reset();
  return StartServer();
}

TestSource::~TestSource() {
  Stop();
  if (base_) munmap(base_, size_);
}

void TestSource::Stop() {
  if (server_) server_->Shutdown();
  if (thread_.joinable()) thread_.join();
}

TcpSourceOptions TestSource::options() const {
  TcpSourceOptions o;
  o.address = absl::StrCat("127.0.0.1:", port_);
  o.token = token_;
  o.connect_timeout = absl::Seconds(5);
  return o;
}

uint64_t TestSource::CountMismatches(const uint8_t* mem) const {
  uint64_t bad = 0;
  for (uint64_t off = 0; off < size_; off += page_size_) {
    if (memcmp(mem + off, base_ + off, page_size_) != 0) ++bad;
  }
  return bad;
}

}  // namespace faultline
