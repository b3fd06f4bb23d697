// Integration tests: real daemons, real processes, plain SysV C programs under libdipc.so, on simulated nodes that
// are separate network + IPC namespaces (when root), so whatever a test sees on another node crossed the network.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "tests/harness/sim_cluster.h"

namespace dipc::test {
namespace {

// "name=value rest" -> value of the last line for name.
std::string field(const std::string& out, const std::string& name) {
  std::istringstream is(out);
  std::string line, v;
  while (std::getline(is, line))
    if (line.rfind(name + "=", 0) == 0) v = line.substr(name.size() + 1);
  return v;
}

class Cluster : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { cluster_ = std::make_unique<SimCluster>(SimCluster::Options{}); }
  static void TearDownTestSuite() { cluster_.reset(); }
  SimCluster& c() { return *cluster_; }
  // Runs ipcop commands on a node and returns its output.
  std::string op(int node, std::vector<std::string> cmds, int timeout_s = 30) {
    cmds.insert(cmds.begin(), SimCluster::prog("ipcop"));
    auto r = c().run(node, cmds, timeout_s);
    EXPECT_EQ(r.status, 0) << r.err;
    return r.out;
  }
  // Creates a set on `node` and returns its id (as text).
  std::string new_sem(int node, int nsems, const std::string& mode = "0666", const std::string& key = "0") {
    std::string out = op(node, {"semget:" + key + ":" + std::to_string(nsems) + ":creat+dipc+" + mode});
    std::string id = field(out, "semget");
    EXPECT_TRUE(!id.empty() && id[0] != '-') << out;
    return id;
  }
  // Waits (bounded) until GETNCNT of a semaphore reaches n: proof that callers are blocked at the home node.
  bool wait_ncnt(int node, const std::string& id, int semnum, int n, int timeout_s = 20) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
      if (field(op(node, {"getncnt:" + id + ":" + std::to_string(semnum)}), "getncnt") == std::to_string(n))
        return true;
    }
    return false;
  }
  static std::unique_ptr<SimCluster> cluster_;
};
std::unique_ptr<SimCluster> Cluster::cluster_;

TEST_F(Cluster, NodesAreIsolatedByTheirOwnKernels) {
  if (!c().namespaced()) GTEST_SKIP() << "needs root for network and IPC namespaces";
  // A plain kernel queue made on node1 is invisible on node2: nothing passes through the local kernel.
  std::string out = op(1, {"msgget:0x7e570001:creat+0666"});
  EXPECT_EQ(field(op(2, {"msgget:0x7e570001:0666"}), "msgget"), "-1 ENOENT");
  op(1, {"msgget:0x7e570001:0666", "msgrm:@"});
  // ...while the same key with IPC_DIPC is one object cluster-wide.
  op(1, {"msgget:0x7e570002:creat+dipc+0666", "msgsnd:@:5:across:0"});
  EXPECT_EQ(field(op(2, {"msgget:0x7e570002:dipc+0666", "msgrcv:@:0:100:0", "msgrm:@"}), "msgrcv"),
            "6 type=5 text=across");
}

TEST_F(Cluster, ProducerConsumerAcrossThreeNodesLosesAndDuplicatesNothing) {
  auto consumer = c().spawn(3, {SimCluster::bin("prodcons"), "consumer", "2", "300"});
  auto p1 = c().spawn(1, {SimCluster::bin("prodcons"), "producer", "0", "300"});
  auto p2 = c().spawn(2, {SimCluster::bin("prodcons"), "producer", "1", "300"});
  EXPECT_EQ(c().wait(p1, 60).status, 0);
  EXPECT_EQ(c().wait(p2, 60).status, 0);
  auto r = c().wait(consumer, 60);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("received 600 items, none lost, none duplicated"), std::string::npos) << r.out << r.err;
}

