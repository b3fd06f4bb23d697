// A hostile local user (ctest label `security`): each test runs an attack as an unprivileged user (nobody, through
// setpriv) on a simulated cluster of namespaced nodes and asserts it is refused. Real daemons, real processes.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "tests/harness/sim_cluster.h"
#include "tests/integration/output.h"

namespace dipc::test {
namespace {

// argv run as nobody:nogroup with no supplementary groups and no capabilities.
std::vector<std::string> as_nobody(std::vector<std::string> argv) {
  std::vector<std::string> v = {"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"};
  v.insert(v.end(), argv.begin(), argv.end());
  return v;
}

std::string ipcop(SimCluster& c, int node, std::vector<std::string> cmds) {
  cmds.insert(cmds.begin(), SimCluster::prog("ipcop"));
  auto r = c.run(node, cmds, 30);
  EXPECT_EQ(r.status, 0) << r.err;
  return r.out + r.err;
}

// A directory everyone may enter, removed at the end.
struct TempDir {
  std::string path;
  TempDir() {
    char t[] = "/tmp/dipc-sec-XXXXXX";
    path = mkdtemp(t);
    chmod(path.c_str(), 0755);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

class Security : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: the attacks run as nobody against root's objects";
  }
};

// Issue 8 item 1: a client that connects as nobody, keeps the socket and execs a setuid-root program is never
// credited with root's rights: identity is what the kernel pinned at connect.
TEST_F(Security, ExecOfASetuidProgramAfterConnectNeverGrantsRootsRights) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  std::string q = field(ipcop(c, 1, {"msgget:0:creat+dipc+0600"}), "msgget");
  ASSERT_TRUE(!q.empty() && q[0] != '-') << q;
  TempDir d;
  std::string tail = d.path + "/tail-setuid";
  std::filesystem::copy_file("/usr/bin/tail", tail);
  ASSERT_EQ(chown(tail.c_str(), 0, 0), 0);
  ASSERT_EQ(chmod(tail.c_str(), 04755), 0);
  for (int node : {1, 2}) {  // the queue's home, and a node that forwards to it
    auto r = c.run(node, as_nobody({SimCluster::prog("credrace"), q, tail, "40"}), 240, false);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(field(r.out, "granted"), "0 refused=40 other=0") << "node " << node << ": " << r.out;
  }
}

// Issue 8 item 2: a local user who binds the daemon's socket name while the daemon is down sees no program's call
// (the preload checks who listens and says so), and dipcd refuses to start beside it, saying why.
TEST_F(Security, ASquatterOnTheDaemonSocketGetsNoCallsAndDipcdRefusesToStartBesideIt) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  if (!c.namespaced()) GTEST_SKIP() << "needs a network namespace per node for a socket name of its own";
  ASSERT_TRUE(c.kill_daemon(2)) << c.last_error();
  auto squatter = c.spawn(2, as_nobody({SimCluster::prog("squat")}), false);
  ASSERT_TRUE(c.wait_output(squatter, "squatting")) << c.output(squatter);

  auto r = c.run(2, {SimCluster::prog("ipcop"), "msgget:0x5152:creat+dipc+0666", "semget:0:1:creat+dipc+0600"}, 30,
                 {"DIPC_RETRY_MS=0"});
  EXPECT_EQ(field(r.out, "msgget"), "-1 EIO") << r.out;
  EXPECT_EQ(field(r.out, "semget"), "-1 EIO") << r.out;
  EXPECT_NE(r.err.find("refusing the dipc socket"), std::string::npos) << r.err;

  EXPECT_FALSE(c.start_daemon(2));
  std::string log = c.daemon_log(2) + c.last_error();
  EXPECT_NE(log.find("already held by"), std::string::npos) << log;

  c.kill(squatter, SIGKILL);
  c.wait(squatter, 10);
  ASSERT_TRUE(c.start_daemon(2)) << c.last_error();
  std::string q = field(ipcop(c, 2, {"msgget:0x5152:creat+dipc+0666"}), "msgget");
  EXPECT_TRUE(!q.empty() && q[0] != '-') << q;
}

