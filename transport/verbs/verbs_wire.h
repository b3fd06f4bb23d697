// Wire formats private to the verbs transport, header-only so unit tests and fuzzers link nothing else.
//
// Connection set-up and authentication (the same mutual challenge-response as tcp, common/auth.h):
//   dialer   -> acceptor  rdma_connect private data  ConnHello  {magic, version, u16 node, nonce_c}
//   acceptor -> dialer    rdma_accept private data   AcceptHello{magic, version, u16 node, nonce_s,
//                                                                prove('S', nonce_s, nonce_c, acceptor, dialer)}
//   dialer   -> acceptor  first SEND  kProof {prove('C', nonce_c, nonce_s, dialer, acceptor)}
//   acceptor -> dialer    first SEND  kHelloOk {}
// The acceptor's queue pair has no remote access rights (qp_access_flags 0) until the proof checks out, and no rkey
// is ever sent before: a peer that fails authentication can neither name nor touch registered memory.
//
// Every SEND starts with a MsgHeader (big-endian). A message longer than one receive buffer travels as a first
// fragment (header.length = whole body) followed by kCont fragments, back to back on the queue pair (RC keeps them
// in order). `credits` returns receive buffers the sender of the header has re-posted (see verbs_transport.cc).
#pragma once

#include <array>
#include <cstdint>
#include <cstring>

#include "common/auth.h"
#include "common/wire.h"

namespace dipc::transport::verbs {

inline constexpr uint32_t kConnMagic = 0x44495652;  // 'DIVR'
inline constexpr uint8_t kConnVersion = 1;

struct ConnHello {
  uint16_t node = 0;
  Nonce nonce{};
};
struct AcceptHello {
  uint16_t node = 0;
  Nonce nonce{};
  Mac mac{};
};

namespace detail {
template <size_t N>
inline void get(Decoder& d, std::array<uint8_t, N>& a) {
  ByteView v = d.raw(N);
  if (d.ok()) std::memcpy(a.data(), v.data(), N);
}
inline bool get_magic(Decoder& d) { return d.u32() == kConnMagic && d.u8() == kConnVersion && d.ok(); }
}  // namespace detail

inline Bytes encode(const ConnHello& m) {
  Encoder e;
  e.u32(kConnMagic);
  e.u8(kConnVersion);
  e.u16(m.node);
  e.raw(m.nonce);
  return e.take();
}
inline Bytes encode(const AcceptHello& m) {
  Encoder e;
  e.u32(kConnMagic);
  e.u8(kConnVersion);
  e.u16(m.node);
  e.raw(m.nonce);
  e.raw(m.mac);
  return e.take();
}
// rdma_cm pads private data (to 56 bytes for a connect request, 196 for an accept): trailing bytes are ignored.
inline bool decode(ByteView b, ConnHello& m) {
  Decoder d(b);
  if (!detail::get_magic(d)) return false;
  m.node = d.u16();
  detail::get(d, m.nonce);
  return d.ok();
}
inline bool decode(ByteView b, AcceptHello& m) {
  Decoder d(b);
  if (!detail::get_magic(d)) return false;
  m.node = d.u16();
  detail::get(d, m.nonce);
  detail::get(d, m.mac);
  return d.ok();
}

enum class MsgKind : uint8_t {
  kCredit = 0,    // only returns credits (uses one of the kSpareRecvs receive buffers, never a credit)
  kRequest = 1,   // expects one kResponse with the same id
  kResponse = 2,  // status + body
  kOneWay = 3,
  kProof = 4,     // authentication (see above)
  kHelloOk = 5,
  kCont = 6,      // continuation fragment of the message before it
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
