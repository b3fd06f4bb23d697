// Fault injection (ctest label `faults`): daemons killed with SIGKILL under running programs, restarted. Each test
// asserts what a program relies on after a failure: no acknowledged message lost or duplicated, no silent fallback
// to the local kernel, every wait bounded. Real daemons, real processes, a simulated cluster of namespaced nodes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "tests/harness/sim_cluster.h"
#include "tests/integration/output.h"

namespace dipc::test {
namespace {

std::string ipcop(SimCluster& c, int node, std::vector<std::string> cmds, std::vector<std::string> env = {}) {
  cmds.insert(cmds.begin(), SimCluster::prog("ipcop"));
  auto r = c.run(node, cmds, 30, env);
  EXPECT_EQ(r.status, 0) << r.err;
  return r.out + r.err;
}

// The System V message queues of a node's own kernel (its IPC namespace), read without the preload.
std::string kernel_queues(SimCluster& c, int node) {
  auto r = c.run(node, {"cat", "/proc/sysvipc/msg"}, 10, false);
  EXPECT_EQ(r.status, 0) << r.err;
  std::string out = r.out;
  size_t nl = out.find('\n');
  return nl == std::string::npos ? "" : out.substr(nl + 1);  // without the header line
}

// Issue 8 item 9: a producer whose daemon is killed under it gets errors; nothing it "sends" lands in a kernel
// queue nobody reads, and a key the policy distributes is never created in the kernel either.
TEST(Faults, AProducerWhoseDaemonDiesGetsEioAndNothingGoesToTheKernel) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  if (!c.namespaced()) GTEST_SKIP() << "needs root: the kernel queue is only observable in a node's own IPC namespace";
  std::string q = field(ipcop(c, 1, {"msgget:0:creat+dipc+0666"}), "msgget");
  ASSERT_TRUE(!q.empty() && q[0] != '-') << q;
  std::vector<std::string> env = {"DIPC_RETRY_MS=300"};
  auto p = c.spawn(2,
                   {SimCluster::prog("ipcop"), "msgsnd:" + q + ":1:before:nowait", "pause",
                    "msgsnd:" + q + ":1:after:nowait", "msgsnd:" + q + ":1:after2:0", "msgget:0x5150:creat+dipc+0666",
                    "msgget:0:creat+dipc+0666", "semget:0:1:creat+dipc+0666", "print:done"},
                   env);
  ASSERT_TRUE(c.wait_output(p, "paused")) << c.output(p);
  EXPECT_EQ(field(c.output(p), "msgsnd"), "0");
  ASSERT_TRUE(c.kill_daemon(2)) << c.last_error();
  c.kill(p, SIGUSR1);
  auto r = c.wait(p, 30);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(fields(r.out, "msgsnd"), (std::vector<std::string>{"0", "-1 EIO", "-1 EIO"})) << r.out;
  EXPECT_EQ(fields(r.out, "msgget"), (std::vector<std::string>{"-1 EIO", "-1 EIO"})) << r.out;
  EXPECT_EQ(field(r.out, "semget"), "-1 EIO") << r.out;
  EXPECT_NE(r.err.find("no dipcd"), std::string::npos) << "the program is told why: " << r.err;
  EXPECT_EQ(kernel_queues(c, 2), "") << "a distributed call landed in node2's kernel";

  // A new program on that node fails the same way, as soon as it starts.
  std::string out = ipcop(c, 2, {"msgsnd:" + q + ":1:x:nowait", "msgget:0x5151:creat+dipc+0666"}, env);
  EXPECT_EQ(field(out, "msgsnd"), "-1 EIO") << out;
  EXPECT_EQ(field(out, "msgget"), "-1 EIO") << out;
  EXPECT_EQ(kernel_queues(c, 2), "");

