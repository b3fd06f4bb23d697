// A hostile network peer between two nodes (ctest label `security`): node 1's tcp transport reaches node 2 through
// a relay in this test, a man in the middle that can see, alter, duplicate and inject bytes of the node-to-node
// stream after the (genuine) handshake. With [cluster] link_security "mac" or "encrypt" every such frame must drop
// that one connection before any handler sees it, both transports stay up, and the link comes back (node 1
// redials). With "none" the same alteration reaches the handler: that control shows the relay really tampers.
// Real sockets and the real tcp transport on 127.0.0.1; every wait is bounded.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/auth.h"
#include "common/config.h"
#include "common/event_loop.h"
#include "common/frame.h"
#include "transport/tcp/tcp_transport.h"
#include "transport/transport.h"
#include "tests/security/relay.h"

namespace dipc::transport {
namespace {

using dipc::test::relay_step;

constexpr uint16_t kOpEcho = ops::kTest.first;         // answered with the request's body
constexpr uint16_t kOpPrivileged = ops::kTest.first + 1;  // what the attacker wants executed

int listen_any(uint16_t& port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 16) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    close(fd);
    return -1;
  }
  port = ntohs(a.sin_port);
  return fd;
}

uint16_t free_port() {
  uint16_t port = 0;
  int fd = listen_any(port);
  close(fd);
  return port;
}

// Forwards whole frames between node 1 (the dialer) and node 2. `edit` sees every frame node 1 sends, in order,
// and returns the bytes to forward in its place (altered, doubled, preceded by a forged one, or unchanged).
class Relay {
 public:
  using Edit = std::function<Bytes(const FrameHeader&, Bytes frame)>;
  Relay(uint16_t target) : target_(target) { lfd_ = listen_any(port_); }
  ~Relay() {
    for (auto& c : conns_) drop(c);
    if (lfd_ >= 0) close(lfd_);
  }
  uint16_t port() const { return port_; }
  void set_edit(Edit e) { edit_ = std::move(e); }
  int connections() const { return accepted_; }

  // Moves whatever is ready; never blocks long (loopback sockets, small frames).
  void step() {
    pollfd p{lfd_, POLLIN, 0};
    if (poll(&p, 1, 0) == 1) {
      int a = accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
      int b = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in t{};
      t.sin_family = AF_INET;
      t.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      t.sin_port = htons(target_);
      if (a >= 0 && b >= 0 && connect(b, reinterpret_cast<sockaddr*>(&t), sizeof t) == 0) {
        conns_.push_back(Conn{a, b, {}});
        ++accepted_;
      } else {
        if (a >= 0) close(a);
        if (b >= 0) close(b);
      }
    }
    for (auto& c : conns_) {
      if (c.a < 0) continue;
      if (!pump(c, c.a, c.b, true) || !pump(c, c.b, c.a, false)) drop(c);
    }
  }

 private:
  struct Conn {
    int a, b;    // node 1's side, node 2's side
    Bytes a2b;   // node 1's bytes not yet a whole frame
  };
  bool pump(Conn& c, int from, int to, bool frames) {
    return relay_step(from, to, frames ? &c.a2b : nullptr, [&](const FrameHeader& h, Bytes& frame) {
      if (edit_) frame = edit_(h, std::move(frame));
    });
  }
  void drop(Conn& c) {
    if (c.a >= 0) close(c.a);
    if (c.b >= 0) close(c.b);
    c.a = c.b = -1;
  }
  uint16_t target_, port_ = 0;
  int lfd_ = -1;
  int accepted_ = 0;
  std::vector<Conn> conns_;
  Edit edit_;
};

struct Node : Handler {
  std::unique_ptr<Transport> tr;
  std::vector<std::pair<uint16_t, Bytes>> served;  // requests that reached the handler
  bool up = false;
  int downs = 0;
  void on_request(NodeId, uint16_t op, ByteView body, ReplyToken token) override {
    served.emplace_back(op, Bytes(body.begin(), body.end()));
    (void)tr->reply(token, 0, Bytes(body.begin(), body.end()));
  }
  void on_message(NodeId, uint16_t, ByteView) override {}
  void on_peer(NodeId, bool is_up) override {
    up = is_up;
    downs += !is_up;
  }
  int count(uint16_t op) const {
    int n = 0;
    for (auto& [o, b] : served) n += o == op;
    return n;
  }
};

Bytes text(const std::string& s) { return Bytes(s.begin(), s.end()); }

