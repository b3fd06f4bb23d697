// Versioned, length-prefixed frames: the unit on every stream (node<->node and client<->daemon).
//
//   offset size field
//   0      4    magic 'DIPC' (0x44495043)
//   4      1    version (kFrameVersion)
//   5      1    kind    (FrameKind)
//   6      2    op      (meaning depends on kind: protocol operation or RMA opcode)
//   8      8    id      (request id, echoed by the response; 0 for one-way)
//   16     4    status  (errno of a response, 0 otherwise)
//   20     4    length  (payload bytes that follow, <= kMaxPayload)
//
// All fields big-endian. A frame with a bad magic, unknown version or kind, or an oversized length is a protocol
// error: the receiver closes that one connection and logs why.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/status.h"
#include "common/wire.h"

namespace dipc {

inline constexpr uint32_t kFrameMagic = 0x44495043;
// 2: dsm's kOpPush (a pushed run as one message over tcp): a node of an older build would drop it and leave the
// reader waiting, so the link refuses it at its first frame instead ("unsupported frame version").
// 3: dsm's write-ahead and batched invalidations (a WriteReq, Invalidate or InvAck of count > 1): an older home
// would leave a write-ahead window unanswered, an older node would unmap one block of an Invalidate's run, and the
// writer would wait for good either way.
inline constexpr uint8_t kFrameVersion = 3;
inline constexpr size_t kFrameHeaderSize = 24;
// Large enough for one coherence block of up to 4 MiB plus headers; message queue bodies are far smaller.
inline constexpr uint32_t kMaxPayload = (4u << 20) + 4096;

enum class FrameKind : uint8_t {
  kHello = 1,     // authentication handshake (transport-internal)
  kRequest = 2,   // expects exactly one kResponse with the same id
  kResponse = 3,  // answers a kRequest
  kOneWay = 4,    // no answer
  kRma = 5,       // one-sided operation served by the peer's progress engine (transport-internal)
  kRmaReply = 6,  // completion of a kRma (transport-internal)
};

struct FrameHeader {
  FrameKind kind = FrameKind::kOneWay;
  uint16_t op = 0;
  uint64_t id = 0;
  int32_t status = 0;
  uint32_t length = 0;
};

void encode_frame_header(const FrameHeader& h, uint8_t out[kFrameHeaderSize]);
// Appends header and payload to `out`.
void append_frame(Bytes& out, const FrameHeader& h, ByteView payload);

// Decodes a header; returns an error string on a protocol violation.
std::optional<std::string> decode_frame_header(const uint8_t in[kFrameHeaderSize], FrameHeader& h);

// Incremental frame parser for a byte stream. Feed bytes; pull complete frames.
class FrameParser {
 public:
  struct Frame {
    FrameHeader header;
    Bytes payload;
  };
  void feed(const uint8_t* data, size_t n) { buf_.insert(buf_.end(), data, data + n); }
  // Returns true and fills `f` when a complete frame is available. On a protocol error returns false and sets
  // error(); the connection must then be closed.
  bool next(Frame& f);
  const std::string& error() const { return error_; }
  bool failed() const { return !error_.empty(); }
  // Bytes received and not yet returned as a frame (a frame still arriving): what the peer makes us hold.
  size_t buffered() const { return buf_.size() - pos_; }

 private:
  Bytes buf_;
  size_t pos_ = 0;
  std::string error_;
};

}  // namespace dipc