  // What was acknowledged is there exactly once; after a restart the node serves again.
  ASSERT_TRUE(c.start_daemon(2)) << c.last_error();
  out = ipcop(c, 2, {"msgrcv:" + q + ":0:100:nowait", "msgrcv:" + q + ":0:100:nowait"});
  EXPECT_EQ(fields(out, "msgrcv"), (std::vector<std::string>{"6 type=1 text=before", "-1 ENOMSG"})) << out;
}

pid_t daemon_pid(SimCluster& c, int node) {
  return static_cast<pid_t>(std::stol(slurp(c.dir() + "/node" + std::to_string(node) + ".dipcd.pid")));
}

// Issue 8 item 12: a daemon that is stopped (SIGSTOP: its kernel still acknowledges TCP data and keepalives) is
// declared lost like a dead one, so calls on its objects fail with EIO instead of waiting forever; once it runs
// again the link comes back and its objects are served.
TEST(Faults, AStoppedHomeIsDeclaredLostAndCallsOnItFailWithEio) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  std::string q = field(ipcop(c, 3, {"msgget:0:creat+dipc+0666", "msgsnd:@:1:kept:nowait"}), "msgget");
  ASSERT_TRUE(!q.empty() && q[0] != '-') << q;
  pid_t home = daemon_pid(c, 3);
  // A caller blocked at the home when it stops, and one that calls afterwards.
  auto blocked = c.spawn(1, {SimCluster::prog("ipcop"), "msgrcv:" + q + ":7:100:0"});
  ASSERT_EQ(::kill(home, SIGSTOP), 0);
  auto r = c.run(2, {SimCluster::prog("ipcop"), "msgsnd:" + q + ":1:x:nowait"}, 60);
  EXPECT_NE(r.status, 124) << "a call on a stopped home's object waits forever";
  EXPECT_EQ(field(r.out, "msgsnd"), "-1 EIO") << r.out << r.err;
  auto b = c.wait(blocked, 60);
  EXPECT_NE(b.status, 124);
  EXPECT_EQ(field(b.out, "msgrcv"), "-1 EIO") << b.out << b.err;
  EXPECT_NE(c.daemon_log(1).find("hung"), std::string::npos) << c.daemon_log(1);
  ASSERT_EQ(::kill(home, SIGCONT), 0);
  // Back: the home serves its object again, with the message acknowledged before the stop.
  r = c.run(1, {SimCluster::bin("dipc"), "status", "--wait", "30"}, 40, false);
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(field(ipcop(c, 1, {"msgrcv:" + q + ":0:100:nowait"}), "msgrcv"), "4 type=1 text=kept");
}