TEST_F(Cluster, SemaphoreGuardsACriticalSectionAcrossNodes) {
  std::string id = new_sem(1, 2);
  op(1, {"setval:" + id + ":0:1"});
  std::vector<SimCluster::Proc> ps;
  for (int n = 1; n <= 3; ++n) ps.push_back(c().spawn(n, {SimCluster::prog("critsec"), id, "100"}));
  for (auto& p : ps) EXPECT_EQ(c().wait(p, 120).status, 0);
  EXPECT_EQ(field(op(2, {"getval:" + id + ":1", "semrm:" + id}), "getval"), "300");
}

TEST_F(Cluster, SemUndoIsAppliedWhenAProcessIsKilledOnAnotherNode) {
  std::string id = new_sem(1, 1);
  op(1, {"setval:" + id + ":0:1"});
  auto holder = c().spawn(2, {SimCluster::prog("ipcop"), "semop:" + id + ":0/-1/undo", "hold"});
  ASSERT_TRUE(c().wait_output(holder, "held"));
  EXPECT_EQ(field(op(3, {"getval:" + id + ":0"}), "getval"), "0");
  c().kill(holder, SIGKILL);
  c().wait(holder, 10);
  // The semaphore comes back: a blocking take succeeds once node2 has reported the death (bounded).
  EXPECT_EQ(field(op(3, {"timedop:" + id + ":20000:0/-1/0", "semrm:" + id}), "timedop"), "0");
}

TEST_F(Cluster, RemovalWakesBlockedCallersOnOtherNodesWithEidrm) {
  std::string id = new_sem(1, 1);
  auto b2 = c().spawn(2, {SimCluster::prog("ipcop"), "semop:" + id + ":0/-1/0"});
  auto b3 = c().spawn(3, {SimCluster::prog("ipcop"), "semop:" + id + ":0/-1/0"});
  ASSERT_TRUE(wait_ncnt(1, id, 0, 2));
  op(1, {"semrm:" + id});
  EXPECT_EQ(field(c().wait(b2).out, "semop"), "-1 EIDRM");
  EXPECT_EQ(field(c().wait(b3).out, "semop"), "-1 EIDRM");
}

TEST_F(Cluster, MessageQueueRemovalWakesBlockedReceivers) {
  std::string q = field(op(2, {"msgget:0:creat+dipc+0666"}), "msgget");
  auto b = c().spawn(1, {SimCluster::prog("ipcop"), "msgrcv:" + q + ":0:100:0"});
  // Blocked at the home (node2): visible in its status.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline &&
         c().run(2, {SimCluster::bin("dipc"), "status"}, 10, false).out.find("blocked calls waiting here: 1") ==
             std::string::npos) {
  }
  op(3, {"msgrm:" + q});
  EXPECT_EQ(field(c().wait(b).out, "msgrcv"), "-1 EIDRM");
}

TEST_F(Cluster, SignalInterruptsABlockedRemoteCallWithEintrAndAppliesNothing) {
  for (const char* handler : {"sigusr1", "sigusr1-restart"}) {
    SCOPED_TRACE(handler);
    std::string id = new_sem(1, 2);
    // Atomically: sem0 += 1 and sem1 -= 1. It blocks on sem1; if it were half-applied sem0 would be 1.
    auto b = c().spawn(2, {SimCluster::prog("ipcop"), handler, "semop:" + id + ":0/1/0,1/-1/0"});
    ASSERT_TRUE(wait_ncnt(3, id, 1, 1));
    c().kill(b, SIGUSR1);
    EXPECT_EQ(field(c().wait(b).out, "semop"), "-1 EINTR");  // SysV calls never restart, SA_RESTART or not
    std::string out = op(3, {"getval:" + id + ":0", "getncnt:" + id + ":1", "semrm:" + id});
    EXPECT_EQ(field(out, "getval"), "0");
    EXPECT_EQ(field(out, "getncnt"), "0");
  }
}

TEST_F(Cluster, SemtimedopTimesOutWithEagain) {
  std::string id = new_sem(2, 1);
  std::string out = op(1, {"timedop:" + id + ":200:0/-1/0", "getncnt:" + id + ":0", "semrm:" + id});
  EXPECT_EQ(field(out, "timedop"), "-1 EAGAIN");
  EXPECT_EQ(field(out, "getncnt"), "0");
}

