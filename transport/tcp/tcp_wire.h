// Wire formats private to the TCP transport, header-only so the fuzzer (tests/fuzz/frame_fuzz.cc) links nothing else:
// handshake and one-sided operation payloads, the zero-copy frame reassembly of a connection, and the bounds-checked
// execution of a one-sided operation on a registered region. All decoders are strict (whole payload, exact sizes).
#pragma once

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>

#include "common/auth.h"
#include "common/frame.h"
#include "common/wire.h"

namespace dipc::transport::tcp {

// ---- handshake: FrameKind::kHello frames carry transport/conn.h's Handshake messages (op, payload) -------------
// Before the handshake completes a connection accepts nothing but these, each at most conn::kMaxHelloPayload bytes.

// ---- one-sided operations: FrameKind::kRma, op = RmaOp; answered by kRmaReply with the same op and id -----------
//   kRmaRead        {u64 region, u64 offset, u32 length}             reply: the `length` bytes
//   kRmaWrite       {u64 region, u64 offset} + data (rest of payload) reply: {}
//   kRmaFetchAdd    {u64 region, u64 offset, u64 add}                reply: {u64 old}
//   kRmaCompareSwap {u64 region, u64 offset, u64 expected, u64 desired} reply: {u64 old}
// `region` is the packed remote key: the owner's incarnation (random per transport instance, high 32 bits) and
// region id (low 32 bits), so a key from before a restart never names a region registered after it.
// Reply status 0, or EINVAL: unknown region, out of bounds, misaligned atomic, read longer than kRmaChunk.
// Reads and writes longer than kRmaChunk travel as several operations (the caller sees one completion).
enum RmaOp : uint16_t { kRmaRead = 1, kRmaWrite = 2, kRmaFetchAdd = 3, kRmaCompareSwap = 4 };
inline constexpr uint32_t kRmaChunk = 1u << 20;

struct RmaReq {
  uint16_t op = 0;
  uint64_t region = 0;
  uint64_t offset = 0;
  uint64_t a = 0;  // read: length; fetch_add: addend; compare_swap: expected
  uint64_t b = 0;  // compare_swap: desired
  ByteView data;   // write: the bytes to store
};

// The fixed fields of a kRma payload (a write's data follows them).
inline void encode_rma_fields(Encoder& e, const RmaReq& r) {
  e.u64(r.region);
  e.u64(r.offset);
  if (r.op == kRmaRead) e.u32(static_cast<uint32_t>(r.a));
  if (r.op == kRmaFetchAdd || r.op == kRmaCompareSwap) e.u64(r.a);
  if (r.op == kRmaCompareSwap) e.u64(r.b);
}

inline bool decode_rma(uint16_t op, ByteView b, RmaReq& r) {
  Decoder d(b);
  r = RmaReq{};
  r.op = op;
  r.region = d.u64();
  r.offset = d.u64();
  switch (op) {
    case kRmaRead:
      r.a = d.u32();
      break;
    case kRmaWrite:
      r.data = d.raw(d.remaining());
      break;
    case kRmaFetchAdd:
      r.a = d.u64();
      break;
    case kRmaCompareSwap:
      r.a = d.u64();
      r.b = d.u64();
      break;
    default:
      return false;
  }
  return d.done();
}

inline bool decode_atomic_reply(ByteView b, uint64_t& old) {
  Decoder d(b);
  old = d.u64();
  return d.done();
}

struct LocalRegion {
  uint8_t* base = nullptr;
  uint64_t length = 0;
};

// Carries out `r` on `reg` (nullptr: no such region) and returns 0 or EINVAL. A read leaves the bytes in `out` (a
// view of the region), an atomic the previous value in `old`. Atomics use __atomic builtins on the aligned word, so
// they are atomic with respect to local CPU access to the region too.
inline int serve_rma(const RmaReq& r, const LocalRegion* reg, ByteView& out, uint64_t& old) {
  if (!reg) return EINVAL;
  uint64_t len = r.op == kRmaRead ? r.a : r.op == kRmaWrite ? r.data.size() : sizeof(uint64_t);
  if (r.offset > reg->length || len > reg->length - r.offset) return EINVAL;
  uint8_t* p = reg->base + r.offset;
  switch (r.op) {
    case kRmaRead:
      if (len > kRmaChunk) return EINVAL;
      out = ByteView(p, len);
      return 0;
    case kRmaWrite:
      if (len) std::memcpy(p, r.data.data(), len);
      return 0;
    case kRmaFetchAdd:
    case kRmaCompareSwap: {
      if (reinterpret_cast<uintptr_t>(p) % alignof(uint64_t)) return EINVAL;
      auto* w = reinterpret_cast<uint64_t*>(p);
      if (r.op == kRmaFetchAdd) {
        old = __atomic_fetch_add(w, r.a, __ATOMIC_SEQ_CST);
      } else {
        old = r.a;
        __atomic_compare_exchange_n(w, &old, r.b, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
      }
      return 0;
    }
    default:
      return EINVAL;
  }
}

// ---- zero-copy frame reassembly ---------------------------------------------------------------------------------
// recv() straight into space(), commit() what arrived, then pull frames with next(): the payload views point into the
// buffer and stay valid until the next space() call. Memory is bounded by one frame of `max_len` plus one read.
class FrameReader {
 public:
  enum class Next { kFrame, kMore, kError };

  std::span<uint8_t> space(size_t want) {
    if (rd_ == wr_) rd_ = wr_ = 0;
    if (buf_.size() - wr_ < want && rd_) {
      std::memmove(buf_.data(), buf_.data() + rd_, wr_ - rd_);
      wr_ -= rd_;
      rd_ = 0;
    }
    if (buf_.size() - wr_ < want) buf_.resize(wr_ + want);
    return {buf_.data() + wr_, buf_.size() - wr_};
  }
  void commit(size_t n) { wr_ += n; }

  // Frames whose payload exceeds `max_len` (a smaller bound before authentication) are protocol errors, detected
  // as soon as the header arrives. After an error the reader stays failed.
  Next next(uint32_t max_len, FrameHeader& h, ByteView& payload) {
    if (!error_.empty()) return Next::kError;
    if (wr_ - rd_ < kFrameHeaderSize) return Next::kMore;
    if (auto err = decode_frame_header(buf_.data() + rd_, h)) {
      error_ = std::move(*err);
      return Next::kError;
    }
    if (h.length > max_len) {
      error_ = "oversized frame (" + std::to_string(h.length) + " bytes, at most " + std::to_string(max_len) + ")";
      return Next::kError;
    }
    if (wr_ - rd_ - kFrameHeaderSize < h.length) return Next::kMore;
    payload = ByteView(buf_.data() + rd_ + kFrameHeaderSize, h.length);
    rd_ += kFrameHeaderSize + h.length;
    return Next::kFrame;
  }

  // Bytes still missing to complete the frame being received (valid after next() answered kMore).
  size_t missing() const {
    size_t have = wr_ - rd_;
    if (have < kFrameHeaderSize) return kFrameHeaderSize - have;
    const uint8_t* l = buf_.data() + rd_ + 20;  // the length field
    size_t len = (size_t{l[0]} << 24) | (size_t{l[1]} << 16) | (size_t{l[2]} << 8) | l[3];
    return kFrameHeaderSize + len > have ? kFrameHeaderSize + len - have : 0;
  }
  // Releases a large buffer once it is empty (after a big frame).
  void trim(size_t keep) {
    if (rd_ == wr_ && buf_.size() > keep) {
      Bytes().swap(buf_);
      rd_ = wr_ = 0;
    }
  }
  size_t buffered() const { return wr_ - rd_; }
  const std::string& error() const { return error_; }

 private:
  Bytes buf_;
  size_t rd_ = 0;
  size_t wr_ = 0;
  std::string error_;
};

}  // namespace dipc::transport::tcp