// Issue 8 item 11: after a home restarts, its keys work again (the referee drops the dead ids) and an id from before
// the restart never names the new object; after a referee restarts, it knows the live keys again (IPC_EXCL is
// refused, no second object is made with the same key).
TEST(Faults, IdsFromBeforeARestartNameNothingAndKeysSurviveRestarts) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  // Key 0x5301 is refereed by node1 (key mod 3 == 0); its queue lives on node3.
  std::string old_q = field(ipcop(c, 3, {"msgget:0x5301:creat+dipc+0600", "msgsnd:@:1:before:nowait"}), "msgget");
  ASSERT_TRUE(!old_q.empty() && old_q[0] != '-') << old_q;
  ASSERT_TRUE(c.kill_daemon(3)) << c.last_error();
  ASSERT_TRUE(c.start_daemon(3)) << c.last_error();

  // The key is free again (its object died with its home), and the new object has another id.
  std::string out = ipcop(c, 2, {"msgget:0x5301:creat+dipc+0600", "msgsnd:@:1:secret:nowait"});
  std::string new_q = field(out, "msgget");
  ASSERT_TRUE(!new_q.empty() && new_q[0] != '-') << out;
  EXPECT_NE(new_q, old_q) << "the restarted home handed out the id of an object of its previous life";
  // The old id names nothing: the new queue's message is not reachable through it.
  out = ipcop(c, 1, {"msgrcv:" + old_q + ":0:100:nowait", "msgsnd:" + old_q + ":1:x:nowait"});
  EXPECT_EQ(fields(out, "msgrcv"), (std::vector<std::string>{"-1 EINVAL"})) << out;
  EXPECT_EQ(field(out, "msgsnd"), "-1 EINVAL") << out;
  EXPECT_EQ(field(ipcop(c, 3, {"msgrcv:" + new_q + ":0:100:nowait"}), "msgrcv"), "6 type=1 text=secret");

  // Key 0x5304 (refereed by node1) lives on node2; node1's daemon restarts and must not forget it.
  std::string q2 = field(ipcop(c, 2, {"msgget:0x5304:creat+dipc+0666"}), "msgget");
  ASSERT_TRUE(!q2.empty() && q2[0] != '-') << q2;
  ASSERT_TRUE(c.kill_daemon(1)) << c.last_error();
  ASSERT_TRUE(c.start_daemon(1)) << c.last_error();
  // The restarted referee learns the keys from the homes as their links come up (one round trip).
  std::string found;
  for (int i = 0; i < 50 && found != q2; ++i) found = field(ipcop(c, 3, {"msgget:0x5304:dipc"}), "msgget");
  EXPECT_EQ(found, q2) << c.daemon_log(1);
  out = ipcop(c, 3, {"msgget:0x5304:creat+excl+dipc+0666", "msgget:0x5304:creat+dipc+0666"});
  EXPECT_EQ(fields(out, "msgget"), (std::vector<std::string>{"-1 EEXIST", q2})) << out;
}

// Issue 8 item 10: a process whose node's dipcd dies does not go on computing on its private copy of a segment: its
// next access raises SIGBUS (it spins reading a word here; before, it read a stale copy until its timeout).
TEST(Faults, AProcessWhoseDaemonDiesGetsSigbusInsteadOfAStaleCopy) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  auto r = c.run(1, {SimCluster::prog("shm_tool"), "get:0:4096:creat+dipc+0666", "at", "w:0:5"}, 30);
  std::string id = field(r.out, "get");
  ASSERT_TRUE(!id.empty() && id[0] != '-') << r.out << r.err;
  auto reader = c.spawn(2, {SimCluster::prog("shm_tool"), "at:" + id, "r:0", "waitw:0:99:60"});
  ASSERT_TRUE(c.wait_output(reader, "r=5")) << c.output(reader);
  ASSERT_TRUE(c.kill_daemon(2)) << c.last_error();
  auto w = c.wait(reader, 60);
  EXPECT_EQ(w.status, 128 + SIGBUS) << w.out << w.err;
  EXPECT_NE(w.err.find("SIGBUS"), std::string::npos) << w.err;
}

// Issue 8 item 10: a process waiting on a block of a segment whose home died does not wait forever: when the home
// comes back without the segment (it lived in the dead daemon's memory), the process gets SIGBUS.
TEST(Faults, FaultsWaitingOnADeadHomeEndWithSigbusWhenItRestarts) {
  SimCluster c(SimCluster::Options{.nodes = 3});
  auto r = c.run(3, {SimCluster::prog("shm_tool"), "get:0:4096:creat+dipc+0666", "at", "w:0:5"}, 30);
  std::string id = field(r.out, "get");
  ASSERT_TRUE(!id.empty() && id[0] != '-') << r.out << r.err;
  auto reader = c.spawn(1, {SimCluster::prog("shm_tool"), "at:" + id, "r:0", "waitw:0:99:90"});
  ASSERT_TRUE(c.wait_output(reader, "r=5")) << c.output(reader);
  ASSERT_TRUE(c.kill_daemon(3)) << c.last_error();
  ASSERT_TRUE(c.start_daemon(3)) << c.last_error();
  auto w = c.wait(reader, 60);
  EXPECT_EQ(w.status, 128 + SIGBUS) << w.out << w.err << c.daemon_log(1);
}

}  // namespace
}  // namespace dipc::test
