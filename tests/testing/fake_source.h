// FakeSource: a misbehaving page server for fault-injection tests. It speaks the protocol
// correctly up to the point its Mode says, then breaks it in one precise way. Pages it does
// send carry the content of the memory it is given.
#ifndef FAULTLINE_TESTS_TESTING_FAKE_SOURCE_H_
#define FAULTLINE_TESTS_TESTING_FAKE_SOURCE_H_

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/unique_fd.h"
#include "transport/protocol.h"

namespace faultline {

class FakeSource {
 public:
  enum class Mode {
    kHonest,              // serves correctly
    kCorruptFirstPages,   // the first `n` data pages sent on the bulk channel carry a wrong CRC
    kCorruptFirstUrgentPages,  // the same on the urgent channel
    kCloseMidFrame,       // after `n` good PAGES frames on the bulk channel, sends half a frame
                          // and closes both connections
    kGarbageAfterWelcome, // bulk channel: random bytes instead of a frame
    kOutOfRangePages,     // bulk channel: a PAGES frame for pages past the region's end
    kWrongRegionTable,    // WELCOME announces a region of a different size
    kRejectToken,         // answers HELLO with ERROR(PERMISSION_DENIED)
    kReorderBulk,         // answers bulk requests in pairs, the second one first
  };

  FakeSource(const uint8_t* mem, uint64_t size, uint32_t page_size, Mode mode, int n = 0);
  ~FakeSource();

  std::string address() const;
  Token token() const { return token_; }
  int frames_sent() const { return frames_.load(); }
  void Stop();

 private:
  void AcceptLoop();
  void Serve(UniqueFd fd);
  bool SendPages(int fd, const PageRange& r, bool bulk);

  const uint8_t* mem_;
  uint64_t size_;
  uint32_t page_size_;
  Mode mode_;
  int n_;
  Token token_;
  UniqueFd listen_;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> frames_{0}, corrupted_{0};
  std::mutex mu_;
  std::vector<int> fds_;
  std::vector<std::thread> threads_;
  std::thread accept_;
};

}  // namespace faultline

#endif  // FAULTLINE_TESTS_TESTING_FAKE_SOURCE_H_
