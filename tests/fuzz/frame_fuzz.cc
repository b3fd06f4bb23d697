// libFuzzer target: arbitrary bytes through the frame parser, every protocol body decoder, the TCP transport's
// handshake decoders, its zero-copy frame reader and its one-sided (RMA) frames, decoded and served on a small
// region, and the per-frame seal of an authenticated link (transport/link_seal.h): no input opens under a key it was
// not sealed with, and what is sealed opens once, unchanged, and never after one byte changed. Nothing may crash,
// hang or read or write out of bounds; ASan and UBSan check that.
#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "common/frame.h"
#include "dsm/coherence.h"
#include "ipc/protocol.h"
#include "transport/conn.h"
#include "transport/link_seal.h"
#include "transport/tcp/tcp_wire.h"

namespace {
template <typename T>
void body(dipc::ByteView b) {
  T v;
  if (dipc::ipc::decode_body(b, v)) {
    dipc::Bytes again = dipc::ipc::encode_body(v);  // what decodes must encode again
    T w;
    if (!dipc::ipc::decode_body(again, w)) __builtin_trap();
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dipc::FrameParser p;
  // Feed in two pieces to exercise partial frames.
  size_t half = size / 2;
  p.feed(data, half);
  dipc::FrameParser::Frame f;
  while (p.next(f)) {
  }
  p.feed(data + half, size - half);
  while (p.next(f)) {
  }
  dipc::ByteView b(data, size);
  using namespace dipc::ipc;
  body<HelloReq>(b);
  body<HelloResp>(b);
  body<GetReq>(b);
  body<IdResp>(b);
  body<SemOpReq>(b);
  body<SemCtlReq>(b);
  body<SemCtlResp>(b);
  body<MsgSndReq>(b);
  body<MsgRcvReq>(b);
  body<MsgRcvResp>(b);
  body<MsgCtlReq>(b);
  body<MsgCtlResp>(b);
  body<AdminEnableReq>(b);
  body<AdminStatusResp>(b);
  body<HomeHeader>(b);
  body<KeyReq>(b);
  body<KeyResp>(b);
  body<OpenReq>(b);
  body<ProcExitMsg>(b);
  body<HomeCancelMsg>(b);
  body<ShmAtReq>(b);
  body<ShmAtResp>(b);
  body<ShmAttachReq>(b);
  body<ShmCtlReq>(b);
  body<ShmCtlResp>(b);
  body<ShmDestroyMsg>(b);
  body<ObjListResp>(b);
  // A coherence message between daemons (dsm/): strict, fixed size.
  dipc::Decoder d(b);
  dipc::dsm::Msg m;
  if (m.decode(d)) {
    dipc::Encoder e;
    m.encode(e);
    dipc::Bytes again = e.take();
    dipc::Decoder d2(again);
    dipc::dsm::Msg m2;
    if (!m2.decode(d2) || again.size() != dipc::dsm::Msg::kEncodedSize) __builtin_trap();
  }
  // The handshake (transport/conn.h): the input as a sequence of hello messages (op, length, payload) fed to an
  // acceptor and to a dialer; whatever they answer, nothing but well-formed, authenticated peers may finish it.
  namespace tcp = dipc::transport::tcp;
  namespace conn = dipc::transport::conn;
  static const dipc::ClusterKey key = dipc::ClusterKey::from_secret(dipc::ByteView(
      reinterpret_cast<const uint8_t*>("fuzzing secret, 32 bytes long.."), 31));
  for (auto role : {conn::Handshake::Role::kAcceptor, conn::Handshake::Role::kDialer}) {
    conn::Handshake hs(key, 2, role, 1, [](conn::NodeId n) { return n >= 1 && n <= 3 && n != 2; },
                       dipc::LinkSecurity::kMac);
    if (role == conn::Handshake::Role::kDialer) (void)hs.start();
    for (size_t off = 0; off + 2 <= size;) {
      uint16_t op = data[off] % 6;
      size_t len = std::min<size_t>(data[off + 1] % 140, size - off - 2);
      std::vector<conn::HelloMsg> out;
      auto r = hs.on_message(op, dipc::ByteView(data + off + 2, len), out);
      off += 2 + len;
      if (r == conn::Handshake::Result::kDone) __builtin_trap();  // random bytes never carry a valid MAC
      if (r == conn::Handshake::Result::kFailed) break;
    }
  }
  // ... the frame reader, as a link receives bytes in pieces ...
  tcp::FrameReader reader;
  for (size_t off = 0; off < size;) {
    size_t n = std::min<size_t>(size - off, 1 + (data[off] % 97));
    std::span<uint8_t> sp = reader.space(n);
    std::memcpy(sp.data(), data + off, n);
    reader.commit(n);
    off += n;
    dipc::FrameHeader h;
    dipc::ByteView payload;
    while (reader.next(conn::kMaxHelloPayload + 4096, h, payload) == tcp::FrameReader::Next::kFrame) {
      // ... each frame opened as an authenticated link would (the tag after the payload): never accepted ...
      if (payload.size() < dipc::transport::kSealTagSize) continue;
      uint8_t hdr[dipc::kFrameHeaderSize];
      dipc::encode_frame_header(h, hdr);
      size_t n = payload.size() - dipc::transport::kSealTagSize;
      for (auto mode : {dipc::LinkSecurity::kMac, dipc::LinkSecurity::kEncrypt}) {
        dipc::Bytes copy(payload.begin(), payload.begin() + static_cast<ptrdiff_t>(n));
        dipc::transport::FrameSeal rx(mode, dipc::SessionKey{});
        if (rx.open(hdr, copy, payload.data() + n)) __builtin_trap();  // a forged tag
      }
    }
  }
  // ... a frame sealed from the input: opens once and unchanged, and not after any one byte is flipped.
  if (size >= 2) {
    for (auto mode : {dipc::LinkSecurity::kMac, dipc::LinkSecurity::kEncrypt}) {
      dipc::SessionKey k{};
      k[0] = data[0];
      dipc::transport::FrameSeal tx(mode, k), rx(mode, k), rx2(mode, k);
      dipc::ByteView parts[2] = {b.subspan(0, size / 3), b.subspan(size / 3)};
      uint8_t hdr[dipc::kFrameHeaderSize];
      dipc::encode_frame_header(
          dipc::FrameHeader{dipc::FrameKind::kRequest, 1, 1, 0,
                            static_cast<uint32_t>(size + dipc::transport::kSealTagSize)},
          hdr);
      dipc::Bytes cipher;
      uint8_t tag[dipc::transport::kSealTagSize];
      tx.seal(hdr, parts, &cipher, tag);
      dipc::Bytes wire = mode == dipc::LinkSecurity::kEncrypt ? cipher : dipc::Bytes(data, data + size);
      dipc::Bytes ok = wire;
      if (!rx.open(hdr, ok, tag) || ok != dipc::Bytes(data, data + size)) __builtin_trap();
      if (rx.open(hdr, wire, tag)) __builtin_trap();  // replayed
      size_t at = data[1] % (size + dipc::kFrameHeaderSize + dipc::transport::kSealTagSize);
      if (at < dipc::kFrameHeaderSize)
        hdr[at] ^= 1;
      else if (at < dipc::kFrameHeaderSize + size)
        wire[at - dipc::kFrameHeaderSize] ^= 1;
      else
        tag[at - dipc::kFrameHeaderSize - size] ^= 1;
      if (rx2.open(hdr, wire, tag)) __builtin_trap();  // altered
    }
  }
  // ... and one-sided frames served on a 4 KiB region: every op must stay inside it.
  alignas(8) static uint8_t region[4096];
  tcp::LocalRegion reg{region, sizeof region};
  for (uint16_t op = 0; op <= 5; ++op) {
    tcp::RmaReq r;
    if (!tcp::decode_rma(op, b, r)) continue;
    dipc::ByteView out;
    uint64_t old = 0;
    if (tcp::serve_rma(r, &reg, out, old) == 0 && !out.empty() &&
        (out.data() < region || out.data() + out.size() > region + sizeof region))
      __builtin_trap();
  }
  return 0;
}