// Issue 8 item 5: no request kills the daemon. An 8 TiB segment (the kernel accepts it, with overcommit) is refused
// with ENOMEM, and the daemon goes on serving.
TEST_F(Security, AnEightTebibyteSegmentIsRefusedWithEnomemAndTheDaemonLives) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  auto r = c.run(2, as_nobody({SimCluster::prog("shm_tool"), "get:0:0x80000000000:creat+dipc+0600",
                               "get:0:0x8000000000000:creat+dipc+0600", "get:0:4096:creat+dipc+0600", "rm"}),
                 60);
  EXPECT_EQ(fields(r.out, "get").size(), 3u) << r.out << r.err;
  if (fields(r.out, "get").size() == 3) {
    EXPECT_EQ(fields(r.out, "get")[0], "-1 ENOMEM") << r.out;
    EXPECT_EQ(fields(r.out, "get")[1], "-1 ENOMEM") << r.out;  // 2 PiB: more blocks than any index
    EXPECT_NE(fields(r.out, "get")[2].substr(0, 1), "-") << r.out;
  }
  EXPECT_EQ(field(r.out, "rm"), "0") << r.out;
  EXPECT_NE(c.dipc(2, {"status"}).out.find("peers"), std::string::npos) << "node2's daemon died";
}

// Issue 8 item 3: a user allowed only SHM_RDONLY on root's 0644 segment cannot turn the descriptor dipcd hands out
// into a writable one, nor register a writable attach (with a round trip or with a one-way note), nor feed dipcd a
// descriptor that is not a userfaultfd.
TEST_F(Security, AReadOnlyAttachCannotBeTurnedIntoAWritableOne) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  auto r = c.run(1, {SimCluster::prog("shm_tool"), "get:0:8192:creat+dipc+0644", "at", "wstr:0:root"}, 30);
  std::string id = field(r.out, "get");
  ASSERT_TRUE(!id.empty() && id[0] != '-') << r.out << r.err;
  for (int node : {1, 2}) {
    auto a = c.run(node, as_nobody({SimCluster::prog("shmattack"), id}), 30, false);
    ASSERT_EQ(a.status, 0) << a.err;
    EXPECT_EQ(field(a.out, "shmat"), "0") << a.out;
    EXPECT_EQ(field(a.out, "reopen"), "-1 EACCES") << a.out;
    EXPECT_EQ(field(a.out, "mmaprw"), "-1 EACCES") << a.out;
    EXPECT_EQ(field(a.out, "wrote"), "") << a.out;
    EXPECT_EQ(field(a.out, "fakeuffd"), "-1 EBADF") << a.out;
    std::string rw = field(a.out, "rwattach");
    EXPECT_TRUE(rw == "-1 EACCES" || rw == "skipped") << a.out;
    std::string note = field(a.out, "rwnote");  // a one-way attach proves its mode with the view: refused
    EXPECT_TRUE(note == "-1 ESTALE" || note == "skipped") << a.out;
    if (note == "skipped") continue;
    // The note channel: only a socket of the connection's own process; a userfaultfd kept from a read-only attach
    // never serves a writable one; a flooded channel is read a bounded number at a time and the program answered.
    EXPECT_EQ(field(a.out, "foreignchannel"), "-1 EINVAL") << a.out;
    EXPECT_EQ(field(a.out, "channel"), "0") << a.out;
    EXPECT_EQ(field(a.out, "roattach"), "0") << a.out;
    EXPECT_EQ(field(a.out, "rwrevive"), "-1 ESTALE") << a.out;
    EXPECT_EQ(field(a.out, "flood_full"), "1") << a.out;
    EXPECT_EQ(field(a.out, "flood_served"), "-1 ESTALE") << a.out;
  }
  r = c.run(3, {SimCluster::prog("shm_tool"), "at:" + id, "rstr:0:4", "rm:" + id}, 30);
  EXPECT_EQ(field(r.out, "rstr"), "root") << r.out << r.err;
}

std::string daemon_pid(SimCluster& c, int node) {
  std::string pid = slurp(c.dir() + "/node" + std::to_string(node) + ".dipcd.pid");
  while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
  return pid;
}

