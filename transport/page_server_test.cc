// The page server against a raw client: every bad input gets a clear ERROR frame and the
// connection closed, and the server keeps serving everyone else.
#include "transport/page_server.h"

#include <dirent.h>
#include <linux/memfd.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/cpu_list.h"
#include "base/crc32c.h"
#include "base/thread_slice.h"
#include "gtest/gtest.h"
#include "transport/socket.h"
#include "transport/tcp_page_source.h"
#include "transport/testing/recording_sink.h"

namespace faultline {
namespace {

constexpr uint64_t kSize = 64 * 4096;

// Sends a HELLO of protocol `version` with `token` on channel `ch`.
void SendHello(int fd, uint32_t version, const Token& token, Channel ch = Channel::kUrgent) {
  Hello h;
  h.version = version;
  h.token = token;
  h.channel = ch;
  std::string out;
  EncodeHello(h, &out);
  ASSERT_TRUE(WriteAll(fd, out.data(), out.size()).ok());
}

// A connection to the page server at `addr` that has sent HELLO on `ch` and read the WELCOME.
UniqueFd HandshakenOn(const std::string& addr, const Token& token, Channel ch) {
  auto fd = ConnectTcp(addr, absl::Seconds(5));
  EXPECT_TRUE(fd.ok());
  if (!fd.ok()) return UniqueFd();
  SendHello(fd->get(), kProtocolVersion, token, ch);
  FrameHeader fh;
  std::string payload;
  EXPECT_TRUE(ReadSmallFrame(fd->get(), &fh, &payload).ok());
  EXPECT_EQ(fh.type, FrameType::kWelcome);
  return std::move(*fd);
}

// Reads frames until an error or EOF; returns the final status.
absl::Status DrainFrames(int fd) {
  FrameHeader h;
  std::string payload;
  while (true) {
    absl::Status s = ReadSmallFrame(fd, &h, &payload);
    if (!s.ok()) return s;
  }
}

class PageServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_.reset(memfd_create("src", MFD_CLOEXEC));
    ASSERT_EQ(ftruncate(fd_.get(), kSize), 0);
    auto* p = static_cast<uint8_t*>(
        mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0));
    ASSERT_NE(p, MAP_FAILED);
    for (uint64_t i = 0; i < kSize / 8; ++i) {
      reinterpret_cast<uint64_t*>(p)[i] = (i / 512) % 4 == 0 ? 0 : i * 2654435761u;
    }
    mem_ = p;
    auto region = SourceRegion::MapFd("ram", fd_.get(), 0, kSize, 4096);
    ASSERT_TRUE(region.ok()) << region.status();
    std::vector<SourceRegion> regions;
    regions.push_back(std::move(*region));
    token_ = RandomToken();
    server_ = std::make_unique<PageServer>(std::move(regions), token_);
    auto l = ListenTcp("127.0.0.1:0");
    ASSERT_TRUE(l.ok());
    listen_ = std::move(*l);
    port_ = *BoundPort(listen_.get());
    thread_ = std::thread([this] { served_ = server_->Serve(listen_.get()); });
  }
  void TearDown() override {
    server_->Shutdown();
    thread_.join();
    munmap(mem_, kSize);
  }
  std::string Addr() const { return absl::StrCat("127.0.0.1:", port_); }
  // A destination's options for this server's migration.
  TcpSourceOptions Client() const {
    TcpSourceOptions o;
    o.address = Addr();
    o.token = token_;
    return o;
  }
  UniqueFd Raw() {
    auto fd = ConnectTcp(Addr(), absl::Seconds(5));
    EXPECT_TRUE(fd.ok());
    return std::move(*fd);
  }
  absl::Status Drain(int fd) { return DrainFrames(fd); }
  UniqueFd Handshaken() { return HandshakenOn(Addr(), token_, Channel::kUrgent); }

  // A FaultInjector for the connections accepted from now on, alive until the server is gone.
  template <typename T>
  T& Injector() {
    auto* t = new T();
    injector_.reset(t);
    server_->SetFaultInjector(t);
    return *t;
  }

  UniqueFd fd_, listen_;
  uint8_t* mem_ = nullptr;
  Token token_;
  std::unique_ptr<FaultInjector> injector_;  // outlives the connections that call it
  std::unique_ptr<PageServer> server_;
  int port_ = 0;
  std::thread thread_;
  absl::Status served_;
};

