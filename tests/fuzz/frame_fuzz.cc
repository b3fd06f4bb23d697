// libFuzzer target: arbitrary bytes through the frame parser and every protocol body decoder. Nothing may crash,
// hang or read out of bounds; ASan and UBSan check that.
#include <cstddef>
#include <cstdint>

#include "common/frame.h"
#include "dsm/coherence.h"
#include "ipc/protocol.h"

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
  return 0;
}
