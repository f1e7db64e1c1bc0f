// The engine's whole view of a transport: a PageSource that takes page requests, and a
// PageSink (implemented by the engine) that decides where arriving bytes land and places them.
//
// One fault's trip through this interface:
//   fault loop ──RequestUrgent(region, page)──► transport ──► source
//   transport receive thread: Land() → bytes read straight into the returned buffer
//                             → CRC checked → Arrived(kData) → FrameDone()
#ifndef FAULTLINE_TRANSPORT_PAGE_SOURCE_H_
#define FAULTLINE_TRANSPORT_PAGE_SOURCE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "transport/protocol.h"

namespace faultline {

enum class Arrival {
  kData,     // the page's bytes are in the buffer Land() returned, CRC verified
  kZero,     // the page is all zeros; no bytes were sent and Land() was not called
  kCorrupt,  // bytes were read into the landing but failed their CRC, or the stream broke
             // while they were being read: the landing holds garbage, place nothing
};

class PageSink {
 public:
  virtual ~PageSink() = default;
  // Returns where the bytes of `page` of `region` go: `region` page-size bytes, writable until
  // the matching Arrived(). `index` is the page's position in its frame. Never null.
  virtual uint8_t* Land(Channel ch, uint32_t region, uint64_t page, uint32_t index) = 0;
  // Where the pages of `region` land whenever Land() claims them, if that is always
  // base + page * page_size (an alias mapping of the guest's memory); null when the landing
  // moves (staging buffers). A transport may register that memory with a NIC and write pages
  // straight into it — only after Land() has claimed them.
  virtual uint8_t* DirectBase(uint32_t region) { return nullptr; }
  virtual void Arrived(Channel ch, uint32_t region, uint64_t page, uint32_t index,
                       Arrival what) = 0;
  // Every page of a frame has Arrived(): a batch boundary (bulk placement and wake-ups).
  virtual void FrameDone(Channel ch, uint32_t region, uint64_t first, uint32_t count) = 0;
  // A frame broke off before all its pages arrived (stream error, or Stop()): every page the
  // sink claimed for it and has not placed must be handed back. Always called for such a
  // frame, even during Stop().
  virtual void FrameAborted(Channel ch) = 0;
  // The transport can deliver nothing more (peer gone, protocol error). Called at most once
  // per channel, never after PageSource::Stop().
  virtual void Failed(Channel ch, const absl::Status& why) = 0;
};

class PageSource {
 public:
  virtual ~PageSource() = default;
  // The source's region table, as announced in its WELCOME.
  virtual const std::vector<RegionInfo>& regions() const = 0;
  // Starts delivering to `sink` (receive threads run until Stop()).
  virtual absl::Status Start(PageSink* sink) = 0;
  // Thread-safe. Asks for one page ahead of any bulk traffic.
  virtual absl::Status RequestUrgent(uint32_t region, uint64_t page) = 0;
  // Thread-safe. Asks for a run of pages on the bulk channel.
  virtual absl::Status RequestBulk(uint32_t region, uint64_t first, uint32_t count) = 0;
  // Tells the source every page is present (it may stop serving).
  virtual absl::Status Finish() = 0;
  // Closes both channels and joins the receive threads. Idempotent.
  virtual void Stop() = 0;
  // After a channel failed: closes what is left, joins the receive threads (frames cut short
  // get FrameAborted), then connects again — retrying with backoff until `deadline` — and
  // resumes delivering to the same sink. Requests in flight are lost: the caller re-sends.
  virtual absl::Status Reconnect(absl::Time deadline) {
    return absl::UnimplementedError("this transport cannot reconnect");
  }
};

}  // namespace faultline

#endif  // FAULTLINE_TRANSPORT_PAGE_SOURCE_H_