TEST_F(PageServerTest, WrongTokenIsRefused) {
  TcpSourceOptions o;
  o.address = Addr();
  o.token = RandomToken();
  auto src = TcpPageSource::Connect(o);
  ASSERT_FALSE(src.ok());
  EXPECT_EQ(src.status().code(), absl::StatusCode::kPermissionDenied) << src.status();
  EXPECT_NE(src.status().message().find("wrong migration token"), std::string::npos);
  EXPECT_GE(server_->stats().refused_connections.load(), 1u);
}

TEST_F(PageServerTest, WrongVersionIsNamed) {
  UniqueFd fd = Raw();
  SendHello(fd.get(), 2, token_);
  absl::Status s = Drain(fd.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("version mismatch: peer speaks 2"), std::string::npos) << s;
}

TEST_F(PageServerTest, GarbageIsRefused) {
  UniqueFd fd = Raw();
  const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_TRUE(WriteAll(fd.get(), junk, sizeof(junk)).ok());
  absl::Status s = Drain(fd.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("bad frame magic"), std::string::npos) << s;
}

TEST_F(PageServerTest, OversizedFrameIsRefused) {
  UniqueFd fd = Handshaken();
  std::string f;
  EncodeRequest({0, 1, 0}, &f);
  uint32_t big = 64u << 20;
  memcpy(&f[4], &big, 4);
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  absl::Status s = Drain(fd.get());
  EXPECT_NE(s.message().find("oversized"), std::string::npos) << s;
}

TEST_F(PageServerTest, OutOfRangeRequestIsRefused) {
  UniqueFd fd = Handshaken();
  std::string f;
  EncodeRequest({0, 2, 63}, &f);  // pages 63..64 of a 64-page region
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  absl::Status s = Drain(fd.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_NE(s.message().find("outside region 'ram'"), std::string::npos) << s;
  EXPECT_EQ(server_->stats().refused_requests.load(), 1u);
  f.clear();
  UniqueFd fd2 = Handshaken();
  EncodeRequest({3, 1, 0}, &f);  // no region 3
  ASSERT_TRUE(WriteAll(fd2.get(), f.data(), f.size()).ok());
  EXPECT_EQ(Drain(fd2.get()).code(), absl::StatusCode::kOutOfRange);
}

TEST_F(PageServerTest, TruncatedFrameThenCloseLeavesServerServing) {
  {
    UniqueFd fd = Handshaken();
    std::string f;
    EncodeRequest({0, 1, 0}, &f);
    ASSERT_TRUE(WriteAll(fd.get(), f.data(), 11).ok());  // header + 3 bytes, then hang up
  }
  // Another client is served normally.
  UniqueFd fd = Handshaken();
  std::string f;
  EncodeRequest({0, 4, 0}, &f);
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  uint8_t hb[kHeaderSize];
  ASSERT_TRUE(ReadAll(fd.get(), hb, sizeof(hb)).ok());
  auto h = DecodeHeader(hb);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->type, FrameType::kPages);
  std::vector<uint8_t> body(h->length);
  ASSERT_TRUE(ReadAll(fd.get(), body.data(), body.size()).ok());
  auto descs =
      DecodePageDescs(absl::MakeConstSpan(body).subspan(kPagesHeadSize, 32), 4, 4096, h->length);
  ASSERT_TRUE(descs.ok()) << descs.status();
  EXPECT_TRUE((*descs)[0].zero());  // page 0 is zero in this memory: a marker, no bytes
  EXPECT_FALSE((*descs)[1].zero());
  EXPECT_EQ((*descs)[1].crc, Crc32c(mem_ + 4096, 4096));
  EXPECT_EQ(memcmp(body.data() + kPagesHeadSize + 32, mem_ + 4096, 4096), 0);
}