// Issue 8 item 8: partially received frames a local user leaves in the daemon are bounded per user (64 MiB), and the
// other users are served meanwhile.
TEST_F(Security, PartialFramesAUserLeavesInTheDaemonAreBoundedPerUser) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  auto hog = c.spawn(1, as_nobody({SimCluster::prog("hog"), "128", "1024", "64"}), false);
  ASSERT_TRUE(c.wait_output(hog, "held", 60)) << c.output(hog);
  std::string kept = field(c.output(hog), "kept");
  ASSERT_FALSE(kept.empty()) << c.output(hog);
  EXPECT_LE(std::stoi(kept), 64) << "1 MiB partial frames kept: " << c.output(hog);
  std::string q = field(ipcop(c, 1, {"msgget:0:creat+dipc+0600", "msgsnd:@:1:ok:nowait", "msgrm:@"}), "msgget");
  EXPECT_TRUE(!q.empty() && q[0] != '-') << "root is not served while nobody hogs: " << q;
  EXPECT_NE(c.daemon_log(1).find("per-user bound"), std::string::npos);
}

// Issue 8 item 7: at its descriptor limit the daemon closes new local connections at once (the program's calls fail
// with EIO, no hang), and serves again when descriptors are freed.
TEST_F(Security, AtItsDescriptorLimitTheDaemonShedsNewClientsAndRecovers) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  std::string pid = daemon_pid(c, 1);
  ASSERT_FALSE(pid.empty());
  auto lim = c.run(1, {"prlimit", "--pid", pid, "--nofile=64:64"}, 10, false);
  ASSERT_EQ(lim.status, 0) << lim.err;
  auto hog = c.spawn(1, as_nobody({SimCluster::prog("hog"), "100", "0", "100"}), false);
  ASSERT_TRUE(c.wait_output(hog, "held", 60)) << c.output(hog);
  auto r = c.run(1, {SimCluster::prog("ipcop"), "msgget:0:creat+dipc+0600"}, 20, {"DIPC_RETRY_MS=0"});
  EXPECT_NE(r.status, 124) << "a new client hangs at the daemon's descriptor limit";
  EXPECT_EQ(field(r.out, "msgget"), "-1 EIO") << r.out << r.err;
  EXPECT_NE(c.daemon_log(1).find("out of file descriptors"), std::string::npos) << c.daemon_log(1);
  c.kill(hog, SIGKILL);
  c.wait(hog, 10);
  // The hog's connections close; the daemon frees their descriptors and serves again (bounded by the retry window).
  r = c.run(1, {SimCluster::prog("ipcop"), "msgget:0:creat+dipc+0600", "msgrm:@"}, 30, {"DIPC_RETRY_MS=10000"});
  std::string q = field(r.out, "msgget");
  EXPECT_TRUE(!q.empty() && q[0] != '-') << r.out << r.err;
}

// The fuzzing bar of issue 8: a daemon fed fuzzed client frames over its Unix socket (mutated requests of every
// client operation, lying lengths, wrong descriptors) by an unprivileged program stays up and serves everyone.
TEST_F(Security, ADaemonFedFuzzedClientFramesStaysUp) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  std::string q = field(ipcop(c, 2, {"msgget:0:creat+dipc+0666"}), "msgget");  // something to aim at on node2
  ASSERT_TRUE(!q.empty() && q[0] != '-') << q;
  for (int seed : {1, 2, 3}) {
    auto r = c.run(1 + seed % 2, as_nobody({SimCluster::prog("clientfuzz"), std::to_string(seed), "400"}), 240, false);
    EXPECT_EQ(r.status, 0) << "seed " << seed << ": " << r.out << r.err;
    EXPECT_EQ(field(r.out, "alive"), "1") << r.out;
  }
  auto out = ipcop(c, 1, {"msgsnd:" + q + ":1:still:nowait", "msgrcv:" + q + ":0:100:nowait"});
  EXPECT_EQ(field(out, "msgrcv"), "5 type=1 text=still") << out;
}

