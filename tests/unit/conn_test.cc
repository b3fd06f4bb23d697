// The I/O-free connection pieces every provider shares (transport/conn.h): who dials, back-off, the connect-timeout
// queue, fail-all, and the mutual challenge-response, driven message by message with no socket.
#include <gtest/gtest.h>
#include <sodium.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/auth.h"
#include "common/frame.h"
#include "transport/conn.h"
#include "transport/link_seal.h"

namespace dipc::transport::conn {
namespace {

ClusterKey key_of(const char* s) {
  return ClusterKey::from_secret(ByteView(reinterpret_cast<const uint8_t*>(s), std::string(s).size()));
}

bool known(NodeId n) { return n >= 1 && n <= 3; }

// Runs a dialer and an acceptor against each other, delivering every message (`tamper` may change one in flight).
struct Pair {
  Handshake d, a;
  Handshake::Result dr = Handshake::Result::kContinue, ar = Handshake::Result::kContinue;
  Pair(const ClusterKey& kd, const ClusterKey& ka, NodeId dialer, NodeId acceptor,
       LinkSecurity md = LinkSecurity::kMac, LinkSecurity ma = LinkSecurity::kMac)
      : d(kd, dialer, Handshake::Role::kDialer, acceptor, known, md),
        a(ka, acceptor, Handshake::Role::kAcceptor, 0, known, ma) {}
  void run(const std::function<void(HelloMsg&)>& tamper = {}) {
    std::vector<HelloMsg> to_a{d.start()}, to_d;
    for (int i = 0; i < 4 && (!to_a.empty() || !to_d.empty()); ++i) {
      for (auto& m : to_a) {
        if (tamper) tamper(m);
        ar = a.on_message(m.op, m.payload, to_d);
      }
      to_a.clear();
      for (auto& m : to_d) dr = d.on_message(m.op, m.payload, to_a);
      to_d.clear();
    }
  }
};

TEST(Conn, TheLowerIdDials) {
  EXPECT_TRUE(dials(1, 2));
  EXPECT_FALSE(dials(2, 1));
}

TEST(Conn, BackoffDoublesUpToItsMaximumAndResets) {
  Backoff b(50, 300);
  EXPECT_EQ(b.next(), 50);
  EXPECT_EQ(b.next(), 100);
  EXPECT_EQ(b.next(), 200);
  EXPECT_EQ(b.next(), 300);
  EXPECT_EQ(b.next(), 300);
  b.reset();
  EXPECT_EQ(b.next(), 50);
}

TEST(Conn, SameSecretAuthenticatesBothSides) {
  auto k = key_of("a cluster secret of some length");
  Pair p(k, k, 1, 2);
  p.run();
  EXPECT_EQ(p.dr, Handshake::Result::kDone);
  EXPECT_EQ(p.ar, Handshake::Result::kDone);
  EXPECT_EQ(p.a.peer(), 1);
  EXPECT_EQ(p.d.peer(), 2);
}

TEST(Conn, ADifferentSecretFailsOnBothSides) {
  Pair p(key_of("a cluster secret of some length"), key_of("another secret of some length"), 1, 2);
  p.run();
  EXPECT_EQ(p.dr, Handshake::Result::kFailed);  // the server's proof does not verify
  EXPECT_NE(p.d.error().find("wrong cluster secret"), std::string::npos) << p.d.error();
  EXPECT_FALSE(p.a.done());
}

TEST(Conn, UnknownNodesAndTheWrongDialerAreRefused) {
  auto k = key_of("a cluster secret of some length");
  Pair unknown(k, k, 1, 2);
  unknown.run([](HelloMsg& m) {
    if (m.op == kClientHello) m.payload[1] = 9;  // claims to be node 9
  });
  EXPECT_EQ(unknown.ar, Handshake::Result::kFailed);
  EXPECT_NE(unknown.a.error().find("unknown node 9"), std::string::npos) << unknown.a.error();
  Pair wrong(k, k, 3, 2);  // node 3 dials node 2: the lower id dials
  wrong.run();
  EXPECT_EQ(wrong.ar, Handshake::Result::kFailed);
  EXPECT_NE(wrong.a.error().find("lower id dials"), std::string::npos) << wrong.a.error();
}

TEST(Conn, ATamperedProofOrAnOutOfOrderMessageFails) {
  auto k = key_of("a cluster secret of some length");
  Pair p(k, k, 1, 2);
  p.run([](HelloMsg& m) {
    if (m.op == kClientProof) m.payload[0] ^= 1;
  });
  EXPECT_EQ(p.ar, Handshake::Result::kFailed);
  Handshake a(k, 2, Handshake::Role::kAcceptor, 0, known, LinkSecurity::kMac);
  std::vector<HelloMsg> out;
  EXPECT_EQ(a.on_message(kClientProof, Bytes(32, 0), out), Handshake::Result::kFailed);
  Handshake b(k, 2, Handshake::Role::kAcceptor, 0, known, LinkSecurity::kMac);
  EXPECT_EQ(b.on_message(kClientHello, Bytes(3, 0), out), Handshake::Result::kFailed);  // malformed
  EXPECT_TRUE(out.empty());
}

TEST(Conn, ALinkSecurityMismatchFailsOnBothSidesNamingBothSettings) {
  auto k = key_of("a cluster secret of some length");
  Pair p(k, k, 1, 2, LinkSecurity::kNone, LinkSecurity::kMac);
  p.run();
  EXPECT_EQ(p.ar, Handshake::Result::kFailed);
  EXPECT_EQ(p.dr, Handshake::Result::kFailed);  // the acceptor still answered, so the dialer can say why
  for (const std::string& e : {p.a.error(), p.d.error()}) {
    EXPECT_NE(e.find("link_security mismatch"), std::string::npos) << e;
    EXPECT_NE(e.find("\"none\""), std::string::npos) << e;
    EXPECT_NE(e.find("\"mac\""), std::string::npos) << e;
  }
  // A man in the middle who rewrites the dialer's setting (a downgrade) only breaks the handshake.
  Pair down(k, k, 1, 2);
  down.run([](HelloMsg& m) {
    if (m.op == kClientHello) m.payload.back() = static_cast<uint8_t>(LinkSecurity::kNone);
  });
  EXPECT_EQ(down.ar, Handshake::Result::kFailed);
  EXPECT_FALSE(down.d.done());
}

TEST(Conn, EachDirectionAndEachConnectionHasItsOwnKey) {
  auto k = key_of("a cluster secret of some length");
  Pair p(k, k, 1, 2), q(k, k, 1, 2);
  p.run();
  q.run();
  ASSERT_TRUE(p.d.done() && p.a.done() && q.d.done());
  LinkKeys d = p.d.keys(), a = p.a.keys();
  EXPECT_EQ(d.tx, a.rx);  // what one sends the other opens
  EXPECT_EQ(d.rx, a.tx);
  EXPECT_NE(d.tx, d.rx);            // never one key for both directions
  EXPECT_NE(d.tx, q.d.keys().tx);  // nor for two connections
}

// ---- link_seal.h: per-frame integrity on an authenticated link ------------------------------------------------

struct Sealed {
  Bytes header, fields, body, wire;  // wire: the payload as it travels (plain or ciphertext)
  std::array<uint8_t, kSealTagSize> tag{};
};

// Seals one frame whose payload is `fields` ‖ `body` (two pieces, as the tcp transport hands them).
Sealed seal_frame(FrameSeal& s, uint64_t id, const std::string& fields, const std::string& body) {
  Sealed f;
  f.fields.assign(fields.begin(), fields.end());
  f.body.assign(body.begin(), body.end());
  f.header.resize(kFrameHeaderSize);
  uint32_t len = static_cast<uint32_t>(f.fields.size() + f.body.size() + s.overhead());
  encode_frame_header(FrameHeader{FrameKind::kRequest, 7, id, 0, len}, f.header.data());
  ByteView parts[2] = {f.fields, f.body};
  Bytes cipher;
  s.seal(f.header.data(), parts, &cipher, f.tag.data());
  f.wire = f.fields;
  f.wire.insert(f.wire.end(), f.body.begin(), f.body.end());
  if (s.mode() == LinkSecurity::kEncrypt) {
    EXPECT_EQ(cipher.size(), f.wire.size());
    EXPECT_NE(cipher, f.wire);  // the payload does not travel in the clear
    f.wire = cipher;
  }
  return f;
}

bool open_frame(FrameSeal& s, Sealed f, Bytes* plain = nullptr) {
  bool ok = s.open(f.header.data(), f.wire, f.tag.data());
  if (plain) *plain = f.wire;
  return ok;
}

class Seal : public ::testing::TestWithParam<LinkSecurity> {
 protected:
  SessionKey key(uint8_t v) {
    SessionKey k;
    k.fill(v);
    return k;
  }
};

TEST_P(Seal, FramesRoundTripInOrder) {
  FrameSeal tx(GetParam(), key(1)), rx(GetParam(), key(1));
  for (uint64_t i = 0; i < 5; ++i) {
    std::string body(i * 1000, static_cast<char>('a' + i));
    Sealed f = seal_frame(tx, i, "fields", body);
    Bytes plain;
    ASSERT_TRUE(open_frame(rx, f, &plain)) << i;
    EXPECT_EQ(std::string(plain.begin(), plain.end()), "fields" + body);
  }
  EXPECT_EQ(rx.seq(), 5u);
}

TEST_P(Seal, AnyAlteredByteIsRejected) {
  if (GetParam() == LinkSecurity::kNone) GTEST_SKIP() << "\"none\" checks nothing, by definition";
  FrameSeal tx(GetParam(), key(1));
  Sealed f = seal_frame(tx, 1, "fields", std::string(100, 'x'));
  for (int where = 0; where < 3; ++where) {
    Bytes& part = where == 0 ? f.header : f.wire;
    for (size_t i : {size_t{0}, part.size() / 2, part.size() - 1}) {
      FrameSeal rx(GetParam(), key(1));
      Sealed bad = f;
      if (where == 2)
        bad.tag[i % kSealTagSize] ^= 0x20;
      else
        (where == 0 ? bad.header : bad.wire)[i] ^= 0x20;
      EXPECT_FALSE(open_frame(rx, bad)) << "part " << where << " byte " << i;
      EXPECT_FALSE(open_frame(rx, f)) << "a failed seal stays failed";
    }
  }
}

TEST_P(Seal, ReplayedReorderedDroppedOrReflectedFramesAreRejected) {
  if (GetParam() == LinkSecurity::kNone) GTEST_SKIP() << "\"none\" checks nothing, by definition";
  FrameSeal tx(GetParam(), key(1));
  Sealed f0 = seal_frame(tx, 1, "a", "first"), f1 = seal_frame(tx, 2, "b", "second"),
         f2 = seal_frame(tx, 3, "c", "third");
  {
    FrameSeal rx(GetParam(), key(1));  // replay
    EXPECT_TRUE(open_frame(rx, f0));
    EXPECT_FALSE(open_frame(rx, f0));
  }
  {
    FrameSeal rx(GetParam(), key(1));  // reorder
    EXPECT_FALSE(open_frame(rx, f1));
  }
  {
    FrameSeal rx(GetParam(), key(1));  // drop
    EXPECT_TRUE(open_frame(rx, f0));
    EXPECT_FALSE(open_frame(rx, f2));
  }
  {
    FrameSeal rx(GetParam(), key(2));  // the other direction's key (a reflected frame), or another connection's
    EXPECT_FALSE(open_frame(rx, f0));
  }
  {
    FrameSeal rx(GetParam() == LinkSecurity::kMac ? LinkSecurity::kEncrypt : LinkSecurity::kMac, key(1));
    EXPECT_FALSE(open_frame(rx, f0));  // the other mode never accepts this mode's frames
  }
}

TEST(Seal, NoneAddsNothing) {
  FrameSeal s(LinkSecurity::kNone, SessionKey{});
  EXPECT_EQ(s.overhead(), 0u);
  FrameSeal m(LinkSecurity::kMac, SessionKey{});
  EXPECT_EQ(m.overhead(), kSealTagSize);
}

// "mac" is RFC 8439's AEAD with the frame as associated data and no plaintext; whichever library computes the
// Poly1305 (OpenSSL's where available), the tag must be those bytes, or two builds could not talk.
TEST(Seal, MacIsRfc8439Poly1305OverTheFrame) {
  SessionKey k;
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(i * 7 + 1);
  FrameSeal tx(LinkSecurity::kMac, k);
  for (size_t n : {size_t{0}, size_t{1}, size_t{15}, size_t{4096}, size_t{1} << 20}) {
    std::string body(n, '\0');
    for (size_t i = 0; i < n; ++i) body[i] = static_cast<char>(i * 31 + n);
    const uint64_t seq = tx.seq();
    Sealed f = seal_frame(tx, 3, "fields", body);
    uint8_t nonce[12] = {};
    for (int i = 0; i < 8; ++i) nonce[4 + i] = static_cast<uint8_t>(seq >> (56 - 8 * i));
    uint8_t otk[crypto_onetimeauth_KEYBYTES];
    crypto_stream_chacha20_ietf(otk, sizeof otk, nonce, k.data());
    Bytes frame = f.header;
    frame.insert(frame.end(), f.wire.begin(), f.wire.end());
    uint8_t want[kSealTagSize];
    crypto_onetimeauth(want, frame.data(), frame.size(), otk);
    EXPECT_EQ(0, std::memcmp(want, f.tag.data(), kSealTagSize)) << n << " bytes";
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, Seal,
                         ::testing::Values(LinkSecurity::kNone, LinkSecurity::kMac, LinkSecurity::kEncrypt),
                         [](const auto& p) { return std::string(link_security_name(p.param)); });

}  // namespace
}  // namespace dipc::transport::conn
