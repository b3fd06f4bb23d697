// ipc::Service on three nodes in this process over the loopback provider: the referee, home and origin paths with
// no socket or namespace, and link loss injected while a call is blocked at a remote home.
#include <gtest/gtest.h>
#include <sys/ipc.h>
#include <sys/msg.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/event_loop.h"
#include "dipc/dipc.h"
#include "dsm/segment.h"
#include "ipc/protocol.h"
#include "ipc/service.h"
#include "transport/loopback/loopback_transport.h"

namespace dipc::ipc {
namespace {

struct Node {
  Config cfg;
  std::unique_ptr<transport::Transport> tr;
  std::unique_ptr<dsm::Manager> dsm;
  std::unique_ptr<Service> svc;
};

struct Answer {
  bool done = false;
  int status = -1;
  Bytes body;
};

class ServiceOverLoopback : public ::testing::Test {
 protected:
  void SetUp() override {
    for (uint16_t id = 1; id <= 3; ++id) {
      auto n = std::make_unique<Node>();
      n->cfg.nodes = {{1, "n1", "127.0.0.1", 1}, {2, "n2", "127.0.0.1", 2}, {3, "n3", "127.0.0.1", 3}};
      n->cfg.self = id;
      n->cfg.answer_poll_us = 0;
      n->tr = fabric_.make(id);
      n->dsm = std::make_unique<dsm::Manager>(loop_, n->tr.get(), id, 4096, 0);
      n->svc = std::make_unique<Service>(n->cfg, loop_, n->tr.get(), *n->dsm, Limits{});
      ASSERT_TRUE(n->tr->set_handler(transport::ops::kDsm, n->dsm.get()));
      ASSERT_TRUE(n->tr->set_handler(transport::ops::kIpc, n->svc.get()));
      ASSERT_TRUE(n->tr->start());
      nodes_.push_back(std::move(n));
    }
    ASSERT_TRUE(pump([&] {
      for (auto& n : nodes_)
        if (n->svc->peer_counts().second != 2) return false;
      return true;
    }));
  }
  void TearDown() override {
    for (auto& n : nodes_) n->tr->stop();
  }
  bool pump(const std::function<bool()>& done) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      loop_.run_once(1);
    }
    return true;
  }
  // Runs the loop until `done` holds or `d` has passed; whether it held.
  bool pump_for(std::chrono::milliseconds d, const std::function<bool()>& done) {
    auto deadline = std::chrono::steady_clock::now() + d;
    while (!done() && std::chrono::steady_clock::now() < deadline) loop_.run_once(1);
    return done();
  }
  std::shared_ptr<Answer> call(int node, uint16_t op, Bytes body) {
    auto a = std::make_shared<Answer>();
    Creds c;
    c.node = static_cast<uint16_t>(node);
    c.pid = 100 + node;
    nodes_[node - 1]->svc->client_request(c, op, body, ++token_, [a](int st, Bytes b) {
      a->done = true;
      a->status = st;
      a->body = std::move(b);
    });
    return a;
  }
  std::shared_ptr<Answer> wait(std::shared_ptr<Answer> a) {
    EXPECT_TRUE(pump([&] { return a->done; }));
    return a;
  }

  EventLoop loop_;
  transport::LoopbackFabric fabric_{loop_, {1, 2, 3}};
  std::vector<std::unique_ptr<Node>> nodes_;
  uint64_t token_ = 0;
};

TEST_F(ServiceOverLoopback, AQueueCreatedOnOneNodeCarriesMessagesFromAnother) {
  GetReq g;
  g.key = 0x5150;
  g.flg = IPC_CREAT | IPC_DIPC | 0600;
  auto created = wait(call(1, kMsgGet, encode_body(g)));
  ASSERT_EQ(created->status, 0);
  IdResp id;
  ASSERT_TRUE(decode_body(created->body, id));
  g.flg = IPC_DIPC;
  auto found = wait(call(3, kMsgGet, encode_body(g)));  // through the key's referee, whichever node it is
  ASSERT_EQ(found->status, 0);
  IdResp id3;
  ASSERT_TRUE(decode_body(found->body, id3));
  EXPECT_EQ(id3.id, id.id);
  MsgSndReq snd;
  snd.id = id.id;
  snd.mtype = 4;
  snd.text = Bytes{'h', 'i'};
  ASSERT_EQ(wait(call(2, kMsgSnd, encode_body(snd)))->status, 0);
  MsgRcvReq rcv;
  rcv.id = id.id;
  rcv.maxsize = 64;
  auto got = wait(call(3, kMsgRcv, encode_body(rcv)));
  ASSERT_EQ(got->status, 0);
  MsgRcvResp r;
  ASSERT_TRUE(decode_body(got->body, r));
  EXPECT_EQ(r.mtype, 4);
  EXPECT_EQ(r.text, (Bytes{'h', 'i'}));
}

