// Wire formats private to the verbs transport, header-only so unit tests and fuzzers link nothing else.
//
// Connection set-up and authentication: the challenge-response of transport/conn.h (conn::Handshake), carried as
//   client hello  in the rdma_connect private data, server hello in the rdma_accept private data (ConnData below),
//   client proof  and hello ok as the first SENDs (MsgKind::kHello, op = conn::HelloOp).
// The acceptor's queue pair has no remote access rights (qp_access_flags 0) until the proof checks out, and no rkey
// is ever sent before: a peer that fails authentication can neither name nor touch registered memory. ConnData also
// carries each side's incarnation (random per transport instance): remote keys name it, so a key from before a
// peer's restart is refused locally (EINVAL) instead of reaching the peer's new memory registrations.
//
// Every SEND starts with a MsgHeader (big-endian). A message longer than one receive buffer travels as a first
// fragment (header.length = whole body) followed by kCont fragments, back to back on the queue pair (RC keeps them
// in order). `credits` returns receive buffers the sender of the header has re-posted (see verbs_transport.cc).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/auth.h"
#include "common/wire.h"

namespace dipc::transport::verbs {

inline constexpr uint32_t kConnMagic = 0x44495652;  // 'DIVR'
inline constexpr uint8_t kConnVersion = 2;

// rdma_cm private data: {u32 magic, u8 version, u64 incarnation, u8 length, hello payload}. rdma_cm pads it (to 56
// bytes for a connect request, 196 for an accept): the length says where the payload ends.
inline Bytes encode_conn(uint64_t incarnation, ByteView hello) {
  Encoder e;
  e.u32(kConnMagic);
  e.u8(kConnVersion);
  e.u64(incarnation);
  e.u8(static_cast<uint8_t>(hello.size()));
  e.raw(hello);
  return e.take();
}
inline bool decode_conn(ByteView b, uint64_t& incarnation, ByteView& hello) {
  Decoder d(b);
  if (d.u32() != kConnMagic || d.u8() != kConnVersion) return false;
  incarnation = d.u64();
  uint8_t n = d.u8();
  hello = d.raw(n);
  return d.ok();
}

enum class MsgKind : uint8_t {
  kCredit = 0,    // only returns credits (uses one of the kSpareRecvs receive buffers, never a credit)
  kRequest = 1,   // expects one kResponse with the same id
  kResponse = 2,  // status + body
  kOneWay = 3,
  kHello = 4,     // authentication (see above): op = conn::HelloOp
  kCont = 5,      // continuation fragment of the message before it
};
inline constexpr MsgKind kMaxMsgKind = MsgKind::kCont;

inline constexpr size_t kMsgHeaderSize = 24;

//   0 u8 kind, 1 u8 reserved (0), 2 u16 op, 4 u16 credits, 6 u16 reserved (0), 8 u64 id, 16 i32 status,
//   20 u32 length (whole body for a first fragment, this fragment's bytes for kCont)
struct MsgHeader {
  MsgKind kind = MsgKind::kOneWay;
  uint16_t op = 0;
  uint16_t credits = 0;
  uint64_t id = 0;
  int32_t status = 0;
  uint32_t length = 0;
};

inline void encode_header(const MsgHeader& h, uint8_t* out) {
  Bytes b;
  Encoder e(b);
  e.u8(static_cast<uint8_t>(h.kind));
  e.u8(0);
  e.u16(h.op);
  e.u16(h.credits);
  e.u16(0);
  e.u64(h.id);
  e.u32(static_cast<uint32_t>(h.status));
  e.u32(h.length);
  std::memcpy(out, b.data(), kMsgHeaderSize);
}

// Strict: known kind, reserved bytes zero, a status in errno range only on a response.
inline bool decode_header(ByteView b, MsgHeader& h) {
  if (b.size() < kMsgHeaderSize) return false;
  Decoder d(b.first(kMsgHeaderSize));
  uint8_t kind = d.u8();
  uint8_t r1 = d.u8();
  h.op = d.u16();
  h.credits = d.u16();
  uint16_t r2 = d.u16();
  h.id = d.u64();
  h.status = static_cast<int32_t>(d.u32());
  h.length = d.u32();
  if (!d.ok() || r1 || r2 || kind > static_cast<uint8_t>(kMaxMsgKind)) return false;
  h.kind = static_cast<MsgKind>(kind);
  if (h.status != 0 && (h.kind != MsgKind::kResponse || h.status < 0 || h.status > 4095)) return false;
  return true;
}

}  // namespace dipc::transport::verbs
