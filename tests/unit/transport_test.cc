// Transport conformance: what ipc/ and dsm/ rely on from any transport (transport/transport.h), checked on two real
// nodes in this process (two event loops, real sockets on 127.0.0.1). One suite, instantiated per transport; the
// verbs transport joins the list when it exists, skipping where no RDMA device is usable.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
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
#include "transport/tcp/tcp_transport.h"
#include "transport/transport.h"
#include "transport/verbs/verbs_transport.h"

namespace dipc::transport {
namespace {

uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    return 0;
  close(fd);
  return ntohs(a.sin_port);
}

constexpr uint16_t kOpEcho = ops::kTest.first, kOpFail = ops::kTest.first + 1, kOpMsg = ops::kTest.first + 2;

struct Node : Handler {
  Config cfg;
  EventLoop loop;
  std::unique_ptr<Transport> tr;
  std::vector<std::pair<uint16_t, Bytes>> messages;  // (op, body) of one-way messages, in arrival order
  std::function<void(uint16_t, ByteView)> on_msg;    // runs at arrival, before the message is recorded
  bool up = false;
  int downs = 0;

  void on_request(NodeId, uint16_t op, ByteView body, ReplyToken token) override {
    Bytes echo(body.begin(), body.end());
    (void)tr->reply(token, op == kOpFail ? EPERM : 0, echo);  // kOpFail answers with an error status
  }
  void on_message(NodeId, uint16_t op, ByteView body) override {
    if (on_msg) on_msg(op, body);
    messages.emplace_back(op, Bytes(body.begin(), body.end()));
  }
  void on_peer(NodeId, bool is_up) override {
    up = is_up;
    if (!is_up) ++downs;
  }
};

using Factory = std::function<std::unique_ptr<Transport>(const Config&, EventLoop&, const ClusterKey&)>;

struct Param {
  const char* name;
  Factory make;
  std::function<std::string()> address;  // where both nodes listen; "" skips the suite (no such device here)
};

void PrintTo(const Param& p, std::ostream* os) { *os << p.name; }

// An IPv4 address of this machine with an active RDMA port behind it (in the softroce VM: vm0's, with rxe0).
[[maybe_unused]] std::string rdma_address() { return verbs_local_address(); }

class TransportConformance : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    std::string addr = GetParam().address();
    if (addr.empty()) GTEST_SKIP() << "no RDMA device with an active port on this machine";
    uint16_t p1 = free_port(), p2 = free_port();
    ASSERT_TRUE(p1 && p2);
    for (int i = 0; i < 2; ++i) {
      auto n = std::make_unique<Node>();
      n->cfg.nodes = {{1, "n1", addr, p1}, {2, "n2", addr, p2}};
      n->cfg.self = static_cast<uint16_t>(i + 1);
      nodes_.push_back(std::move(n));
    }
    start(*nodes_[0], key_);
    start(*nodes_[1], key_);
    ASSERT_TRUE(pump([&] { return a().up && b().up; })) << "the nodes never connected";
  }
  void TearDown() override {
    for (auto& n : nodes_)
      if (n->tr) n->tr->stop();
  }
  void start(Node& n, const ClusterKey& k) {
    n.tr = GetParam().make(n.cfg, n.loop, k);
    ASSERT_TRUE(n.tr);
    ASSERT_TRUE(n.tr->set_handler(ops::kTest, &n));
    ASSERT_TRUE(n.tr->start());
  }
  Node& a() { return *nodes_[0]; }
  Node& b() { return *nodes_[1]; }
  // Runs both loops until `done` holds; bounded (10 s).
  bool pump(const std::function<bool()>& done) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      for (auto& n : nodes_) n->loop.run_once(1);
    }
    return true;
  }
  ClusterKey key_ = ClusterKey::from_secret(ByteView(reinterpret_cast<const uint8_t*>("0123456789abcdef0123"), 20));
  std::vector<std::unique_ptr<Node>> nodes_;
};

