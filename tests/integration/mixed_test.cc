// A mixed cluster (transport = "auto", transport/multi): node1 and node2 have an RDMA device (Soft-RoCE), node3 has
// none. The link between the RDMA nodes must be verbs, the links to node3 tcp, and messages, semaphores and a shared
// memory counter must work across all three. Needs an RDMA device per simulated node: it runs in the softroce VM
// (ctest label `verbs`, which sets DIPC_SIM_TRANSPORT=verbs) and is skipped elsewhere.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tests/harness/sim_cluster.h"
#include "tests/integration/output.h"

namespace dipc::test {
namespace {

// A peer's whole line in `dipc status` ("" when not listed).
std::string peer_line(const std::string& status, int node) {
  std::istringstream is(status);
  std::string line, prefix = "  node" + std::to_string(node) + " (id " + std::to_string(node) + ",";
  while (std::getline(is, line))
    if (line.rfind(prefix, 0) == 0) return line;
  return "";
}

class Mixed : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tr = getenv("DIPC_SIM_TRANSPORT");
    if (!tr || std::string(tr) != "verbs") GTEST_SKIP() << "needs an RDMA device per node (ctest -L verbs, in the VM)";
    SimCluster::Options o;
    o.nodes = 3;
    o.transport = "auto";
    o.up_args = {"--no-rdma", "3"};
    c_ = std::make_unique<SimCluster>(o);
  }
  SimCluster& c() { return *c_; }
  std::string status(int node) { return c().dipc(node, {"status"}).out; }
  std::string op(int node, std::vector<std::string> cmds) {
    cmds.insert(cmds.begin(), SimCluster::prog("ipcop"));
    auto r = c().run(node, cmds, 60);
    EXPECT_EQ(r.status, 0) << r.err;
    return r.out;
  }
  std::unique_ptr<SimCluster> c_;
};

TEST_F(Mixed, RdmaNodesTalkVerbsTheOtherTcpAndEverythingWorksAcrossAllThree) {
  // Each link's transport, seen from both ends; every link up.
  std::string s1 = status(1), s2 = status(2), s3 = status(3);
  EXPECT_NE(peer_line(s1, 2).find("via verbs "), std::string::npos) << s1;
  EXPECT_NE(peer_line(s2, 1).find("via verbs "), std::string::npos) << s2;
  EXPECT_NE(peer_line(s1, 2).find(" gid "), std::string::npos) << s1;  // device, port, GID index, MTU
  EXPECT_NE(peer_line(s1, 3).find("via tcp "), std::string::npos) << s1;
  EXPECT_NE(peer_line(s2, 3).find("via tcp "), std::string::npos) << s2;
  EXPECT_NE(peer_line(s3, 1).find("via tcp "), std::string::npos) << s3;
  EXPECT_NE(peer_line(s3, 2).find("via tcp "), std::string::npos) << s3;
  for (auto [st, a, b] : {std::tuple{&s1, 2, 3}, {&s2, 1, 3}, {&s3, 1, 2}}) {
    EXPECT_EQ(peer_state(*st, a), "up") << *st;
    EXPECT_EQ(peer_state(*st, b), "up") << *st;
  }

  // Messages: a queue on node1, producers on all three nodes, consumers on node2 (verbs) and node3 (tcp).
  constexpr int kItems = 100;
  std::string q = field(op(1, {"msgget:0:creat+dipc+0666"}), "msgget");
  ASSERT_TRUE(!q.empty() && q[0] != '-');
  std::string pc = SimCluster::prog("prodcons");
  std::vector<SimCluster::Proc> consumers;
  consumers.push_back(c().spawn(2, {pc, "consumer", q}));
  consumers.push_back(c().spawn(3, {pc, "consumer", q}));
  std::vector<SimCluster::Proc> producers;
  for (int p = 0; p < 3; ++p)
    producers.push_back(c().spawn(p + 1, {pc, "producer", q, std::to_string(p), std::to_string(kItems)}));
  for (auto& p : producers) EXPECT_EQ(c().wait(p, 180).status, 0);
  EXPECT_EQ(c().run(1, {pc, "stop", q, "2"}).status, 0);
  std::map<std::pair<int, int>, int> seen;
  for (auto& cp : consumers) {
    auto r = c().wait(cp, 180);
    EXPECT_EQ(r.status, 0) << r.err;
    std::istringstream is(r.out);
    std::string word;
    int p, s;
    while (is >> word)
      if (word == "got" && is >> p >> s) seen[{p, s}]++;
  }
  EXPECT_EQ(seen.size(), size_t{3 * kItems});
  for (auto& [item, n] : seen) EXPECT_EQ(n, 1) << "producer " << item.first << " seq " << item.second;
  op(3, {"msgrm:" + q});

  // Semaphores: a mutex homed on node3 (tcp-only) guards an unguarded increment from all three nodes.
  constexpr int kIters = 60;
  std::string sem = field(op(3, {"semget:0:2:creat+dipc+0666"}), "semget");
  ASSERT_TRUE(!sem.empty() && sem[0] != '-');
  ASSERT_EQ(field(op(3, {"setval:" + sem + ":0:1"}), "setval"), "0");
  std::vector<SimCluster::Proc> ps;
  for (int n = 1; n <= 3; ++n) ps.push_back(c().spawn(n, {SimCluster::prog("critsec"), sem, std::to_string(kIters)}));
  for (auto& p : ps) EXPECT_EQ(c().wait(p, 180).status, 0);
  EXPECT_EQ(field(op(2, {"getval:" + sem + ":1", "semrm:" + sem}), "getval"), std::to_string(3 * kIters));

  // Shared memory: a counter homed on node1, lock-prefixed adds from a process on each node (pages move over verbs
  // to node2 and over tcp to node3).
  constexpr int kAdds = 3000;
  std::string tool = SimCluster::prog("shm_tool"), work = SimCluster::prog("shm_work");
  auto mk = c().run(1, {tool, "get:0x5e00a001:8192:creat+excl+dipc+0666"}, 60);
  std::string shm = field(mk.out, "get");
  ASSERT_TRUE(!shm.empty() && shm[0] != '-') << mk.out << mk.err;
  std::vector<SimCluster::Proc> ws;
  for (int n = 1; n <= 3; ++n)
    ws.push_back(c().spawn(n, {work, "counter", "0x5e00a001", std::to_string(kAdds), "3"}, {"SHM_TIMEOUT=150"}));
  for (auto& w : ws) {
    auto r = c().wait(w, 180);
    EXPECT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_EQ(field(r.out, "counter"), std::to_string(3 * kAdds));
  }
  auto rd = c().run(3, {tool, "at:" + shm, "r:0", "rm:" + shm}, 60);
  EXPECT_EQ(field(rd.out, "r"), std::to_string(3 * kAdds)) << rd.out << rd.err;
}

}  // namespace
}  // namespace dipc::test
