#include "common/frame.h"

#include <cstring>

namespace dipc {

void encode_frame_header(const FrameHeader& h, uint8_t out[kFrameHeaderSize]) {
  Bytes b;
  b.reserve(kFrameHeaderSize);
  Encoder e(b);
  e.u32(kFrameMagic);
  e.u8(kFrameVersion);
  e.u8(static_cast<uint8_t>(h.kind));
  e.u16(h.op);
  e.u64(h.id);
  e.i32(h.status);
  e.u32(h.length);
  std::memcpy(out, b.data(), kFrameHeaderSize);
}

void append_frame(Bytes& out, const FrameHeader& h, ByteView payload) {
  FrameHeader hh = h;
  hh.length = static_cast<uint32_t>(payload.size());
  uint8_t hdr[kFrameHeaderSize];
  encode_frame_header(hh, hdr);
  out.insert(out.end(), hdr, hdr + kFrameHeaderSize);
  out.insert(out.end(), payload.begin(), payload.end());
}

std::optional<std::string> decode_frame_header(const uint8_t in[kFrameHeaderSize], FrameHeader& h) {
  Decoder d(ByteView(in, kFrameHeaderSize));
  if (d.u32() != kFrameMagic) return "bad frame magic";
  uint8_t version = d.u8();
  if (version != kFrameVersion) return "unsupported frame version " + std::to_string(version);
  uint8_t kind = d.u8();
  if (kind < static_cast<uint8_t>(FrameKind::kHello) || kind > static_cast<uint8_t>(FrameKind::kRmaReply))
    return "unknown frame kind " + std::to_string(kind);
  h.kind = static_cast<FrameKind>(kind);
  h.op = d.u16();
  h.id = d.u64();
  h.status = d.i32();
  h.length = d.u32();
  if (h.length > kMaxPayload) return "oversized frame (" + std::to_string(h.length) + " bytes)";
  if (h.status < 0 || h.status > 4095) return "bad frame status";
  return std::nullopt;
}

bool FrameParser::next(Frame& f) {
  if (failed()) return false;
  if (buf_.size() - pos_ < kFrameHeaderSize) return false;
  FrameHeader h;
  if (auto err = decode_frame_header(buf_.data() + pos_, h)) {
    error_ = *err;
    return false;
  }
  if (buf_.size() - pos_ < kFrameHeaderSize + h.length) return false;
  f.header = h;
  const uint8_t* p = buf_.data() + pos_ + kFrameHeaderSize;
  f.payload.assign(p, p + h.length);
  pos_ += kFrameHeaderSize + h.length;
  if (pos_ == buf_.size()) {
    buf_.clear();
    if (buf_.capacity() > (1u << 20)) Bytes().swap(buf_);  // a big frame's buffer is not kept for the next one
    pos_ = 0;
  } else if (pos_ > (64u << 10)) {
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(pos_));
    pos_ = 0;
  }
  return true;
}

}  // namespace dipc