TEST_F(Cluster, PermissionsAreEnforcedWithTheCallersRealCredentials) {
  std::string id = new_sem(1, 1, "0600");
  std::string q = field(op(1, {"msgget:0:creat+dipc+0600"}), "msgget");
  auto as_nobody = [&](int node, std::vector<std::string> cmds) {
    std::vector<std::string> argv = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                     SimCluster::prog("ipcop")};
    argv.insert(argv.end(), cmds.begin(), cmds.end());
    auto r = c().run(node, argv);
    EXPECT_EQ(r.status, 0) << r.err;
    return r.out;
  };
  std::string out = as_nobody(2, {"getval:" + id + ":0", "semop:" + id + ":0/1/0", "semrm:" + id,
                                  "msgsnd:" + q + ":1:x:0", "msgrm:" + q});
  EXPECT_EQ(field(out, "getval"), "-1 EACCES");
  EXPECT_EQ(field(out, "semop"), "-1 EACCES");
  EXPECT_EQ(field(out, "semrm"), "-1 EPERM");
  EXPECT_EQ(field(out, "msgsnd"), "-1 EACCES");
  EXPECT_EQ(field(out, "msgrm"), "-1 EPERM");
  // Opening by key checks the mode too.
  std::string k = field(op(1, {"semget:0x7e570010:1:creat+dipc+0600"}), "semget");
  EXPECT_EQ(field(as_nobody(3, {"semget:0x7e570010:1:dipc+0600"}), "semget"), "-1 EACCES");
  // The owner can open it up; then the other user gets in.
  op(1, {"semset:" + id + ":0666"});
  EXPECT_EQ(field(as_nobody(3, {"semop:" + id + ":0/1/0"}), "semop"), "0");
  op(1, {"semrm:" + id, "msgrm:" + q, "semrm:" + k});
}

TEST_F(Cluster, ExclusiveCreationRaceBetweenNodesHasExactlyOneWinner) {
  for (int round = 0; round < 5; ++round) {
    std::string key = std::to_string(0x7e571000 + round);
    std::vector<SimCluster::Proc> ps;
    for (int n = 1; n <= 3; ++n) ps.push_back(c().spawn(n, {SimCluster::prog("excl"), key}));
    int won = 0, exist = 0;
    std::string winner_id;
    for (auto& p : ps) {
      auto r = c().wait(p);
      if (r.out.rfind("won", 0) == 0) {
        ++won;
        winner_id = r.out.substr(4, r.out.find('\n') - 4);
      }
      if (r.out.rfind("EEXIST", 0) == 0) ++exist;
    }
    EXPECT_EQ(won, 1) << "round " << round;
    EXPECT_EQ(exist, 2) << "round " << round;
    EXPECT_EQ(field(op(2, {"semget:" + key + ":1:dipc+0600"}), "semget"), winner_id);
    op(1, {"semrm:" + winner_id});
  }
}

TEST_F(Cluster, AnIdPassedToAnotherNodeNamesTheSameObjectPrivateOnesIncluded) {
  std::string q = field(op(1, {"msgget:0:creat+dipc+0666"}), "msgget");  // IPC_PRIVATE
  EXPECT_EQ(field(op(2, {"msgsnd:" + q + ":3:hello:0"}), "msgsnd"), "0");
  EXPECT_EQ(field(op(3, {"msgrcv:" + q + ":3:100:0", "msgrm:" + q}), "msgrcv"), "5 type=3 text=hello");
}

