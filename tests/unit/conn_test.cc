// The I/O-free connection pieces every provider shares (transport/conn.h): who dials, back-off, the connect-timeout
// queue, fail-all, and the mutual challenge-response, driven message by message with no socket.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/auth.h"
#include "transport/conn.h"

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
  Pair(const ClusterKey& kd, const ClusterKey& ka, NodeId dialer, NodeId acceptor)
      : d(kd, dialer, Handshake::Role::kDialer, acceptor, known), a(ka, acceptor, Handshake::Role::kAcceptor, 0, known) {}
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

TEST(Conn, DeadlineQueueExpiresInIssueOrder) {
  DeadlineQueue<int> q;
  q.push(10, 1);
  q.push(20, 2);
  q.push(20, 3);
  EXPECT_EQ(q.next_deadline(), 10);
  EXPECT_TRUE(q.expire(9).empty());
  EXPECT_EQ(q.expire(20), (std::vector<int>{1, 2, 3}));
  EXPECT_FALSE(q.next_deadline());
  q.push(30, 4);
  EXPECT_EQ(q.take_all(), (std::vector<int>{4}));
}

TEST(Conn, OutstandingFailsEveryEntryOnceInIssueOrder) {
  Outstanding<int> o;
  uint64_t a = o.add(1);
  o.add(2);
  o.add(3);
  EXPECT_EQ(o.take(a), 1);
  EXPECT_FALSE(o.take(a));
  std::vector<int> failed;
  o.fail_all([&](int v) { failed.push_back(v); });
  EXPECT_EQ(failed, (std::vector<int>{2, 3}));
  EXPECT_EQ(o.size(), 0u);
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
  Handshake a(k, 2, Handshake::Role::kAcceptor, 0, known);
  std::vector<HelloMsg> out;
  EXPECT_EQ(a.on_message(kClientProof, Bytes(32, 0), out), Handshake::Result::kFailed);
  Handshake b(k, 2, Handshake::Role::kAcceptor, 0, known);
  EXPECT_EQ(b.on_message(kClientHello, Bytes(3, 0), out), Handshake::Result::kFailed);  // malformed
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace dipc::transport::conn
