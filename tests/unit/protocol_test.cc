// Unit tests of the wire protocol: every ipc/protocol.h body survives an encode/decode round trip field for field,
// and strict decoding rejects what a daemon must never act on (a truncated body, trailing bytes, a count or length
// beyond its bound or beyond the input, an out-of-range enum or boolean). Frame headers (common/frame.h) reject a bad
// magic, version, kind, status or length, and the stream parser never yields a frame before all of it arrived.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/frame.h"
#include "common/wire.h"
#include "ipc/protocol.h"

namespace dipc::ipc {
namespace {

// The strictness every body shares: the full encoding decodes, no strict prefix of it does, and one extra byte of
// any value after it is rejected.
template <typename T>
void expect_strict(const T& v, const char* what) {
  SCOPED_TRACE(what);
  Bytes b = encode_body(v);
  T out;
  ASSERT_TRUE(decode_body(ByteView(b), out)) << "the encoding of a valid body does not decode";
  for (size_t n = 0; n < b.size(); ++n) {
    T t;
    EXPECT_FALSE(decode_body(ByteView(b.data(), n), t)) << "a body truncated to " << n << " of " << b.size()
                                                         << " bytes was accepted";
  }
  for (uint8_t extra : {uint8_t{0}, uint8_t{0xff}}) {
    Bytes longer = b;
    longer.push_back(extra);
    T t;
    EXPECT_FALSE(decode_body(ByteView(longer), t)) << "a trailing byte was accepted";
  }
}

template <typename T>
T round_trip(const T& v) {
  Bytes b = encode_body(v);
  T out;
  EXPECT_TRUE(decode_body(ByteView(b), out));
  return out;
}

Perm sample_perm() {
  Perm p;
  p.key = -2;  // keys are signed; 0xfffffffe must survive
  p.uid = 65534;
  p.gid = 4000000000u;
  p.cuid = 1;
  p.cgid = 2;
  p.mode = 01600;
  p.seq = 0xfffe;
  return p;
}
void expect_perm_eq(const Perm& a, const Perm& b) {
  EXPECT_EQ(a.key, b.key);
  EXPECT_EQ(a.uid, b.uid);
  EXPECT_EQ(a.gid, b.gid);
  EXPECT_EQ(a.cuid, b.cuid);
  EXPECT_EQ(a.cgid, b.cgid);
  EXPECT_EQ(a.mode, b.mode);
  EXPECT_EQ(a.seq, b.seq);
}

TEST(Protocol, HelloAndGetAndIdRoundTrip) {
  HelloReq h;
  h.version = 0xdeadbeef;
  EXPECT_EQ(round_trip(h).version, 0xdeadbeefu);
  expect_strict(h, "HelloReq");

  HelloResp hr;
  hr.version = 7;
  hr.node = 255;
  auto hr2 = round_trip(hr);
  EXPECT_EQ(hr2.version, 7u);
  EXPECT_EQ(hr2.node, 255);
  expect_strict(hr, "HelloResp");

  GetReq g{-1, -5, 01001666};
  auto g2 = round_trip(g);
  EXPECT_EQ(g2.key, -1);
  EXPECT_EQ(g2.nsems, -5);
  EXPECT_EQ(g2.flg, 01001666);
  expect_strict(g, "GetReq");

  IdResp id{0x7fffffff};
  EXPECT_EQ(round_trip(id).id, 0x7fffffff);
  expect_strict(id, "IdResp");
}

TEST(Protocol, SemOpReqRoundTripsNegativeOpsAndFlags) {
  SemOpReq r;
  r.id = 12345;
  r.sops = {{0, -1, 0x1800}, {65535, 32767, 0}, {3, -32768, -1}};
  auto r2 = round_trip(r);
  EXPECT_EQ(r2.id, 12345);
  ASSERT_EQ(r2.sops.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(r2.sops[i].num, r.sops[i].num) << i;
    EXPECT_EQ(r2.sops[i].op, r.sops[i].op) << i;
    EXPECT_EQ(r2.sops[i].flg, r.sops[i].flg) << i;
  }
  expect_strict(r, "SemOpReq");
  SemOpReq empty;  // nsops 0 is a valid request (the home answers EINVAL)
  EXPECT_TRUE(round_trip(empty).sops.empty());
  expect_strict(empty, "SemOpReq empty");
}

TEST(Protocol, SemOpReqRejectsCountsBeyondTheInputOrTheBound) {
  // A count claiming more sops than the body holds: rejected before anything is allocated for them.
  Encoder e;
  e.i32(1);
  e.u32(1000);
  for (int i = 0; i < 10; ++i) {
    e.u16(0);
    e.u16(0);
    e.u16(0);
  }
  SemOpReq r;
  EXPECT_FALSE(decode_body(ByteView(e.buf()), r));

  // A count above kMaxSops, even with the bytes present.
  Encoder big;
  big.i32(1);
  big.u32(kMaxSops + 1);
  for (uint32_t i = 0; i < kMaxSops + 1; ++i) {
    big.u16(0);
    big.u16(0);
    big.u16(0);
  }
  EXPECT_FALSE(decode_body(ByteView(big.buf()), r));

  // Exactly kMaxSops is accepted.
  SemOpReq max;
  max.sops.resize(kMaxSops);
  EXPECT_EQ(round_trip(max).sops.size(), kMaxSops);
}

TEST(Protocol, SemCtlRequestAndResponseRoundTrip) {
  SemCtlReq q;
  q.id = 9;
  q.semnum = -1;
  q.cmd = 17;  // SETALL
  q.val = -32768;
  q.vals = {0, 1, 32767, 65535};
  q.uid = 1000;
  q.gid = 1001;
  q.mode = 0644;
  auto q2 = round_trip(q);
  EXPECT_EQ(q2.id, 9);
  EXPECT_EQ(q2.semnum, -1);
  EXPECT_EQ(q2.cmd, 17);
  EXPECT_EQ(q2.val, -32768);
  EXPECT_EQ(q2.vals, q.vals);
  EXPECT_EQ(q2.uid, 1000u);
  EXPECT_EQ(q2.gid, 1001u);
  EXPECT_EQ(q2.mode, 0644);
  expect_strict(q, "SemCtlReq");

  SemCtlResp r;
  r.ret = -7;
  r.vals = {5, 6};
  r.stat.perm = sample_perm();
  r.stat.otime = -1;
  r.stat.ctime = 1700000000;
  r.stat.nsems = 2;
  auto r2 = round_trip(r);
  EXPECT_EQ(r2.ret, -7);
  EXPECT_EQ(r2.vals, r.vals);
  expect_perm_eq(r2.stat.perm, r.stat.perm);
  EXPECT_EQ(r2.stat.otime, -1);
  EXPECT_EQ(r2.stat.ctime, 1700000000);
  EXPECT_EQ(r2.stat.nsems, 2u);
  expect_strict(r, "SemCtlResp");
}

TEST(Protocol, SemCtlRejectsAValueArrayAboveKMaxSems) {
  Encoder e;
  e.i32(1);
  e.i32(0);
  e.i32(17);
  e.i32(0);
  e.u32(kMaxSems + 1);
  for (uint32_t i = 0; i < kMaxSems + 1; ++i) e.u16(1);
  e.u32(0);
  e.u32(0);
  e.u16(0);
  SemCtlReq q;
  EXPECT_FALSE(decode_body(ByteView(e.buf()), q));
}

TEST(Protocol, MessageBodiesRoundTripBinaryText) {
  MsgSndReq s;
  s.id = 3;
  s.mtype = 0x7fffffffffffffffLL;
  s.text = {0, 1, 0xff, 0, '\n'};  // message text is opaque bytes: NULs and all
  s.flg = 04000;
  auto s2 = round_trip(s);
  EXPECT_EQ(s2.id, 3);
  EXPECT_EQ(s2.mtype, s.mtype);
  EXPECT_EQ(s2.text, s.text);
  EXPECT_EQ(s2.flg, 04000);
  expect_strict(s, "MsgSndReq");
  MsgSndReq empty_text;
  empty_text.mtype = 1;
  EXPECT_TRUE(round_trip(empty_text).text.empty());
  expect_strict(empty_text, "MsgSndReq empty text");

  MsgRcvReq r;
  r.id = 4;
  r.maxsize = ~0ull;
  r.msgtyp = -3;
  r.flg = 020000 | 010000;
  auto r2 = round_trip(r);
  EXPECT_EQ(r2.id, 4);
  EXPECT_EQ(r2.maxsize, ~0ull);
  EXPECT_EQ(r2.msgtyp, -3);
  EXPECT_EQ(r2.flg, 030000);
  expect_strict(r, "MsgRcvReq");

  MsgRcvResp rr;
  rr.mtype = 42;
  rr.text = Bytes(8192, 0xab);
  auto rr2 = round_trip(rr);
  EXPECT_EQ(rr2.mtype, 42);
  EXPECT_EQ(rr2.text, rr.text);
  expect_strict(rr, "MsgRcvResp");
}

TEST(Protocol, MessageTextLongerThanTheBoundOrTheInputIsRejected) {
  // Length above kMaxMsgText with the bytes present.
  Encoder e;
  e.i32(1);
  e.i64(1);
  e.u32(kMaxMsgText + 1);
  e.raw(Bytes(kMaxMsgText + 1, 'x'));
  e.i32(0);
  MsgSndReq s;
  EXPECT_FALSE(decode_body(ByteView(e.buf()), s));
  // Length claiming more than the input holds.
  Encoder e2;
  e2.i64(1);
  e2.u32(100);
  e2.raw(Bytes(10, 'x'));
  MsgRcvResp r;
  EXPECT_FALSE(decode_body(ByteView(e2.buf()), r));
  // Exactly kMaxMsgText is accepted.
  MsgSndReq max;
  max.text = Bytes(kMaxMsgText, 'y');
  EXPECT_EQ(round_trip(max).text.size(), kMaxMsgText);
}

TEST(Protocol, MsgCtlRoundTrip) {
  MsgCtlReq q;
  q.id = 77;
  q.cmd = 1;  // IPC_SET
  q.uid = 2;
  q.gid = 3;
  q.mode = 0600;
  q.qbytes = 1ull << 40;
  auto q2 = round_trip(q);
  EXPECT_EQ(q2.id, 77);
  EXPECT_EQ(q2.cmd, 1);
  EXPECT_EQ(q2.uid, 2u);
  EXPECT_EQ(q2.gid, 3u);
  EXPECT_EQ(q2.mode, 0600);
  EXPECT_EQ(q2.qbytes, 1ull << 40);
  expect_strict(q, "MsgCtlReq");

  MsgCtlResp r;
  r.stat.perm = sample_perm();
  r.stat.stime = 1;
  r.stat.rtime = 2;
  r.stat.ctime = 3;
  r.stat.cbytes = 4;
  r.stat.qnum = 5;
  r.stat.qbytes = 6;
  r.stat.lspid = -7;
  r.stat.lrpid = 8;
  auto r2 = round_trip(r);
  expect_perm_eq(r2.stat.perm, r.stat.perm);
  EXPECT_EQ(r2.stat.stime, 1);
  EXPECT_EQ(r2.stat.rtime, 2);
  EXPECT_EQ(r2.stat.ctime, 3);
  EXPECT_EQ(r2.stat.cbytes, 4u);
  EXPECT_EQ(r2.stat.qnum, 5u);
  EXPECT_EQ(r2.stat.qbytes, 6u);
  EXPECT_EQ(r2.stat.lspid, -7);
  EXPECT_EQ(r2.stat.lrpid, 8);
  expect_strict(r, "MsgCtlResp");
}

TEST(Protocol, AdminBodiesRoundTripAndRejectNonBooleanFlags) {
  AdminEnableReq off;
  off.enabled = false;
  EXPECT_FALSE(round_trip(off).enabled);
  AdminEnableReq on;
  EXPECT_TRUE(round_trip(on).enabled);
  expect_strict(on, "AdminEnableReq");
  for (uint8_t bad : {uint8_t{2}, uint8_t{0xff}}) {
    Bytes b{bad};
    AdminEnableReq t;
    EXPECT_FALSE(decode_body(ByteView(b), t)) << int(bad);
  }

  AdminStatusResp s;
  s.text = "node node1 (id 1)\npeers:\n";
  s.peers_total = 2;
  s.peers_up = 1;
  s.enabled = false;
  auto s2 = round_trip(s);
  EXPECT_EQ(s2.text, s.text);
  EXPECT_EQ(s2.peers_total, 2u);
  EXPECT_EQ(s2.peers_up, 1u);
  EXPECT_FALSE(s2.enabled);
  expect_strict(s, "AdminStatusResp");
  Bytes b = encode_body(s);
  b.back() = 2;  // the trailing boolean
  AdminStatusResp t;
  EXPECT_FALSE(decode_body(ByteView(b), t));
}

TEST(Protocol, HomeHeaderCarriesCredentialsAndRejectsUnknownCapabilityBits) {
  HomeHeader h;
  h.creds.uid = 65534;
  h.creds.gid = 65533;
  h.creds.groups = {10, 20, 4000000000u};
  h.creds.pid = 4194304;
  h.creds.node = 255;
  h.creds.cap_ipc_owner = true;
  h.creds.cap_sys_admin = false;
  h.creds.cap_sys_resource = true;
  h.token = (255ull << 48) | 12345;
  auto h2 = round_trip(h);
  EXPECT_EQ(h2.creds.uid, 65534u);
  EXPECT_EQ(h2.creds.gid, 65533u);
  EXPECT_EQ(h2.creds.groups, h.creds.groups);
  EXPECT_EQ(h2.creds.pid, 4194304);
  EXPECT_EQ(h2.creds.node, 255);
  EXPECT_TRUE(h2.creds.cap_ipc_owner);
  EXPECT_FALSE(h2.creds.cap_sys_admin);
  EXPECT_TRUE(h2.creds.cap_sys_resource);
  EXPECT_EQ(h2.token, h.token);
  expect_strict(h, "HomeHeader");

  // Each capability alone maps to its own flag (no bit is swapped with another).
  for (int cap = 0; cap < 4; ++cap) {
    HomeHeader one;
    one.creds.cap_ipc_owner = cap == 0;
    one.creds.cap_sys_admin = cap == 1;
    one.creds.cap_sys_resource = cap == 2;
    one.creds.cap_ipc_lock = cap == 3;
    auto o = round_trip(one);
    EXPECT_EQ(o.creds.cap_ipc_owner, cap == 0);
    EXPECT_EQ(o.creds.cap_sys_admin, cap == 1);
    EXPECT_EQ(o.creds.cap_sys_resource, cap == 2);
    EXPECT_EQ(o.creds.cap_ipc_lock, cap == 3);
  }

  // The capability byte sits 9 bytes from the end (u8 caps, u64 token); bit 4 and up are not defined.
  Bytes b = encode_body(h);
  b[b.size() - 9] = 16;
  HomeHeader t;
  EXPECT_FALSE(decode_body(ByteView(b), t));
  // A group count the input cannot hold.
  Encoder e;
  e.u32(0);
  e.u32(0);
  e.u32(1000);
  e.u32(1);
  HomeHeader t2;
  EXPECT_FALSE(decode_body(ByteView(e.buf()), t2));
}

TEST(Protocol, KeyAndOpenBodiesRejectUnknownObjectTypesAndVerdicts) {
  KeyReq k;
  k.type = ObjType::kMsg;
  k.key = 0x5eed0001;
  k.flg = 01000 | 02000;
  k.id = -1;
  auto k2 = round_trip(k);
  EXPECT_EQ(k2.type, ObjType::kMsg);
  EXPECT_EQ(k2.key, 0x5eed0001);
  EXPECT_EQ(k2.flg, 03000);
  EXPECT_EQ(k2.id, -1);
  expect_strict(k, "KeyReq");
  for (uint8_t bad : {uint8_t{0}, uint8_t{4}, uint8_t{0xff}}) {
    Bytes b = encode_body(k);
    b[0] = bad;
    KeyReq t;
    EXPECT_FALSE(decode_body(ByteView(b), t)) << "object type " << int(bad);
  }

  for (auto v : {KeyVerdict::kFound, KeyVerdict::kCreate}) {
    KeyResp r{v, 99};
    auto r2 = round_trip(r);
    EXPECT_EQ(r2.verdict, v);
    EXPECT_EQ(r2.id, 99);
    expect_strict(r, "KeyResp");
  }
  for (uint8_t bad : {uint8_t{0}, uint8_t{3}}) {
    Bytes b = encode_body(KeyResp{KeyVerdict::kFound, 1});
    b[0] = bad;
    KeyResp t;
    EXPECT_FALSE(decode_body(ByteView(b), t)) << "verdict " << int(bad);
  }

  OpenReq o;
  o.type = ObjType::kSem;
  o.id = 5;
  o.nsems = 3;
  o.flg = 0600;
  auto o2 = round_trip(o);
  EXPECT_EQ(o2.type, ObjType::kSem);
  EXPECT_EQ(o2.id, 5);
  EXPECT_EQ(o2.nsems, 3);
  EXPECT_EQ(o2.flg, 0600);
  expect_strict(o, "OpenReq");
  Bytes b = encode_body(o);
  b[0] = 0;
  OpenReq t;
  EXPECT_FALSE(decode_body(ByteView(b), t));
}

TEST(Protocol, OneWayBodiesRoundTrip) {
  ProcExitMsg p{-123};
  EXPECT_EQ(round_trip(p).pid, -123);
  expect_strict(p, "ProcExitMsg");
  HomeCancelMsg c{~0ull};
  EXPECT_EQ(round_trip(c).token, ~0ull);
  expect_strict(c, "HomeCancelMsg");
  // The notes' body (kShmDt, kShmAttached on a kept userfaultfd, kShmForget): the token survives the trip.
  ShmAttachReq a{0x01000007, 0x7f0000001000ull, 65536, 010000, 42, ~0ull - 1};
  ShmAttachReq b = round_trip(a);
  EXPECT_EQ(b.id, a.id);
  EXPECT_EQ(b.addr, a.addr);
  EXPECT_EQ(b.len, a.len);
  EXPECT_EQ(b.flg, a.flg);
  EXPECT_EQ(b.view_ino, a.view_ino);
  EXPECT_EQ(b.utok, a.utok);
  expect_strict(a, "ShmAttachReq");
}

TEST(Protocol, FieldsAreBigEndianOnTheWire) {
  // Nodes of different byte orders must agree: pin one body's exact bytes.
  Bytes b = encode_body(GetReq{0x01020304, 5, -1, 0x0102030405060708ULL});
  Bytes want = {1, 2, 3, 4, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_EQ(b, want);
}

TEST(Protocol, ObjListRoundTripsAndRejectsBadTypesAndCounts) {
  ObjListResp r;
  r.entries.push_back(ObjEntry{ObjType::kSem, 0x01000001, -2, 65534, 4000000000u, 1, 2, 0640, 1, 7, 0});
  r.entries.push_back(ObjEntry{ObjType::kMsg, 0x02000002, 0x1234, 0, 0, 0, 0, 0600, 2, 3, 15});
  r.entries.push_back(ObjEntry{ObjType::kShm, 0x03000003, 0, 1000, 1000, 1000, 1000, 03666, 3, 1ull << 40, 2});
  r.unreachable = {4, 255};
  expect_strict(r, "ObjListResp");
  ObjListResp out = round_trip(r);
  EXPECT_EQ(out.entries, r.entries);
  EXPECT_EQ(out.unreachable, r.unreachable);
  expect_strict(ObjListResp{}, "empty ObjListResp");

  Bytes b = encode_body(r);
  for (uint8_t t : {uint8_t{0}, uint8_t{4}}) {
    Bytes bad = b;
    bad[4] = t;  // the first entry's type, after the u32 count
    ObjListResp x;
    EXPECT_FALSE(decode_body(ByteView(bad), x)) << "type " << int(t);
  }
  Encoder e;
  e.u32(kMaxObjEntries + 1);  // beyond the bound (and the input)
  e.u32(0);
  Bytes big = e.take();
  ObjListResp y;
  EXPECT_FALSE(decode_body(ByteView(big), y));
}

}  // namespace
}  // namespace dipc::ipc

namespace dipc {
namespace {

Bytes header_bytes(const FrameHeader& h) {
  Bytes b(kFrameHeaderSize);
  encode_frame_header(h, b.data());
  return b;
}

TEST(Frame, HeaderRoundTripsAndHasTheDocumentedLayout) {
  FrameHeader h;
  h.kind = FrameKind::kResponse;
  h.op = 0xabcd;
  h.id = 0x0102030405060708ull;
  h.status = 4095;
  h.length = kMaxPayload;
  Bytes b = header_bytes(h);
  Bytes want = {0x44, 0x49, 0x50, 0x43, kFrameVersion, 3, 0xab, 0xcd, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0x0f, 0xff};
  ASSERT_EQ(b.size(), 24u);
  EXPECT_EQ(Bytes(b.begin(), b.begin() + 20), want);
  FrameHeader d;
  auto err = decode_frame_header(b.data(), d);
  ASSERT_FALSE(err.has_value()) << *err;
  EXPECT_EQ(d.kind, FrameKind::kResponse);
  EXPECT_EQ(d.op, 0xabcd);
  EXPECT_EQ(d.id, h.id);
  EXPECT_EQ(d.status, 4095);
  EXPECT_EQ(d.length, kMaxPayload);
}

TEST(Frame, HeaderDecodeRejectsEachKindOfViolation) {
  FrameHeader good;
  good.kind = FrameKind::kRequest;
  good.length = 10;
  struct Case {
    const char* what;
    size_t offset;
    std::vector<uint8_t> bytes;
  };
  const Case cases[] = {
      {"bad magic", 0, {'X'}},
      {"version 0", 4, {0}},
      {"version kFrameVersion + 1", 4, {uint8_t(kFrameVersion + 1)}},
      {"kind 0", 5, {0}},
      {"kind 7", 5, {7}},
      {"negative status", 16, {0xff, 0xff, 0xff, 0xff}},
      {"status 4096", 16, {0, 0, 0x10, 0}},
      {"length kMaxPayload+1", 20,
       {uint8_t((kMaxPayload + 1) >> 24), uint8_t((kMaxPayload + 1) >> 16), uint8_t((kMaxPayload + 1) >> 8),
        uint8_t(kMaxPayload + 1)}},
      {"length 0xffffffff", 20, {0xff, 0xff, 0xff, 0xff}},
  };
  for (const auto& c : cases) {
    Bytes b = header_bytes(good);
    std::memcpy(b.data() + c.offset, c.bytes.data(), c.bytes.size());
    FrameHeader d;
    auto err = decode_frame_header(b.data(), d);
    EXPECT_TRUE(err.has_value()) << c.what << " was accepted";
    if (err) {
      EXPECT_FALSE(err->empty()) << c.what << ": the error must say why";
    }
  }
  // Every defined kind is accepted.
  for (int k = 1; k <= 6; ++k) {
    FrameHeader h;
    h.kind = static_cast<FrameKind>(k);
    Bytes b = header_bytes(h);
    FrameHeader d;
    EXPECT_FALSE(decode_frame_header(b.data(), d).has_value()) << "kind " << k;
  }
}

TEST(Frame, ParserYieldsFramesOnlyWhenCompleteWhateverTheSplit) {
  Bytes stream;
  FrameHeader h1;
  h1.kind = FrameKind::kRequest;
  h1.op = 6;
  h1.id = 1;
  Bytes p1 = {'a', 'b', 'c'};
  append_frame(stream, h1, ByteView(p1));
  FrameHeader h2;
  h2.kind = FrameKind::kOneWay;
  h2.op = 20;
  h2.id = 2;
  append_frame(stream, h2, ByteView());  // empty payload
  FrameHeader h3;
  h3.kind = FrameKind::kResponse;
  h3.id = 3;
  h3.status = 43;  // EIDRM
  Bytes p3(70000, 0x5a);  // larger than the parser's compaction threshold
  append_frame(stream, h3, ByteView(p3));

  for (size_t chunk : {size_t{1}, size_t{7}, size_t{24}, size_t{4096}, stream.size()}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    FrameParser fp;
    std::vector<FrameParser::Frame> got;
    for (size_t off = 0; off < stream.size(); off += chunk) {
      size_t n = std::min(chunk, stream.size() - off);
      fp.feed(stream.data() + off, n);
      FrameParser::Frame f;
      while (fp.next(f)) got.push_back(f);
      // No frame before its last byte arrived.
      size_t fed = off + n;
      size_t complete = 0, at = 0;
      for (size_t len : {p1.size(), size_t{0}, p3.size()}) {
        at += kFrameHeaderSize + len;
        if (at <= fed) ++complete;
      }
      ASSERT_EQ(got.size(), complete) << "after " << fed << " bytes";
    }
    ASSERT_FALSE(fp.failed()) << fp.error();
    ASSERT_EQ(got.size(), 3u);
    EXPECT_EQ(got[0].header.op, 6);
    EXPECT_EQ(got[0].header.id, 1u);
    EXPECT_EQ(got[0].header.length, 3u);
    EXPECT_EQ(got[0].payload, p1);
    EXPECT_EQ(got[1].header.kind, FrameKind::kOneWay);
    EXPECT_TRUE(got[1].payload.empty());
    EXPECT_EQ(got[2].header.status, 43);
    EXPECT_EQ(got[2].payload, p3);
  }
}

TEST(Frame, ParserFailsForGoodOnGarbageAndOversizedFrames) {
  {
    FrameParser fp;
    std::string junk(100, 'G');
    fp.feed(reinterpret_cast<const uint8_t*>(junk.data()), junk.size());
    FrameParser::Frame f;
    EXPECT_FALSE(fp.next(f));
    EXPECT_TRUE(fp.failed());
    EXPECT_NE(fp.error().find("magic"), std::string::npos) << fp.error();
    // Valid bytes after the garbage do not resurrect the stream.
    Bytes good;
    FrameHeader h;
    h.kind = FrameKind::kRequest;
    append_frame(good, h, ByteView());
    fp.feed(good.data(), good.size());
    EXPECT_FALSE(fp.next(f));
    EXPECT_TRUE(fp.failed());
  }
  {
    // An oversized length is refused from the header alone: the parser does not wait for (or buffer) 2 GiB.
    FrameHeader h;
    h.kind = FrameKind::kRequest;
    h.length = 0x7fffffff;
    Bytes b(kFrameHeaderSize);
    encode_frame_header(h, b.data());
    FrameParser fp;
    fp.feed(b.data(), b.size());
    FrameParser::Frame f;
    EXPECT_FALSE(fp.next(f));
    EXPECT_TRUE(fp.failed());
  }
  {
    // A good frame followed by a bad header: the good one is delivered, then the stream fails.
    Bytes b;
    FrameHeader h;
    h.kind = FrameKind::kRequest;
    h.id = 9;
    append_frame(b, h, ByteView());
    Bytes bad(kFrameHeaderSize, 0);
    b.insert(b.end(), bad.begin(), bad.end());
    FrameParser fp;
    fp.feed(b.data(), b.size());
    FrameParser::Frame f;
    ASSERT_TRUE(fp.next(f));
    EXPECT_EQ(f.header.id, 9u);
    EXPECT_FALSE(fp.next(f));
    EXPECT_TRUE(fp.failed());
  }
}

}  // namespace
}  // namespace dipc