// Issue 8 item 6: a network peer holding hundreds of idle connections (reopened as the handshake deadline closes
// them) from an address not in the configuration cannot keep a restarting node from linking: configured nodes'
// addresses have handshake slots of their own.
TEST_F(Security, IdleConnectionsFromAStrangerDoNotKeepARestartingPeerOut) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  if (!c.namespaced()) GTEST_SKIP() << "needs a network namespace per node for a stranger's address";
  std::string addr3 = slurp(c.dir() + "/nodes");
  // "NAME HOLDER SOCKET ADDRESS" lines: node3's address, and a stranger's in the same subnet.
  std::istringstream is(addr3);
  std::string line, target;
  for (int k = 1; std::getline(is, line); ++k) {
    std::istringstream ls(line);
    std::string name, holder, sock, address;
    ls >> name >> holder >> sock >> address;
    if (k == 3) target = address;
  }
  ASSERT_FALSE(target.empty());
  std::string stranger = target.substr(0, target.rfind('.')) + ".201";
  auto ip = c.run(1, {"ip", "addr", "add", stranger + "/24", "dev", "eth0"}, 10, false);
  ASSERT_EQ(ip.status, 0) << ip.err;
  auto hog = c.spawn(1, {SimCluster::prog("tcphog"), target, "7450", "300", stranger}, false);
  ASSERT_TRUE(c.wait_output(hog, "holding")) << c.output(hog);
  ASSERT_TRUE(c.kill_daemon(2)) << c.last_error();
  EXPECT_TRUE(c.start_daemon(2)) << "node2 could not link to node3 under the flood: " << c.last_error();
  std::string q = field(ipcop(c, 2, {"msgget:0:creat+dipc+0666"}), "msgget");
  EXPECT_TRUE(!q.empty() && q[0] != '-');
  EXPECT_EQ(field(ipcop(c, 3, {"msgsnd:" + q + ":1:ok:nowait"}), "msgsnd"), "0");
}

// Issue 8 item 4, end to end: a cluster under link_security = "encrypt" (every frame between the daemons sealed and
// encrypted) carries a message and a segment's pages between nodes unchanged. ("mac", the default, is what every
// other cluster test runs; tests/security/link_test.cc attacks the links themselves.)
TEST(LinkSecurity, AnEncryptedClusterCarriesMessagesAndPagesIntact) {
  SimCluster::Options o;
  o.nodes = 2;
  o.up_args = {"--link-security", "encrypt"};
  o.transport = "tcp";
  SimCluster c(o);
  std::string log = slurp(c.dir() + "/cluster.toml");
  ASSERT_NE(log.find("link_security = \"encrypt\""), std::string::npos) << log;
  std::string q = field(ipcop(c, 2, {"msgget:0x5153:creat+dipc+0666"}), "msgget");
  ASSERT_TRUE(!q.empty() && q[0] != '-') << q;
  EXPECT_EQ(field(ipcop(c, 1, {"msgsnd:" + q + ":7:sealed-and-secret:nowait"}), "msgsnd"), "0");
  EXPECT_NE(ipcop(c, 2, {"msgrcv:" + q + ":0:100:nowait"}).find("sealed-and-secret"), std::string::npos);
  auto r = c.run(1, {SimCluster::prog("shm_tool"), "get:0:8192:creat+dipc+0666", "at", "wstr:0:page-from-node1"}, 30);
  std::string id = field(r.out, "get");
  ASSERT_TRUE(!id.empty() && id[0] != '-') << r.out << r.err;
  r = c.run(2, {SimCluster::prog("shm_tool"), "at:" + id, "rstr:0:15", "wstr:4096:page-from-node2"}, 30);
  EXPECT_EQ(field(r.out, "rstr"), "page-from-node1") << r.out << r.err;
  r = c.run(1, {SimCluster::prog("shm_tool"), "at:" + id, "rstr:4096:15", "rm:" + id}, 30);
  EXPECT_EQ(field(r.out, "rstr"), "page-from-node2") << r.out << r.err;
}

}  // namespace
}  // namespace dipc::test