// This process's threads (/proc/self/task).
std::vector<pid_t> ThreadIds() {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return out;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') out.push_back(static_cast<pid_t>(atoi(e->d_name)));
  }
  closedir(d);
  return out;
}

// This process's threads named `name` (pthread_setname_np).
std::vector<pid_t> ThreadsNamed(const std::string& name) {
  std::vector<pid_t> out;
  for (pid_t tid : ThreadIds()) {
    std::ifstream f(absl::StrCat("/proc/self/task/", tid, "/comm"));
    std::string comm;
    std::getline(f, comm);
    if (comm == name) out.push_back(tid);
  }
  return out;
}

// Polls `done` every millisecond for up to 10 s (threads set their own scheduling when they
// start, which may be after the call that started them returns).
template <typename F>
void WaitUntil(F done) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!done() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
}

// Connects with two bulk lanes and starts a bulk and an urgent request, so that every
// receive thread here and every serving thread at the server is running.
std::unique_ptr<TcpPageSource> ConnectWithEveryThreadRunning(TcpSourceOptions o,
                                                             RecordingSink* sink) {
  o.bulk_lanes = 2;
  auto src = TcpPageSource::Connect(o);
  EXPECT_TRUE(src.ok()) << src.status();
  if (!src.ok()) return nullptr;
  EXPECT_TRUE((*src)->Start(sink).ok());
  EXPECT_TRUE((*src)->RequestBulk(1, 0, 0, 4).ok());
  EXPECT_TRUE((*src)->RequestUrgent(0, 8).ok());
  return *std::move(src);
}

// How many of this process's threads run with `slice` (base/thread_slice.h).
int ThreadsWithSlice(absl::Duration slice) {
  int n = 0;
  for (pid_t tid : ThreadIds()) {
    absl::StatusOr<absl::Duration> s = ThreadSlice(tid);
    if (s.ok() && *s == slice) ++n;
  }
  return n;
}

TEST_F(PageServerTest, UrgentThreadsOnBothSidesGetTheirSlice) {
  // Slices nothing else here uses: the server's urgent thread 300 us, the client's urgent
  // receive thread 200 us; the bulk lanes' threads keep the default.
  std::thread probe([] {
    if (absl::IsInvalidArgument(SetThreadSlice(absl::Microseconds(200)))) {
      GTEST_SKIP() << "kernel without custom slices (< 6.12)";
    }
  });
  probe.join();
  if (IsSkipped()) return;
  server_->SetUrgentSlice(absl::Microseconds(300));
  TcpSourceOptions o = Client();
  o.bulk_lanes = 2;
  o.urgent_slice = absl::Microseconds(200);
  auto src = TcpPageSource::Connect(o);
  ASSERT_TRUE(src.ok()) << src.status();
  RecordingSink sink(kSize / 4096);
  ASSERT_TRUE((*src)->Start(&sink).ok());
  // The receive threads set theirs when they start, which may be after Start returns.
  WaitUntil([] { return ThreadsWithSlice(absl::Microseconds(200)) == 1; });
  EXPECT_EQ(ThreadsWithSlice(absl::Microseconds(200)), 1);  // the urgent receive thread only
  EXPECT_EQ(ThreadsWithSlice(absl::Microseconds(300)), 1);  // the urgent server thread only
}

// This process's threads named `name` and the CPUs each may run on.
std::vector<std::vector<int>> AffinityOf(const std::string& name) {
  std::vector<std::vector<int>> out;
  for (pid_t tid : ThreadsNamed(name)) {
    std::vector<int> cpus = AllowedCpus(tid);
    if (!cpus.empty()) out.push_back(std::move(cpus));  // empty: the thread ended meanwhile
  }
  return out;
}