TEST_F(Cluster, MessageQueueSemanticsAcrossNodes) {
  std::string q = field(op(1, {"msgget:0:creat+dipc+0666"}), "msgget");
  op(2, {"msgsnd:" + q + ":3:ccc:0", "msgsnd:" + q + ":1:a:0", "msgsnd:" + q + ":2:bb:0"});
  std::string out = op(3, {"msgstat:" + q});
  EXPECT_EQ(field(out, "msgstat"), "0 qnum=3 cbytes=6 qbytes=16384 mode=666");
  out = op(3, {"msgrcv:" + q + ":-2:100:0"});  // lowest type <= 2
  EXPECT_EQ(field(out, "msgrcv"), "1 type=1 text=a");
  out = op(3, {"msgrcv:" + q + ":2:100:except"});  // first not of type 2
  EXPECT_EQ(field(out, "msgrcv"), "3 type=3 text=ccc");
  out = op(3, {"msgrcv:" + q + ":0:1:0"});  // too long for the buffer
  EXPECT_EQ(field(out, "msgrcv"), "-1 E2BIG");
  out = op(3, {"msgrcv:" + q + ":0:1:noerror", "msgrcv:" + q + ":0:10:nowait"});
  EXPECT_NE(out.find("msgrcv=1 type=2 text=b"), std::string::npos) << out;
  EXPECT_EQ(field(out, "msgrcv"), "-1 ENOMSG");
  // A small msg_qbytes blocks senders; IPC_NOWAIT gets EAGAIN.
  out = op(2, {"msgqbytes:" + q + ":4", "msgsnd:" + q + ":1:abcd:0", "msgsnd:" + q + ":1:e:nowait", "msgrm:" + q});
  EXPECT_EQ(field(out, "msgsnd"), "-1 EAGAIN");
}

TEST_F(Cluster, GarbageFramesDropOneConnectionAndTheDaemonKeepsServing) {
  std::string q = field(op(1, {"msgget:0:creat+dipc+0666"}), "msgget");
  std::ifstream af(c().dir() + "/node1.addr");
  std::string addr;
  af >> addr;
  std::ifstream cf(c().dir() + "/cluster.toml");
  std::string toml((std::istreambuf_iterator<char>(cf)), std::istreambuf_iterator<char>());
  std::smatch m;
  ASSERT_TRUE(std::regex_search(toml, m, std::regex("port = (\\d+)")));
  std::string port = m[1];
  // Garbage to the TCP port, an oversized frame, and garbage to the local socket.
  std::string py =
      "import socket,struct,os\n"
      "s=socket.create_connection(('" + addr + "'," + port + "),timeout=10); s.sendall(b'GARBAGE'*100)\n"
      "assert s.recv(100)==b''\n"
      "s=socket.create_connection(('" + addr + "'," + port + "),timeout=10)\n"
      "s.sendall(struct.pack('>IBBHQiI',0x44495043,1,1,1,0,0,0x7fffffff)); assert s.recv(100)==b''\n"
      "u=socket.socket(socket.AF_UNIX); u.settimeout(10); u.connect(os.environ['DIPC_SOCKET'].replace('@','\\0',1))\n"
      "u.sendall(b'\\xff'*64); assert u.recv(100)==b''\n"
      "print('dropped')\n";
  auto r = c().run(1, {"python3", "-c", py}, 30, false);
  EXPECT_NE(r.out.find("dropped"), std::string::npos) << r.out << r.err;
  // Everyone else is still served, across the network too.
  EXPECT_EQ(field(op(2, {"msgsnd:" + q + ":1:still:0"}), "msgsnd"), "0");
  EXPECT_EQ(field(op(3, {"msgrcv:" + q + ":0:100:0", "msgrm:" + q}), "msgrcv"), "5 type=1 text=still");
  EXPECT_NE(c().daemon_log(1).find("closing connection"), std::string::npos);
}

TEST_F(Cluster, DipcOffMakesNewKeysLocalAndOnRestoresDistribution) {
  auto dipc = [&](int node, const char* what) {
    auto r = c().run(node, {SimCluster::bin("dipc"), what}, 10, false);
    EXPECT_EQ(r.status, 0) << r.err;
  };
  dipc(1, "off");
  op(1, {"msgget:0x7e570020:creat+dipc+0666"});
  EXPECT_EQ(field(op(2, {"msgget:0x7e570020:dipc+0666"}), "msgget"), "-1 ENOENT");
  op(1, {"msgget:0x7e570020:dipc+0666", "msgrm:@"});  // still off: the local kernel object
  dipc(1, "on");
  op(1, {"msgget:0x7e570021:creat+dipc+0666"});
  std::string out = op(2, {"msgget:0x7e570021:dipc+0666", "msgrm:@"});
  EXPECT_EQ(field(out, "msgrm"), "0");
}