TEST_F(ServiceOverLoopback, ACallBlockedAtAHomeWhoseLinkIsLostFailsInsteadOfHanging) {
  GetReq g;
  g.key = 0x5151;
  g.flg = IPC_CREAT | IPC_DIPC | 0600;
  auto created = wait(call(1, kMsgGet, encode_body(g)));
  ASSERT_EQ(created->status, 0);
  IdResp id;
  ASSERT_TRUE(decode_body(created->body, id));
  MsgRcvReq rcv;
  rcv.id = id.id;
  rcv.maxsize = 64;
  auto blocked = call(2, kMsgRcv, encode_body(rcv));  // empty queue: waits at node 1
  for (int i = 0; i < 20; ++i) loop_.run_once(1);
  ASSERT_FALSE(blocked->done);
  fabric_.set_link(1, 2, false);
  ASSERT_TRUE(pump([&] { return blocked->done; })) << "the blocked call hangs after the link is lost";
  EXPECT_EQ(blocked->status, EIO);  // README: an unreachable home is EIO
  fabric_.set_link(1, 2, true);
  MsgSndReq snd;
  snd.id = id.id;
  snd.mtype = 1;
  snd.text = Bytes{1};
  EXPECT_EQ(wait(call(2, kMsgSnd, encode_body(snd)))->status, 0);  // and the link works again
}

// Node 1 (the referee of keys k with k mod 3 == 0) restarts while its link to node 2, the home of such a key, is
// cut: node 3's IPC_CREAT of the key waits until node 2's inventory arrived, and then finds the live queue.
TEST_F(ServiceOverLoopback, ARestartedRefereeAnswersNoKeyLookupBeforeTheHomesInventory) {
  GetReq g;
  g.key = 0x5400;  // refereed by node 1
  g.flg = IPC_CREAT | IPC_DIPC | 0600;
  auto created = wait(call(2, kMsgGet, encode_body(g)));
  ASSERT_EQ(created->status, 0);
  IdResp id;
  ASSERT_TRUE(decode_body(created->body, id));

  Node& n1 = *nodes_[0];
  n1.tr->stop();
  n1.svc.reset();
  n1.dsm.reset();
  fabric_.set_link(1, 2, false);
  n1.tr = fabric_.make(1);
  n1.dsm = std::make_unique<dsm::Manager>(loop_, n1.tr.get(), 1, 4096, 0);
  n1.svc = std::make_unique<Service>(n1.cfg, loop_, n1.tr.get(), *n1.dsm, Limits{});
  ASSERT_TRUE(n1.tr->set_handler(transport::ops::kDsm, n1.dsm.get()));
  ASSERT_TRUE(n1.tr->set_handler(transport::ops::kIpc, n1.svc.get()));
  ASSERT_TRUE(n1.tr->start());
  ASSERT_TRUE(pump([&] { return n1.svc->peer_counts().second == 1; }));  // node 3 only

  auto again = call(3, kMsgGet, encode_body(g));
  // Bounded look for a wrong early answer: 300 ms of loop iterations, far beyond node 3's round trip to node 1.
  EXPECT_FALSE(pump_for(std::chrono::milliseconds(300), [&] { return again->done; }))
      << "a restarted referee answered before the key's home sent its inventory";
  EXPECT_NE(n1.svc->status_text().find("rebuilding: waiting for the key inventory of node 2"), std::string::npos)
      << n1.svc->status_text();
  fabric_.set_link(1, 2, true);
  wait(again);
  ASSERT_EQ(again->status, 0);
  IdResp found;
  ASSERT_TRUE(decode_body(again->body, found));
  EXPECT_EQ(found.id, id.id) << "IPC_CREAT made a second queue under the key";
}

}  // namespace
}  // namespace dipc::ipc