TEST_F(PageServerTest, BulkThreadsOnBothSidesRunOnTheirCpusOnly) {
  const std::vector<int> allowed = AllowedCpus();
  if (allowed.size() < 2) GTEST_SKIP() << "one CPU here: a confined thread looks like any other";
  const std::vector<int> bulk = {allowed.back()};
  server_->SetBulkThreads({bulk, 0});
  TcpSourceOptions o = Client();
  o.bulk_threads.cpus = bulk;
  RecordingSink sink(kSize / 4096);
  std::unique_ptr<TcpPageSource> src = ConnectWithEveryThreadRunning(o, &sink);
  ASSERT_NE(src, nullptr);
  auto confined = [&](const std::string& name) {
    int n = 0;
    for (const std::vector<int>& cpus : AffinityOf(name)) n += cpus == bulk ? 1 : 0;
    return n;
  };
  // Each thread names itself when it starts, which may be after the calls above return.
  WaitUntil([&] {
    return confined("fl-bulk-rx") >= 2 && confined("fl-src-bulk") >= 2 &&
           !AffinityOf("fl-urgent-rx").empty() && !AffinityOf("fl-src-urgent").empty();
  });
  EXPECT_EQ(confined("fl-bulk-rx"), 2);   // both lanes' receive threads
  EXPECT_EQ(confined("fl-src-bulk"), 2);  // both lanes' serving threads
  // The fault path is not confined: its threads keep every CPU.
  for (const char* urgent : {"fl-urgent-rx", "fl-src-urgent"}) {
    std::vector<std::vector<int>> a = AffinityOf(urgent);
    EXPECT_EQ(a.size(), 1u) << urgent;
    if (!a.empty()) EXPECT_EQ(a[0], allowed) << urgent;
  }
  src->Stop();  // its receive threads are done with `sink` before it goes
}

// This process's threads named `name` and the nice value of each.
std::vector<int> NiceOf(const std::string& name) {
  std::vector<int> out;
  for (pid_t tid : ThreadsNamed(name)) {
    absl::StatusOr<int> nice = ThreadNice(tid);
    if (nice.ok()) out.push_back(*nice);  // not ok: the thread ended meanwhile
  }
  return out;
}

// A lower priority (5) needs no privilege, so it runs in the sandbox too; the fault path's
// nice stays 0 (base/bulk_threads_test covers a raised one).
TEST_F(PageServerTest, BulkThreadsOnBothSidesRunAtTheirNiceAndTheFaultPathDoesNot) {
  server_->SetBulkThreads({{}, 5});
  TcpSourceOptions o = Client();
  o.bulk_threads.nice = 5;
  RecordingSink sink(kSize / 4096);
  std::unique_ptr<TcpPageSource> src = ConnectWithEveryThreadRunning(o, &sink);
  ASSERT_NE(src, nullptr);
  auto at = [](const std::string& name, int nice) {
    int n = 0;
    for (int v : NiceOf(name)) n += v == nice ? 1 : 0;
    return n;
  };
  WaitUntil([&] {
    return at("fl-bulk-rx", 5) >= 2 && at("fl-src-bulk", 5) >= 2 &&
           !NiceOf("fl-urgent-rx").empty() && !NiceOf("fl-src-urgent").empty();
  });
  EXPECT_EQ(at("fl-bulk-rx", 5), 2);   // both lanes' receive threads
  EXPECT_EQ(at("fl-src-bulk", 5), 2);  // both lanes' serving threads
  EXPECT_EQ(NiceOf("fl-urgent-rx"), std::vector<int>{0});
  EXPECT_EQ(NiceOf("fl-src-urgent"), std::vector<int>{0});
  src->Stop();  // its receive threads are done with `sink` before it goes
}