TEST_P(TransportConformance, RequestsAreAnsweredWithTheirStatusAndBody) {
  int got = 0;
  Bytes body{1, 2, 3};
  ASSERT_TRUE(a().tr->request(2, kOpEcho, body, [&](Status st, ByteView b) {
    EXPECT_TRUE(st);
    EXPECT_EQ(Bytes(b.begin(), b.end()), (Bytes{1, 2, 3}));
    ++got;
  }));
  ASSERT_TRUE(a().tr->request(2, kOpFail, Bytes{}, [&](Status st, ByteView) {
    EXPECT_EQ(st.code(), EPERM);  // the peer's reply status reaches the requester
    ++got;
  }));
  ASSERT_TRUE(pump([&] { return got == 2; }));
}

TEST_P(TransportConformance, OneWayMessagesArriveInIssueOrder) {
  for (uint8_t i = 0; i < 100; ++i) ASSERT_TRUE(a().tr->send(2, kOpMsg, Bytes{i}));
  ASSERT_TRUE(pump([&] { return b().messages.size() == 100; }));
  for (uint8_t i = 0; i < 100; ++i) EXPECT_EQ(b().messages[i].second, Bytes{i});
}

TEST_P(TransportConformance, OneSidedReadWriteAndAtomicsOnARegisteredRegion) {
  std::vector<uint64_t> remote(1024, 0), local(1024, 0);
  auto r = b().tr->register_region(remote.data(), remote.size() * 8);
  ASSERT_TRUE(r);
  auto l = a().tr->register_region(local.data(), local.size() * 8);
  ASSERT_TRUE(l);
  for (size_t i = 0; i < local.size(); ++i) local[i] = i * 3;
  int done = 0;
  ASSERT_TRUE(a().tr->write(*l, 0, r->remote, 0, 8192, [&](Status st) { EXPECT_TRUE(st); ++done; }));
  ASSERT_TRUE(pump([&] { return done == 1; }));
  EXPECT_EQ(remote[1023], 1023u * 3);
  remote[10] = 777;
  ASSERT_TRUE(a().tr->read(r->remote, 80, *l, 0, 8, [&](Status st) { EXPECT_TRUE(st); ++done; }));
  ASSERT_TRUE(pump([&] { return done == 2; }));
  EXPECT_EQ(local[0], 777u);
  uint64_t old = 0;
  ASSERT_TRUE(a().tr->fetch_add(r->remote, 80, 5, [&](Status st, uint64_t v) { EXPECT_TRUE(st); old = v; ++done; }));
  ASSERT_TRUE(pump([&] { return done == 3; }));
  EXPECT_EQ(old, 777u);
  EXPECT_EQ(remote[10], 782u);
  ASSERT_TRUE(a().tr->compare_swap(r->remote, 80, 782, 1, [&](Status st, uint64_t v) { EXPECT_TRUE(st); old = v; ++done; }));
  ASSERT_TRUE(a().tr->compare_swap(r->remote, 80, 782, 2, [&](Status st, uint64_t v) { EXPECT_TRUE(st); old = v; ++done; }));
  ASSERT_TRUE(pump([&] { return done == 5; }));
  EXPECT_EQ(remote[10], 1u);  // the second compare-swap saw 1, not 782
  EXPECT_EQ(old, 1u);
  // Out of bounds: EINVAL, nothing touched.
  int err = 0;
  Status s = a().tr->read(r->remote, 8192 - 4, *l, 0, 8, [&](Status st) { err = st.code(); ++done; });
  if (s) {
    ASSERT_TRUE(pump([&] { return done == 6; }));
  } else {
    err = s.code();
  }
  EXPECT_EQ(err, EINVAL);
}

TEST_P(TransportConformance, WriteNotifyDeliversItsMessageAfterTheData) {
  // dsm/ pushes a block into the requester's frame with the grant that names it as the notification.
  std::vector<uint8_t> frame(4096, 0), block(4096, 0x5a);
  auto r = b().tr->register_region(frame.data(), frame.size());
  ASSERT_TRUE(r);
  auto l = a().tr->register_region(block.data(), block.size());
  ASSERT_TRUE(l);
  bool seen = false;
  b().on_msg = [&](uint16_t, ByteView) { seen = frame[0] == 0x5a && frame[4095] == 0x5a; };
  for (int round = 0; round < 20; ++round) {
    std::fill(frame.begin(), frame.end(), 0);
    block.assign(4096, static_cast<uint8_t>(0x5a));
    size_t before = b().messages.size();
    ASSERT_TRUE(a().tr->write_notify(*l, 0, r->remote, 0, block.size(), kOpMsg, Bytes{1}, [](Status) {}));
    ASSERT_TRUE(pump([&] { return b().messages.size() == before + 1; }));
    ASSERT_TRUE(seen) << "round " << round << ": the message arrived before the write landed";
  }
}