class LinkTamper : public ::testing::TestWithParam<LinkSecurity> {
 protected:
  void SetUp() override {
    uint16_t p1 = free_port(), p2 = free_port();
    relay_ = std::make_unique<Relay>(p2);
    ASSERT_GT(relay_->port(), 0);
    // Node 1 (the dialer: the lower id dials) reaches node 2 through the relay; node 2 listens on its own port.
    cfg_[0].nodes = {{1, "n1", "127.0.0.1", p1}, {2, "n2", "127.0.0.1", relay_->port()}};
    cfg_[1].nodes = {{1, "n1", "127.0.0.1", p1}, {2, "n2", "127.0.0.1", p2}};
    for (int i = 0; i < 2; ++i) {
      cfg_[i].self = static_cast<uint16_t>(i + 1);
      cfg_[i].link_security = GetParam();
      TcpOptions o;
      o.reconnect_min_ms = 20;
      o.reconnect_max_ms = 100;
      n_[i].tr = make_tcp_transport(cfg_[i], loop_[i], key_, o);
      ASSERT_TRUE(n_[i].tr->set_handler(ops::kTest, &n_[i]));
      ASSERT_TRUE(n_[i].tr->start());
    }
    ASSERT_TRUE(pump([&] { return n_[0].up && n_[1].up; })) << "the nodes never connected through the relay";
  }
  void TearDown() override {
    for (auto& n : n_)
      if (n.tr) n.tr->stop();
  }
  bool pump(const std::function<bool()>& done) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      for (auto& l : loop_) l.run_once(1);
      relay_->step();
    }
    return true;
  }
  // Node 1 asks node 2 for `op`; the answer's status (ECONNRESET when the link dropped under it).
  int call(uint16_t op, const std::string& body) {
    bool done = false;
    int status = -1;
    Status s = n_[0].tr->request(2, op, text(body), [&](Status st, ByteView) {
      status = st ? 0 : st.code();
      done = true;
    });
    if (!s) return s.code();
    EXPECT_TRUE(pump([&] { return done; })) << "no answer";
    return status;
  }
  // The link recovered: node 1 redialled through the relay and a call is served again.
  void expect_recovers(int connections_before) {
    ASSERT_TRUE(pump([&] { return n_[0].up && n_[1].up && relay_->connections() > connections_before; }))
        << "the link did not come back";
    EXPECT_EQ(call(kOpEcho, "after"), 0);
  }
  bool sealed() const { return GetParam() != LinkSecurity::kNone; }

  Config cfg_[2];
  EventLoop loop_[2];
  Node n_[2];
  ClusterKey key_ = ClusterKey::from_secret(text("a cluster secret for the relay test"));
  std::unique_ptr<Relay> relay_;
};

// The privileged request, flipped in flight: "grant uid 1000" becomes "grant uid 0000" (one byte).
TEST_P(LinkTamper, AFlippedByteDropsTheConnectionBeforeAnyHandlerRuns) {
  ASSERT_EQ(call(kOpEcho, "before"), 0);
  relay_->set_edit([](const FrameHeader& h, Bytes f) {
    // '1' ^ 1 == '0'. Under "encrypt" the same flip of the ciphertext flips the same plaintext bit (a stream
    // cipher is malleable): only the tag stands in the way.
    if (h.kind == FrameKind::kRequest && h.op == kOpPrivileged) f[kFrameHeaderSize + 10] ^= 1;
    return f;
  });
  int conns = relay_->connections();
  int st = call(kOpPrivileged, "grant uid 1000");
  relay_->set_edit({});
  if (!sealed()) {
    // No integrity: the altered call is executed as if node 1 had sent it.
    EXPECT_EQ(st, 0);
    ASSERT_EQ(n_[1].count(kOpPrivileged), 1);
    EXPECT_EQ(n_[1].served.back().second, text("grant uid 0000"));
    return;
  }
  EXPECT_EQ(st, ECONNRESET);                     // the caller learns its call did not go through
  EXPECT_EQ(n_[1].count(kOpPrivileged), 0);      // the forged call never reached a handler
  EXPECT_GE(n_[1].downs, 1);                     // node 2 dropped the connection
  expect_recovers(conns);
  EXPECT_EQ(call(kOpPrivileged, "grant uid 1000"), 0);  // the genuine call, on the new connection
  ASSERT_EQ(n_[1].count(kOpPrivileged), 1);
  EXPECT_EQ(n_[1].served.back().second, text("grant uid 1000"));
}