TEST_F(PageServerTest, FinishReturnsOnceTheSourceReadDoneAndItsCloseIsNoFailure) {
  TcpSourceOptions o = Client();
  o.bulk_lanes = 2;
  auto src = TcpPageSource::Connect(o);
  ASSERT_TRUE(src.ok()) << src.status();
  RecordingSink sink(kSize / 4096);
  ASSERT_TRUE((*src)->Start(&sink).ok());
  ASSERT_TRUE((*src)->Finish().ok());
  // Finish waited for the source to close the urgent connection, which it does once it has
  // read DONE: closing first could reset the connection under a DONE not yet read.
  EXPECT_TRUE(server_->MigrationDone(""));
  absl::SleepFor(absl::Milliseconds(200));  // the source closes every connection meanwhile
  (*src)->Stop();  // joins the receive threads: what they reported is all there is
  EXPECT_FALSE(sink.failed_.has_value())
      << "the source's close after DONE is the end we asked for: " << sink.failed_->status;
  thread_.join();
  EXPECT_TRUE(served_.ok()) << served_;
  thread_ = std::thread([] {});
}

TEST_F(PageServerTest, DoneEndsServing) {
  UniqueFd fd = Handshaken();
  std::string f;
  EncodeDone(&f);
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  thread_.join();
  EXPECT_TRUE(served_.ok()) << served_;
  thread_ = std::thread([] {});
}

// ---- The fault-injection hook (tests/transport_failure_test.cc uses it against the engine) ----

// One PAGES frame read off a raw connection.
struct RawPages {
  PagesHead head;
  std::vector<PageDesc> descs;
  std::string data;
};

absl::StatusOr<RawPages> ReadPages(int fd) {
  uint8_t hb[kHeaderSize];
  if (absl::Status s = ReadAll(fd, hb, sizeof(hb)); !s.ok()) return s;
  absl::StatusOr<FrameHeader> h = DecodeHeader(hb);
  if (!h.ok()) return h.status();
  if (h->type != FrameType::kPages) return absl::InternalError("not a PAGES frame");
  std::vector<uint8_t> body(h->length);
  if (absl::Status s = ReadAll(fd, body.data(), body.size()); !s.ok()) return s;
  RawPages p;
  absl::StatusOr<PagesHead> head = DecodePagesHead(absl::MakeConstSpan(body).first(kPagesHeadSize));
  if (!head.ok()) return head.status();
  p.head = *head;
  const size_t descs_len = size_t{p.head.count} * kPageDescSize;
  absl::StatusOr<std::vector<PageDesc>> descs = DecodePageDescs(
      absl::MakeConstSpan(body).subspan(kPagesHeadSize, descs_len), p.head.count, 4096, h->length);
  if (!descs.ok()) return descs.status();
  p.descs = *descs;
  p.data.assign(reinterpret_cast<const char*>(body.data()) + kPagesHeadSize + descs_len,
                body.size() - kPagesHeadSize - descs_len);
  return p;
}

class Misbehave : public FaultInjector {
 public:
  absl::Status OnHello(Channel ch) override {
    return refuse ? absl::PermissionDeniedError("refused by the injector") : absl::OkStatus();
  }
  void OnWelcome(Channel ch, std::vector<RegionInfo>* table) override {
    if (grow_table) (*table)[0].size += 4096;
  }
  PagesAction OnPages(Channel ch, const PageRange& range, const RegionInfo& region,
                      std::vector<PageDesc>* descs, std::string* instead) override {
    if (flip_crcs) {
      for (PageDesc& d : *descs) d.crc ^= d.zero() ? 0 : 1;
    }
    return action;
  }
  bool refuse = false, grow_table = false, flip_crcs = false;
  PagesAction action = PagesAction::kSend;
};

TEST_F(PageServerTest, FaultInjectorRefusesHello) {
  Misbehave& m = Injector<Misbehave>();
  m.refuse = true;
  auto src = TcpPageSource::Connect(Client());
  ASSERT_FALSE(src.ok());
  EXPECT_EQ(src.status().code(), absl::StatusCode::kPermissionDenied) << src.status();
  EXPECT_NE(src.status().message().find("refused by the injector"), std::string::npos);
  EXPECT_EQ(server_->last_refusal(), "refused by the injector");
  server_->SetFaultInjector(nullptr);
}

