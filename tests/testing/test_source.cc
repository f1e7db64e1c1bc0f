#include "tests/testing/test_source.h"

#include "absl/strings/str_cat.h"
#include "transport/socket.h"

namespace faultline {

absl::StatusOr<std::unique_ptr<TestSource>> TestSource::Start(uint64_t size, uint32_t page_size,
                                                              PatternSpec pattern,
                                                              std::shared_ptr<const TlsContext> tls,
                                                              FaultInjector* faults) {
  std::unique_ptr<TestSource> t(new TestSource());
  t->tls_ = std::move(tls);
  t->faults_ = faults;
  absl::StatusOr<std::unique_ptr<PatternMemory>> mem =
      PatternMemory::Create(size, page_size, pattern);
  if (!mem.ok()) return mem.status();
  t->mem_ = std::move(*mem);
  t->token_ = RandomToken();
  if (absl::Status s = t->StartServer(); !s.ok()) return s;
  return t;
}

absl::Status TestSource::StartServer() {
  absl::StatusOr<std::vector<SourceRegion>> regions = mem_->Regions("ram");
  if (!regions.ok()) return regions.status();
  server_ = std::make_unique<PageServer>(std::move(*regions), token_, tls_);
  server_->SetFaultInjector(faults_);
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

TestSource::~TestSource() { Stop(); }

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
  return mem_->CountMismatches(mem);
}

}  // namespace faultline