TEST_P(TransportConformance, AStoppedPeerFailsOutstandingRequestsWithConnReset) {
  // b answers nothing from now on: its handler is gone with its transport.
  int st = 0;
  b().tr->stop();
  ASSERT_TRUE(pump([&] { return a().downs > 0; }));
  Status s = a().tr->request(2, kOpEcho, Bytes{1}, [&](Status x, ByteView) { st = x.code(); });
  if (s) {
    ASSERT_TRUE(pump([&] { return st != 0; }));
  } else {
    st = s.code();
  }
  EXPECT_TRUE(st == ECONNRESET || st == EHOSTUNREACH) << st;
}

TEST_P(TransportConformance, LargeAndManyMessagesArriveWholeAndInOrder) {
  // More messages than any provider buffers at once (verbs: credits), some longer than one buffer (fragments).
  std::vector<Bytes> sent;
  for (int i = 0; i < 200; ++i) {
    size_t len = i % 10 == 0 ? 100000 + static_cast<size_t>(i) : static_cast<size_t>(i);
    Bytes b(len);
    for (size_t j = 0; j < len; ++j) b[j] = static_cast<uint8_t>(i + j);
    sent.push_back(b);
    ASSERT_TRUE(a().tr->send(2, kOpMsg, std::move(b)));
  }
  Bytes big(1u << 20);
  for (size_t j = 0; j < big.size(); ++j) big[j] = static_cast<uint8_t>(j * 7);
  bool echoed = false;
  ASSERT_TRUE(a().tr->request(2, kOpEcho, big, [&](Status st, ByteView b) {
    EXPECT_TRUE(st);
    EXPECT_TRUE(Bytes(b.begin(), b.end()) == big);
    echoed = true;
  }));
  ASSERT_TRUE(pump([&] { return b().messages.size() == sent.size() && echoed; }));
  for (size_t i = 0; i < sent.size(); ++i) EXPECT_TRUE(b().messages[i].second == sent[i]) << "message " << i;
}

TEST_P(TransportConformance, ARestartedPeerIsReachableAgain) {
  b().tr->stop();
  ASSERT_TRUE(pump([&] { return a().downs > 0; }));
  b().tr.reset();
  b().up = false;
  start(b(), key_);
  ASSERT_TRUE(pump([&] { return a().up && b().up; })) << "the restarted peer never came back";
  bool answered = false;
  ASSERT_TRUE(a().tr->request(2, kOpEcho, Bytes{9}, [&](Status st, ByteView) { EXPECT_TRUE(st); answered = true; }));
  ASSERT_TRUE(pump([&] { return answered; }));
}

// The verbs instance is its own executable (ctest label `verbs`): it runs inside the softroce VM, see
// tests/CMakeLists.txt and scripts/test.sh.
#ifndef DIPC_TRANSPORT_TEST_VERBS
const Param kTransports[] = {
    {"tcp",
     [](const Config& c, EventLoop& l, const ClusterKey& k) {
       TcpOptions o;
       o.connect_timeout_ms = 300;  // the stopped-peer test waits for it
       return make_tcp_transport(c, l, k, o);
     },
     [] { return std::string("127.0.0.1"); }},
};
#else
const Param kTransports[] = {
    {"verbs",
     [](const Config& c, EventLoop& l, const ClusterKey& k) -> std::unique_ptr<Transport> {
       VerbsOptions o;
       o.connect_timeout_ms = 300;
       auto t = make_verbs_transport(c, l, k, o);
       EXPECT_TRUE(t) << t.status().str();
       return t ? std::move(*t) : nullptr;
     },
     rdma_address},
};
#endif

INSTANTIATE_TEST_SUITE_P(All, TransportConformance, ::testing::ValuesIn(kTransports),
                         [](const ::testing::TestParamInfo<Param>& p) { return std::string(p.param.name); });

}  // namespace
}  // namespace dipc::transport