TEST_F(PageServerTest, FaultInjectorAltersTheTableAndCrcsNotTheBytes) {
  Misbehave& m = Injector<Misbehave>();
  m.grow_table = true;
  m.flip_crcs = true;
  UniqueFd fd = Raw();
  SendHello(fd.get(), kProtocolVersion, token_);
  FrameHeader h;
  std::string payload;
  ASSERT_TRUE(ReadSmallFrame(fd.get(), &h, &payload).ok());
  ASSERT_EQ(h.type, FrameType::kWelcome);
  absl::StatusOr<Welcome> w = DecodeWelcome(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ(w->regions.size(), 1u);
  EXPECT_EQ(w->regions[0].size, kSize + 4096);
  // Requests are still checked against the real table: the page past the end is refused.
  std::string f;
  EncodeRequest({0, 2, 0}, &f);
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  absl::StatusOr<RawPages> p = ReadPages(fd.get());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->descs.size(), 2u);
  EXPECT_TRUE(p->descs[0].zero());
  EXPECT_EQ(p->descs[1].crc, Crc32c(mem_ + 4096, 4096) ^ 1);
  ASSERT_EQ(p->data.size(), 4096u);
  EXPECT_EQ(memcmp(p->data.data(), mem_ + 4096, 4096), 0);
  f.clear();
  EncodeRequest({0, 1, kSize / 4096}, &f);
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  EXPECT_EQ(Drain(fd.get()).code(), absl::StatusCode::kOutOfRange);
}

TEST_F(PageServerTest, FaultInjectorSendLaterAnswersOutOfOrder) {
  Misbehave& m = Injector<Misbehave>();
  m.action = FaultInjector::PagesAction::kSendLater;
  UniqueFd fd = Handshaken();
  // Two requests at once: the second is answered first, then the held one.
  std::string f;
  EncodeRequest({0, 1, 5}, &f);
  EncodeRequest({0, 1, 6}, &f);
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  absl::StatusOr<RawPages> a = ReadPages(fd.get());
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<RawPages> b = ReadPages(fd.get());
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->head.first, 6u);
  EXPECT_EQ(b->head.first, 5u);
  // A lone request is held, then sent once the line has been quiet.
  f.clear();
  EncodeRequest({0, 1, 7}, &f);
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  absl::StatusOr<RawPages> c = ReadPages(fd.get());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head.first, 7u);
  EXPECT_EQ(memcmp(c->data.data(), mem_ + 7 * 4096, 4096), 0);
}

TEST_F(PageServerTest, FaultInjectorTruncatesAndClosesEveryConnection) {
  Misbehave& m = Injector<Misbehave>();
  m.action = FaultInjector::PagesAction::kTruncateAndCloseAll;
  UniqueFd other = Handshaken();
  UniqueFd fd = Handshaken();
  std::string f;
  EncodeRequest({0, 4, 0}, &f);
  ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
  absl::StatusOr<RawPages> p = ReadPages(fd.get());
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnavailable) << p.status();
  EXPECT_EQ(Drain(other.get()).code(), absl::StatusCode::kUnavailable);
  // The server itself keeps serving new connections.
  server_->SetFaultInjector(nullptr);
  UniqueFd again = Handshaken();
  f.clear();
  EncodeRequest({0, 1, 1}, &f);
  ASSERT_TRUE(WriteAll(again.get(), f.data(), f.size()).ok());
  EXPECT_TRUE(ReadPages(again.get()).ok());
}