TEST_F(Cluster, ZZWrongSecretNodeIsRefused) {
  // Restart node3 with another secret: its peers refuse it before it can name any object.
  std::string bad = c().dir() + "/bad.toml";
  {
    std::ifstream in(c().dir() + "/cluster.toml");
    std::string t((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    t = std::regex_replace(t, std::regex("secret_file = \"[^\"]*\""), "secret_file = \"" + c().dir() + "/bad.secret\"");
    std::ofstream(bad) << t;
    std::ofstream(c().dir() + "/bad.secret") << "0123456789abcdef0123456789abcdef-not-the-cluster-secret\n";
  }
  std::string q = field(op(1, {"msgget:0:creat+dipc+0666"}), "msgget");
  c().kill_daemon(3);
  auto d = c().spawn(3, {SimCluster::bin("dipcd"), "--config", bad, "--node", "node3"}, false);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline &&
         c().daemon_log(1).find("failed authentication") == std::string::npos &&
         c().daemon_log(2).find("failed authentication") == std::string::npos) {
    c().wait_output(d, "never printed", 1);
  }
  EXPECT_TRUE(c().daemon_log(1).find("failed authentication") != std::string::npos ||
              c().daemon_log(2).find("failed authentication") != std::string::npos);
  auto st = c().run(1, {SimCluster::bin("dipc"), "status"}, 10, false);
  EXPECT_NE(st.out.find("node3 (id 3"), std::string::npos);
  EXPECT_NE(st.out.find(") down"), std::string::npos) << st.out;
  // A call from the refused node cannot reach the object; the others keep working.
  EXPECT_EQ(field(op(3, {"msgsnd:" + q + ":1:x:nowait"}, 60), "msgsnd"), "-1 EIO");
  EXPECT_EQ(field(op(2, {"msgsnd:" + q + ":1:ok:0", "msgrcv:" + q + ":0:10:0", "msgrm:" + q}), "msgrcv"),
            "2 type=1 text=ok");
  c().kill(d, SIGTERM);
  c().wait(d, 10);
  c().start_daemon(3);
}

TEST(WithoutDipc, AProgramUsingIpcDipcRunsUnchangedWithNoDaemonAndNoPreload) {
  std::string prog = SimCluster::prog("preload_passthrough");
  EXPECT_EQ(system(prog.c_str()), 0);
  // With the preload but no daemon reachable, everything falls through to the kernel.
  std::string cmd = "DIPC_SOCKET=@dipc-no-such-daemon LD_PRELOAD=" + SimCluster::bin("../lib/libdipc.so") + " " + prog;
  EXPECT_EQ(system(cmd.c_str()), 0);
}

TEST(Differential, SameCallsSameResultsAsTheKernel) {
  SimCluster cl(SimCluster::Options{2, false, "flag"});
  for (const char* seed : {"1", "2", "3", "4", "5", "6"}) {
    auto k = cl.run(1, {SimCluster::prog("difftest"), seed, "kernel", "400"});
    auto d = cl.run(1, {SimCluster::prog("difftest"), seed, "dipc", "400"});
    ASSERT_EQ(k.status, 0) << k.err;
    ASSERT_EQ(d.status, 0) << d.err;
    std::istringstream ks(k.out), ds(d.out);
    std::string kl, dl;
    int line = 0;
    while (std::getline(ks, kl)) {
      std::getline(ds, dl);
      ++line;
      ASSERT_EQ(kl, dl) << "seed " << seed << ": first divergence at call " << line;
    }
  }
}

}  // namespace
}  // namespace dipc::test