// A recorded frame sent again (a replay): executed once at most.
TEST_P(LinkTamper, AReplayedFrameIsRefused) {
  relay_->set_edit([](const FrameHeader& h, Bytes f) {
    if (h.kind == FrameKind::kRequest && h.op == kOpPrivileged) {
      Bytes twice = f;
      twice.insert(twice.end(), f.begin(), f.end());
      return twice;
    }
    return f;
  });
  int conns = relay_->connections();
  (void)call(kOpPrivileged, "transfer 100");
  relay_->set_edit({});
  if (!sealed()) {
    ASSERT_TRUE(pump([&] { return n_[1].count(kOpPrivileged) == 2 || !n_[0].up; }));
    EXPECT_EQ(n_[1].count(kOpPrivileged), 2);  // no integrity: the replay is executed too
    return;
  }
  ASSERT_TRUE(pump([&] { return n_[1].downs >= 1; })) << "the replay was not detected";
  EXPECT_LE(n_[1].count(kOpPrivileged), 1);  // the original may have been served; its copy never
  expect_recovers(conns);
}

// A frame made up by the attacker (well-formed header, payload of its choice, a guessed tag) slipped in before a
// genuine one.
TEST_P(LinkTamper, AnInjectedFrameIsRefused) {
  ASSERT_EQ(call(kOpEcho, "before"), 0);
  relay_->set_edit([this](const FrameHeader& h, Bytes f) {
    if (h.kind != FrameKind::kRequest || h.op != kOpEcho) return f;
    Bytes body = text("shutdown");
    Bytes forged(kFrameHeaderSize);
    size_t tag = sealed() ? 16 : 0;
    encode_frame_header(FrameHeader{FrameKind::kRequest, kOpPrivileged, 9999, 0,
                                    static_cast<uint32_t>(body.size() + tag)},
                        forged.data());
    forged.insert(forged.end(), body.begin(), body.end());
    forged.insert(forged.end(), tag, 0xA5);
    forged.insert(forged.end(), f.begin(), f.end());
    return forged;
  });
  int conns = relay_->connections();
  (void)call(kOpEcho, "genuine");
  relay_->set_edit({});
  if (!sealed()) {
    ASSERT_TRUE(pump([&] { return n_[1].count(kOpPrivileged) == 1 || !n_[0].up; }));
    EXPECT_EQ(n_[1].count(kOpPrivileged), 1);  // no integrity: the injected call is executed
    return;
  }
  ASSERT_TRUE(pump([&] { return n_[1].downs >= 1; }));
  EXPECT_EQ(n_[1].count(kOpPrivileged), 0);
  expect_recovers(conns);
}

// Nodes with different settings never link (so "none" on one node cannot strip "mac" from the others); both log
// the two settings.
TEST(LinkSecurityMismatch, NodesWithDifferentSettingsNeverLink) {
  uint16_t p1 = free_port(), p2 = free_port();
  Config cfg[2];
  EventLoop loop[2];
  Node n[2];
  ClusterKey key = ClusterKey::from_secret(text("a cluster secret for the relay test"));
  Relay relay(p2);  // only to count node 1's attempts
  cfg[0].nodes = {{1, "n1", "127.0.0.1", p1}, {2, "n2", "127.0.0.1", relay.port()}};
  cfg[1].nodes = {{1, "n1", "127.0.0.1", p1}, {2, "n2", "127.0.0.1", p2}};
  cfg[0].link_security = LinkSecurity::kNone;
  cfg[1].link_security = LinkSecurity::kMac;
  for (int i = 0; i < 2; ++i) {
    cfg[i].self = static_cast<uint16_t>(i + 1);
    TcpOptions o;
    o.reconnect_min_ms = 20;
    n[i].tr = make_tcp_transport(cfg[i], loop[i], key, o);
    ASSERT_TRUE(n[i].tr->set_handler(ops::kTest, &n[i]));
    ASSERT_TRUE(n[i].tr->start());
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (relay.connections() < 3 && std::chrono::steady_clock::now() < deadline) {  // two refusals, a third try
    for (auto& l : loop) l.run_once(1);
    relay.step();
    ASSERT_FALSE(n[0].up || n[1].up) << "nodes with different link_security linked";
  }
  EXPECT_GE(relay.connections(), 3) << "node 1 stopped retrying";
  for (auto& x : n) x.tr->stop();
}

INSTANTIATE_TEST_SUITE_P(LinkSecurity, LinkTamper,
                         ::testing::Values(LinkSecurity::kMac, LinkSecurity::kEncrypt, LinkSecurity::kNone),
                         [](const auto& p) { return std::string(link_security_name(p.param)); });

}  // namespace
}  // namespace dipc::transport