TEST_F(PageServerTest, VerifyAnswersPageChecksums) {
  TcpSourceOptions o = Client();
  uint64_t verified = 0;
  auto bad = VerifyAgainstSource(o, {mem_}, &verified, false);
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(*bad, 0u);
  EXPECT_EQ(verified, 64u);
  std::vector<uint8_t> copy(mem_, mem_ + kSize);
  copy[5 * 4096 + 7] ^= 1;
  bad = VerifyAgainstSource(o, {copy.data()}, &verified, false);
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(*bad, 1u);
}

TEST(SourceReadTest, ParsesItsThreeModesAndNamesTheRest) {
  EXPECT_EQ(*ParseSourceRead("auto"), SourceRead::kAuto);
  EXPECT_EQ(*ParseSourceRead("copy"), SourceRead::kCopy);
  EXPECT_EQ(*ParseSourceRead("map"), SourceRead::kMap);
  absl::StatusOr<SourceRead> bad = ParseSourceRead("mmap");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("auto, copy or map"), std::string::npos) << bad.status();
}

// A region that starts `kOffset` bytes into its file, served with each SourceRead mode: the
// same bytes and CRCs either way, for PAGES and VERIFY; a copy reads the region's own part of
// the file, not the file's start.
class SourceReadModeTest : public ::testing::TestWithParam<SourceRead> {
 protected:
  static constexpr uint64_t kOffset = 8 * 4096;
  static constexpr uint64_t kPages = 64;

  void SetUp() override {
    fd_.reset(memfd_create("src", MFD_CLOEXEC));
    ASSERT_EQ(ftruncate(fd_.get(), kOffset + kPages * 4096), 0);
    std::vector<uint8_t> bytes(kOffset + kPages * 4096);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + i / 4096);
    std::memset(bytes.data() + kOffset + 5 * 4096, 0, 4096);  // a zero page
    ASSERT_EQ(pwrite(fd_.get(), bytes.data(), bytes.size(), 0), ssize_t(bytes.size()));
    want_.assign(bytes.begin() + kOffset, bytes.end());
    auto region = SourceRegion::MapFd("ram", fd_.get(), kOffset, kPages * 4096, 4096);
    ASSERT_TRUE(region.ok()) << region.status();
    std::vector<SourceRegion> regions;
    regions.push_back(std::move(*region));
    token_ = RandomToken();
    server_ = std::make_unique<PageServer>(std::move(regions), token_);
    server_->SetSourceRead(GetParam());
    auto l = ListenTcp("127.0.0.1:0");
    ASSERT_TRUE(l.ok());
    listen_ = std::move(*l);
    thread_ = std::thread([this] { (void)server_->Serve(listen_.get()); });
  }
  void TearDown() override {
    server_->Shutdown();
    thread_.join();
  }
  std::string Addr() const { return absl::StrCat("127.0.0.1:", *BoundPort(listen_.get())); }
  UniqueFd Handshaken() { return HandshakenOn(Addr(), token_, Channel::kBulk); }

  UniqueFd fd_, listen_;
  std::vector<uint8_t> want_;
  Token token_;
  std::unique_ptr<PageServer> server_;
  std::thread thread_;
};

TEST_P(SourceReadModeTest, SendsTheRegionsBytesWithTheirCrcs) {
  UniqueFd fd = Handshaken();
  // Two requests on one connection: the second (smaller) reuses the first's buffer.
  for (PageRange r : {PageRange{0, 16, 0}, PageRange{0, 3, 4}}) {
    std::string f;
    EncodeRequest(r, &f);
    ASSERT_TRUE(WriteAll(fd.get(), f.data(), f.size()).ok());
    absl::StatusOr<RawPages> p = ReadPages(fd.get());
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_EQ(p->descs.size(), r.count);
    size_t at = 0;
    for (uint32_t i = 0; i < r.count; ++i) {
      const uint8_t* page = want_.data() + (r.first + i) * 4096;
      if (r.first + i == 5) {
        EXPECT_TRUE(p->descs[i].zero());
        continue;
      }
      ASSERT_FALSE(p->descs[i].zero()) << i;
      EXPECT_EQ(p->descs[i].crc, Crc32c(page, 4096)) << "page " << r.first + i;
      ASSERT_LE(at + 4096, p->data.size());
      EXPECT_EQ(memcmp(p->data.data() + at, page, 4096), 0) << "page " << r.first + i;
      at += 4096;
    }
    EXPECT_EQ(at, p->data.size());
  }
}

