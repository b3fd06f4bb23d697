// ipc::Service on three nodes in this process over the loopback provider: the referee, home and origin paths with
// no socket or namespace, and link loss injected while a call is blocked at a remote home.
#include <gtest/gtest.h>
#include <sys/ipc.h>
#include <sys/msg.h>

#include <chrono>
#include <functional>
#include <memory>
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

}  // namespace
}  // namespace dipc::ipc