TEST_P(SourceReadModeTest, VerifyAnswersTheRegionsChecksums) {
  TcpSourceOptions o;
  o.address = Addr();
  o.token = token_;
  uint64_t verified = 0;
  auto bad = VerifyAgainstSource(o, {want_.data()}, &verified, false);
  ASSERT_TRUE(bad.ok()) << bad.status();
  EXPECT_EQ(*bad, 0u);
  EXPECT_EQ(verified, kPages);
}

INSTANTIATE_TEST_SUITE_P(Modes, SourceReadModeTest,
                         ::testing::Values(SourceRead::kAuto, SourceRead::kCopy, SourceRead::kMap),
                         [](const ::testing::TestParamInfo<SourceRead>& i) {
                           return std::string(i.param == SourceRead::kAuto   ? "auto"
                                              : i.param == SourceRead::kCopy ? "copy"
                                                                             : "map");
                         });

// The source file shrinks under the region (another process truncated it). Read through the
// mapping that is SIGBUS and the whole source dies; copied out it is one refused request, and
// the server keeps serving the pages that are still there.
TEST(SourceReadCopyTest, ATruncatedFileIsAnErrorNotACrash) {
  UniqueFd mfd(memfd_create("src", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(mfd.get(), 16 * 4096), 0);
  std::vector<uint8_t> page(4096, 0x5a);
  for (int i = 0; i < 16; ++i) ASSERT_EQ(pwrite(mfd.get(), page.data(), 4096, i * 4096), 4096);
  auto region = SourceRegion::MapFd("ram", mfd.get(), 0, 16 * 4096, 4096);
  ASSERT_TRUE(region.ok()) << region.status();
  std::vector<uint8_t> out(2 * 4096);
  ASSERT_TRUE(region->ReadPages(14, 2, out.data()).ok());
  ASSERT_EQ(ftruncate(mfd.get(), 8 * 4096), 0);
  absl::Status s = region->ReadPages(14, 2, out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("'ram'"), std::string::npos) << s;
  ASSERT_TRUE(region->ReadPages(7, 1, out.data()).ok());
  EXPECT_EQ(out[0], 0x5a);

  std::vector<SourceRegion> regions;
  regions.push_back(std::move(*region));
  const Token token = RandomToken();
  PageServer server(std::move(regions), token);
  server.SetSourceRead(SourceRead::kCopy);
  auto l = ListenTcp("127.0.0.1:0");
  ASSERT_TRUE(l.ok());
  std::thread t([&] { (void)server.Serve(l->get()); });
  const std::string addr = absl::StrCat("127.0.0.1:", *BoundPort(l->get()));
  UniqueFd a = HandshakenOn(addr, token, Channel::kUrgent);
  ASSERT_TRUE(a.valid());
  std::string f;
  EncodeRequest({0, 2, 14}, &f);
  ASSERT_TRUE(WriteAll(a.get(), f.data(), f.size()).ok());
  absl::Status drained = DrainFrames(a.get());
  EXPECT_EQ(drained.code(), absl::StatusCode::kDataLoss) << drained;
  UniqueFd b = HandshakenOn(addr, token, Channel::kUrgent);
  ASSERT_TRUE(b.valid());
  f.clear();
  EncodeRequest({0, 1, 3}, &f);
  ASSERT_TRUE(WriteAll(b.get(), f.data(), f.size()).ok());
  absl::StatusOr<RawPages> p = ReadPages(b.get());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->data.size(), 4096u);
  EXPECT_EQ(static_cast<uint8_t>(p->data[0]), 0x5a);
  server.Shutdown();
  t.join();
}

}  // namespace
}  // namespace faultline
