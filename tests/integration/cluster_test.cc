// Integration tests: real daemons, real processes, plain SysV C programs (tests/progs) under libdipc.so, on simulated
// nodes. As root every node is its own network namespace AND IPC namespace, so whatever a process sees of an object
// made on another node crossed the network through dipc (NodesAreIsolatedByTheirOwnKernels shows the kernel alone
// passes nothing between nodes, and the producer/consumer test shows no kernel queue exists on the nodes involved).
//
// Every wait is bounded and waits on a condition (process output or exit, a semaphore count read at the home, a
// daemon's status, a log file change); none sleeps for a guessed time.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>

#include "tests/harness/sim_cluster.h"
#include "tests/integration/output.h"

namespace dipc::test {
namespace {

SimCluster::Options nodes_opt(int n) {
  SimCluster::Options o;
  o.nodes = n;
  return o;
}

using Clock = std::chrono::steady_clock;

// Waits until `path` contains `text`, woken by inotify on every change of its directory; bounded.
bool wait_file_text(const std::string& path, const std::string& text, int timeout_s) {
  int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (fd < 0) return slurp(path).find(text) != std::string::npos;
  inotify_add_watch(fd, path.substr(0, path.rfind('/')).c_str(), IN_MODIFY | IN_CREATE | IN_MOVED_TO);
  auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  bool found = false;
  while (!(found = slurp(path).find(text) != std::string::npos) && Clock::now() < deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::max<int64_t>(left, 1))) > 0) {
      char buf[4096];
      while (read(fd, buf, sizeof buf) > 0) {
      }
    }
  }
  close(fd);
  return found;
}

// A node's line in DIR/nodes: "NAME HOLDER_PID|- SOCKET ADDRESS"; returns {name, holder, socket, address}.
std::vector<std::string> node_info(const std::string& dir, int node) {
  std::istringstream is(slurp(dir + "/nodes"));
  std::string line;
  for (int k = 1; std::getline(is, line); ++k) {
    if (k != node) continue;
    std::istringstream ls(line);
    std::vector<std::string> v(4);
    ls >> v[0] >> v[1] >> v[2] >> v[3];
    return v;
  }
  return {"", "", "", ""};
}

// Helpers shared by the suites: ipcop commands on a node, bounded condition waits.
class ClusterTest : public ::testing::Test {
 protected:
  virtual SimCluster& c() = 0;

  std::string op(int node, std::vector<std::string> cmds, int timeout_s = 30) {
    cmds.insert(cmds.begin(), SimCluster::prog("ipcop"));
    auto r = c().run(node, cmds, timeout_s);
    EXPECT_EQ(r.status, 0) << r.err;
    return r.out;
  }
  // Stops node1's dipcd (SIGSTOP) while the guard lives: calls homed there wait for an answer.
  struct StoppedHome {
    pid_t pid = -1;
    ~StoppedHome() {
      if (pid > 0) ::kill(pid, SIGCONT);
    }
    void resume() { ::kill(pid, SIGCONT); }
  };
  void stop_home(StoppedHome& h) {
    h.pid = static_cast<pid_t>(std::stol("0" + slurp(c().dir() + "/node1.dipcd.pid")));
    ASSERT_GT(h.pid, 0);
    ASSERT_EQ(::kill(h.pid, SIGSTOP), 0);
  }
  // Stops node1's daemon (the home of `id`), starts `blocker norestart WHAT ID` on node 2, waits until
  // `in_call(pid)` says the program is inside its call, signals it (SIGUSR1), resumes the home and collects how the
  // call ended into `r`.
  template <class InCall>
  void signal_call_on_stopped_home(const std::string& what, const std::string& id, InCall in_call,
                                   SimCluster::Result& r) {
    StoppedHome home;
    ASSERT_NO_FATAL_FAILURE(stop_home(home));
    auto b = c().spawn(2, {SimCluster::prog("blocker"), "norestart", what, id});
    ASSERT_TRUE(c().wait_output(b, "blocking"));
    ASSERT_TRUE(within_20s([&] { return in_call(b.pid); })) << c().output(b);
    c().kill(b, SIGUSR1);
    home.resume();
    r = c().wait(b);
  }
  // Waits (at most 20 s) until `pred` holds.
  template <class Pred>
  static bool within_20s(Pred pred) {
    auto deadline = Clock::now() + std::chrono::seconds(20);
    bool ok = false;
    while (!(ok = pred()) && Clock::now() < deadline) sched_yield();
    return ok;
  }

  std::string new_sem(int node, int nsems, const std::string& mode = "0666", const std::string& key = "0") {
    std::string out = op(node, {"semget:" + key + ":" + std::to_string(nsems) + ":creat+dipc+" + mode});
    std::string id = field(out, "semget");
    EXPECT_TRUE(!id.empty() && id[0] != '-') << out;
    return id;
  }
  std::string new_queue(int node, const std::string& mode = "0666") {
    std::string out = op(node, {"msgget:0:creat+dipc+" + mode});
    std::string id = field(out, "msgget");
    EXPECT_TRUE(!id.empty() && id[0] != '-') << out;
    return id;
  }
  // Polls (each check is a fresh process on `node`) until pred(output of cmd) holds; bounded.
  bool wait_op(int node, const std::string& cmd, const std::function<bool(const std::string&)>& pred,
               int timeout_s = 20) {
    auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    do {
      if (pred(op(node, {cmd}))) return true;
    } while (Clock::now() < deadline);
    return false;
  }
  // GETNCNT/GETZCNT read at the home: proof that callers elsewhere are blocked there.
  bool wait_count(int node, const std::string& what, const std::string& id, int semnum, int n, int timeout_s = 20) {
    return wait_op(node, what + ":" + id + ":" + std::to_string(semnum),
                   [&](const std::string& out) { return field(out, what) == std::to_string(n); }, timeout_s);
  }
  std::string status(int node) { return c().run(node, {SimCluster::bin("dipc"), "status"}, 10, false).out; }
  // Waits until the daemon of `node` reports exactly n blocked calls waiting there.
  bool wait_blocked_at(int node, int n, int timeout_s = 20) {
    std::string want = "blocked calls waiting here: " + std::to_string(n) + "\n";
    auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    do {
      if (status(node).find(want) != std::string::npos) return true;
    } while (Clock::now() < deadline);
    return false;
  }
};

class Cluster : public ClusterTest {
 protected:
  static void SetUpTestSuite() { cluster_ = std::make_unique<SimCluster>(SimCluster::Options{}); }
  static void TearDownTestSuite() { cluster_.reset(); }
  SimCluster& c() override { return *cluster_; }
  static std::unique_ptr<SimCluster> cluster_;
};
std::unique_ptr<SimCluster> Cluster::cluster_;

TEST_F(Cluster, NodesAreIsolatedByTheirOwnKernels) {
  if (!c().namespaced()) GTEST_SKIP() << "needs root for network and IPC namespaces";
  // A plain kernel queue made on node1 is invisible on node2: nothing passes between nodes through the kernel.
  EXPECT_NE(field(op(1, {"msgget:0x7e570001:creat+0666"}), "msgget").substr(0, 2), "-1");
  EXPECT_EQ(field(op(2, {"msgget:0x7e570001:0666"}), "msgget"), "-1 ENOENT");
  EXPECT_EQ(field(op(1, {"msgget:0x7e570001:0666", "msgrm:@"}), "msgrm"), "0");
  // The same program with IPC_DIPC sees one object cluster-wide.
  op(1, {"msgget:0x7e570002:creat+dipc+0666", "msgsnd:@:5:across:0"});
  EXPECT_EQ(field(op(2, {"msgget:0x7e570002:dipc+0666", "msgrcv:@:0:100:0", "msgrm:@"}), "msgrcv"),
            "6 type=5 text=across");
}

TEST_F(Cluster, ProducerConsumerAcrossThreeNodesLosesAndDuplicatesNothing) {
  constexpr int kItems = 400;
  // The queue lives on node1; a small msg_qbytes makes producers block on a full queue (flow control over the net).
  std::string q = new_queue(1);
  ASSERT_EQ(field(op(1, {"msgqbytes:" + q + ":600"}), "msgqbytes"), "0");
  std::string pc = SimCluster::prog("prodcons");
  std::vector<SimCluster::Proc> consumers;
  consumers.push_back(c().spawn(2, {pc, "consumer", q}));
  consumers.push_back(c().spawn(3, {pc, "consumer", q}));
  std::vector<SimCluster::Proc> producers;
  for (int p = 0; p < 3; ++p) producers.push_back(c().spawn(p + 1, {pc, "producer", q, std::to_string(p), std::to_string(kItems)}));
  for (auto& p : producers) {
    auto r = c().wait(p, 120);
    EXPECT_EQ(r.status, 0) << r.err;
  }
  // Stop messages queue behind every item: each consumer stops after the items ahead of its stop are taken.
  auto st = c().run(1, {pc, "stop", q, "2"});
  EXPECT_EQ(st.status, 0) << st.err;
  std::map<std::pair<int, int>, int> seen;
  long total = 0;
  for (auto& cp : consumers) {
    auto r = c().wait(cp, 120);
    EXPECT_EQ(r.status, 0) << r.err;
    std::istringstream is(r.out);
    std::string word;
    int p, s;
    while (is >> word)
      if (word == "got" && is >> p >> s) {
        seen[{p, s}]++;
        ++total;
      }
  }
  EXPECT_EQ(total, 3 * kItems);
  for (int p = 0; p < 3; ++p)
    for (int s = 0; s < kItems; ++s) EXPECT_EQ((seen[{p, s}]), 1) << "producer " << p << " seq " << s;
  EXPECT_EQ(seen.size(), static_cast<size_t>(3 * kItems)) << "items that were never sent were received";
  EXPECT_EQ(field(op(2, {"msgstat:" + q}), "msgstat"), "0 qnum=0 cbytes=0 qbytes=600 mode=666");
  if (c().namespaced()) {
    // The consumers' and producers' kernels never held a queue: the items crossed the network.
    for (int n = 2; n <= 3; ++n) {
      auto ipcs = c().run(n, {"ipcs", "-q"}, 10, false);
      EXPECT_EQ(ipcs.out.find("0x"), std::string::npos) << "node" << n << ":\n" << ipcs.out;
    }
  }
  op(3, {"msgrm:" + q});
}

TEST_F(Cluster, SemaphoreGuardsACriticalSectionAcrossNodes) {
  constexpr int kIters = 150;
  std::string id = new_sem(1, 2);
  ASSERT_EQ(field(op(1, {"setval:" + id + ":0:1"}), "setval"), "0");
  std::vector<SimCluster::Proc> ps;
  for (int n = 1; n <= 3; ++n) ps.push_back(c().spawn(n, {SimCluster::prog("critsec"), id, std::to_string(kIters)}));
  for (auto& p : ps) {
    auto r = c().wait(p, 180);
    EXPECT_EQ(r.status, 0) << r.err;
  }
  // The unguarded GETVAL/SETVAL increment lost nothing: the mutex held across nodes. The mutex is free again.
  std::string out = op(2, {"getval:" + id + ":1", "getall:" + id, "semrm:" + id});
  EXPECT_EQ(field(out, "getval"), std::to_string(3 * kIters));
  EXPECT_EQ(field(out, "getall"), "0 1 " + std::to_string(3 * kIters));
}

TEST_F(Cluster, SemUndoIsAppliedOnExitAndAfterKillOnAnotherNode) {
  std::string id = new_sem(1, 3);
  op(1, {"setval:" + id + ":0:1"});
  // A normal exit on node2 after a SEM_UNDO take: the semaphore comes back.
  EXPECT_EQ(field(op(2, {"semop:" + id + ":0/-1/undo"}), "semop"), "0");
  EXPECT_EQ(field(op(3, {"timedop:" + id + ":20000:0/-1/0", "semop:" + id + ":0/1/0"}), "timedop"), "0");

  for (const char* how : {"pause", "block"}) {
    SCOPED_TRACE(how);
    auto holder = c().spawn(2, {SimCluster::prog("semundo"), id, how});
    ASSERT_TRUE(c().wait_output(holder, "held")) << holder.err_buf;
    EXPECT_EQ(field(op(3, {"getall:" + id}), "getall"), "0 0 2 0");
    if (std::string(how) == "block") {
      ASSERT_TRUE(wait_count(3, "getncnt", id, 2, 1));
    }
    c().kill(holder, SIGKILL);
    EXPECT_EQ(c().wait(holder, 10).status, 128 + SIGKILL);
    // Bounded: a blocking take from node3 succeeds once node2 reported the death and the home applied the undo.
    EXPECT_EQ(field(op(3, {"timedop:" + id + ":20000:0/-1/0"}), "timedop"), "0");
    EXPECT_EQ(field(op(3, {"getval:" + id + ":1"}), "getval"), "0");  // the +2 was undone too
    EXPECT_TRUE(wait_count(3, "getncnt", id, 2, 0)) << "the killed process's blocked wait was not withdrawn";
    op(3, {"semop:" + id + ":0/1/0"});
  }
  op(1, {"semrm:" + id});
}

TEST_F(Cluster, RemovalWakesBlockedCallersOnOtherNodesWithEidrm) {
  std::string id = new_sem(1, 2);
  std::string bl = SimCluster::prog("blocker");
  auto b2 = c().spawn(2, {bl, "none", "sem", id});
  auto b3 = c().spawn(3, {bl, "none", "sem", id});
  ASSERT_TRUE(wait_count(1, "getncnt", id, 1, 2));
  EXPECT_EQ(field(op(3, {"semrm:" + id}), "semrm"), "0");
  EXPECT_EQ(field(c().wait(b2).out, "result"), "-1 EIDRM");
  EXPECT_EQ(field(c().wait(b3).out, "result"), "-1 EIDRM");

  // A receiver blocked on an empty queue and a sender blocked on a full one, both homed on node1.
  std::string empty = new_queue(1), full = new_queue(1);
  ASSERT_EQ(field(op(1, {"msgqbytes:" + full + ":4", "msgsnd:" + full + ":1:abcd:0"}), "msgsnd"), "0");
  auto rcv = c().spawn(2, {bl, "none", "msgrcv", empty});
  auto snd = c().spawn(3, {bl, "none", "msgsnd", full});
  ASSERT_TRUE(wait_blocked_at(1, 2)) << status(1);
  EXPECT_EQ(field(op(2, {"msgrm:" + empty, "msgrm:" + full}), "msgrm"), "0");
  EXPECT_EQ(field(c().wait(rcv).out, "result"), "-1 EIDRM");
  EXPECT_EQ(field(c().wait(snd).out, "result"), "-1 EIDRM");
  EXPECT_TRUE(wait_blocked_at(1, 0)) << status(1);
}

TEST_F(Cluster, SignalInterruptsBlockedRemoteCallsWithEintrAndNothingIsHalfApplied) {
  std::string bl = SimCluster::prog("blocker");
  for (const char* handler : {"norestart", "restart"}) {  // SysV calls never restart, SA_RESTART or not
    SCOPED_TRACE(handler);
    // semop {0,+1},{1,-1} blocks on semaphore 1; had it been half applied semaphore 0 would read 1.
    std::string id = new_sem(1, 2);
    auto b = c().spawn(2, {bl, handler, "sem", id});
    ASSERT_TRUE(wait_count(3, "getncnt", id, 1, 1));
    c().kill(b, SIGUSR1);
    auto r = c().wait(b);
    EXPECT_EQ(field(r.out, "result"), "-1 EINTR") << r.out << r.err;
    EXPECT_EQ(field(r.out, "handler_ran"), "1");
    // Withdrawn at the home before EINTR was returned: no waiter left, nothing applied.
    std::string out = op(3, {"getall:" + id, "getncnt:" + id + ":1"});
    EXPECT_EQ(field(out, "getall"), "0 0 0");
    EXPECT_EQ(field(out, "getncnt"), "0");
    // Once semaphore 1 is posted, nobody takes it.
    EXPECT_EQ(field(op(3, {"semop:" + id + ":1/1/0", "getall:" + id, "semrm:" + id}), "getall"), "0 0 1");

    // An interrupted msgrcv consumed nothing: a message sent afterwards stays queued.
    std::string q = new_queue(1);
    auto rcv = c().spawn(2, {bl, handler, "msgrcv", q});
    ASSERT_TRUE(wait_blocked_at(1, 1)) << status(1);
    c().kill(rcv, SIGUSR1);
    r = c().wait(rcv);
    EXPECT_EQ(field(r.out, "result"), "-1 EINTR") << r.out << r.err;
    EXPECT_TRUE(wait_blocked_at(1, 0)) << status(1);
    out = op(3, {"msgsnd:" + q + ":1:kept:0", "msgstat:" + q});
    EXPECT_EQ(field(out, "msgstat"), "0 qnum=1 cbytes=4 qbytes=16384 mode=666");

    // An interrupted msgsnd on a full queue did not get in, not even once room appeared.
    ASSERT_EQ(field(op(1, {"msgqbytes:" + q + ":4"}), "msgqbytes"), "0");
    auto snd = c().spawn(3, {bl, handler, "msgsnd", q});
    ASSERT_TRUE(wait_blocked_at(1, 1)) << status(1);
    c().kill(snd, SIGUSR1);
    r = c().wait(snd);
    EXPECT_EQ(field(r.out, "result"), "-1 EINTR") << r.out << r.err;
    out = op(2, {"msgrcv:" + q + ":0:100:nowait", "msgstat:" + q, "msgrm:" + q});
    EXPECT_EQ(field(out, "msgrcv"), "4 type=1 text=kept");
    EXPECT_EQ(field(out, "msgstat"), "0 qnum=0 cbytes=0 qbytes=4 mode=666");
  }
}

// The window the test above can hit under load: the home has not registered the call yet (its daemon is stopped),
// so the program still polls for "blocked" instead of sleeping. A signal then must still interrupt the call, as the
// kernel's check for a pending signal before it sleeps does.
// A semop on a set whose kernel id the program does not know yet is two requests (the kernel id, then the operation):
// the signal may land in either, or between them. It hung 1 run in 2 under load when the handler could run between
// the two and leave the operation asleep (preload/client.h, CallGate).
TEST_F(Cluster, ASignalBeforeTheHomeRegisteredABlockingCallStillInterruptsIt) {
  std::string id = new_sem(1, 2);
  // In the call: from the moment its request leaves, the preload holds signals blocked except inside its polls.
  auto in_call = [](pid_t pid) {
    std::string st = slurp("/proc/" + std::to_string(pid) + "/status");
    size_t at = st.find("SigBlk:\t");
    return at != std::string::npos && st.compare(at + 8, 16, "0000000000000000") != 0;
  };
  SimCluster::Result r;
  ASSERT_NO_FATAL_FAILURE(signal_call_on_stopped_home("sem", id, in_call, r));
  EXPECT_EQ(field(r.out, "result"), "-1 EINTR") << r.out << r.err;
  EXPECT_EQ(field(r.out, "handler_ran"), "1");
  std::string out = op(3, {"getall:" + id, "getncnt:" + id + ":1", "semrm:" + id});
  EXPECT_EQ(field(out, "getall"), "0 0 0");  // the call's status, then both values: nothing applied
  EXPECT_EQ(field(out, "getncnt"), "0");
}

// A semop of increments only never sleeps in the kernel, so a signal never interrupts it: a handler runs and the
// call still completes. It waits for a remote home's answer like any call; it must not turn into a cancel.
TEST_F(Cluster, ASignalDuringARemoteIncrementRunsItsHandlerAndTheIncrementCompletes) {
  std::string id = new_sem(1, 1);
  // In the call: asleep waiting for the stopped home's answer.
  auto asleep = [](pid_t pid) {
    std::string st = slurp("/proc/" + std::to_string(pid) + "/stat");
    size_t at = st.rfind(')');
    return at != std::string::npos && st.compare(at + 1, 3, " S ") == 0;
  };
  SimCluster::Result r;
  ASSERT_NO_FATAL_FAILURE(signal_call_on_stopped_home("semv", id, asleep, r));
  EXPECT_EQ(field(r.out, "result"), "0") << r.out << r.err;
  EXPECT_EQ(field(r.out, "handler_ran"), "1");
  std::string out = op(3, {"getall:" + id, "semrm:" + id});
  EXPECT_EQ(field(out, "getall"), "0 1");  // the call's status, then the value: applied once
}

TEST_F(Cluster, SemtimedopTimesOutWithEagainAndLeavesNoWaiter) {
  std::string id = new_sem(2, 1);
  std::string out = op(1, {"timedop:" + id + ":200:0/-1/0", "getncnt:" + id + ":0", "semrm:" + id});
  EXPECT_EQ(field(out, "timedop"), "-1 EAGAIN");
  EXPECT_EQ(field(out, "getncnt"), "0");
}

TEST_F(Cluster, PermissionsAreEnforcedWithTheCallersRealCredentials) {
  std::string id = new_sem(1, 1, "0600");
  std::string q = new_queue(1, "0600");
  op(1, {"setval:" + id + ":0:3", "msgsnd:" + q + ":1:secret:0"});
  auto as_nobody = [&](int node, std::vector<std::string> cmds) {
    std::vector<std::string> argv = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                     SimCluster::prog("ipcop")};
    argv.insert(argv.end(), cmds.begin(), cmds.end());
    auto r = c().run(node, argv);
    EXPECT_EQ(r.status, 0) << r.err;
    return r.out;
  };
  std::string out = as_nobody(2, {"getval:" + id + ":0", "semop:" + id + ":0/-1/nowait", "semstat:" + id,
                                  "semset:" + id + ":0666", "semrm:" + id});
  EXPECT_EQ(field(out, "getval"), "-1 EACCES");
  EXPECT_EQ(field(out, "semop"), "-1 EACCES");
  EXPECT_EQ(field(out, "semstat"), "-1 EACCES");
  EXPECT_EQ(field(out, "semset"), "-1 EACCES");  // ipcop's semset reads IPC_STAT first
  EXPECT_EQ(field(out, "semrm"), "-1 EPERM");
  out = as_nobody(3, {"msgsnd:" + q + ":1:x:nowait", "msgrcv:" + q + ":0:100:nowait", "msgstat:" + q, "msgrm:" + q});
  EXPECT_EQ(field(out, "msgsnd"), "-1 EACCES");
  EXPECT_EQ(field(out, "msgrcv"), "-1 EACCES");
  EXPECT_EQ(field(out, "msgstat"), "-1 EACCES");
  EXPECT_EQ(field(out, "msgrm"), "-1 EPERM");
  // The refused calls changed nothing.
  out = op(2, {"getval:" + id + ":0", "msgstat:" + q});
  EXPECT_EQ(field(out, "getval"), "3");
  EXPECT_EQ(field(out, "msgstat"), "0 qnum=1 cbytes=6 qbytes=16384 mode=600");
  // Opening by key checks the mode too.
  std::string k = new_sem(1, 1, "0600", "0x7e570010");
  EXPECT_EQ(field(as_nobody(3, {"semget:0x7e570010:1:dipc+0600"}), "semget"), "-1 EACCES");
  EXPECT_EQ(field(as_nobody(3, {"semget:0x7e570010:1:dipc"}), "semget"), k);  // asking for no access is allowed
  // The owner opens it up; then the other user gets in, from any node.
  op(1, {"semset:" + id + ":0666"});
  EXPECT_EQ(field(as_nobody(3, {"semop:" + id + ":0/1/0"}), "semop"), "0");
  EXPECT_EQ(field(op(1, {"getval:" + id + ":0"}), "getval"), "4");
  op(1, {"semrm:" + id, "msgrm:" + q, "semrm:" + k});
}

TEST_F(Cluster, ExclusiveCreationRaceBetweenNodesHasExactlyOneWinner) {
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::string key = std::to_string(0x7e571000 + round);  // a fresh key each round
    // The racers wait on a barrier semaphore and are released together.
    std::string bar = new_sem(1, 1);
    op(1, {"setval:" + bar + ":0:1"});
    std::vector<SimCluster::Proc> ps;
    for (int n = 1; n <= 3; ++n) ps.push_back(c().spawn(n, {SimCluster::prog("excl"), key, bar}));
    ASSERT_TRUE(wait_count(2, "getzcnt", bar, 0, 3));
    op(2, {"setval:" + bar + ":0:0"});
    int won = 0, exist = 0;
    std::string winner_id;
    for (auto& p : ps) {
      auto r = c().wait(p);
      EXPECT_EQ(r.status, 0) << r.err;
      if (r.out.rfind("won ", 0) == 0) {
        ++won;
        winner_id = r.out.substr(4, r.out.find('\n') - 4);
      } else if (r.out == "EEXIST\n") {
        ++exist;
      } else {
        ADD_FAILURE() << "unexpected: " << r.out;
      }
    }
    EXPECT_EQ(won, 1);
    EXPECT_EQ(exist, 2);
    // Everyone now finds the winner's set under the key.
    for (int n = 1; n <= 3; ++n) EXPECT_EQ(field(op(n, {"semget:" + key + ":1:dipc+0600"}), "semget"), winner_id);
    op(1, {"semrm:" + winner_id, "semrm:" + bar});
  }
}

TEST_F(Cluster, AnIdPassedToAnotherNodeNamesTheSameObjectPrivateOnesIncluded) {
  std::string q = new_queue(1);  // IPC_PRIVATE
  EXPECT_EQ(field(op(2, {"msgsnd:" + q + ":3:hello:0"}), "msgsnd"), "0");
  EXPECT_EQ(field(op(3, {"msgrcv:" + q + ":3:100:0", "msgrm:" + q}), "msgrcv"), "5 type=3 text=hello");
  std::string s = new_sem(3, 2, "0600");  // IPC_PRIVATE, homed on node3
  EXPECT_EQ(field(op(1, {"setval:" + s + ":1:42"}), "setval"), "0");
  std::string out = op(2, {"getval:" + s + ":1", "semstat:" + s});
  EXPECT_EQ(field(out, "getval"), "42");
  EXPECT_EQ(field(out, "semstat"), "0 key=0 mode=600 uid=0 nsems=2");
  // A keyed set: the id node1 got and the id node2 finds by key are the same, and name the same object.
  std::string k = new_sem(1, 1, "0666", "0x7e570030");
  EXPECT_EQ(field(op(2, {"semget:0x7e570030:1:dipc+0666"}), "semget"), k);
  op(2, {"setval:" + k + ":0:9"});
  EXPECT_EQ(field(op(3, {"getval:" + k + ":0", "semrm:" + k, "semrm:" + s}), "getval"), "9");
  // Removed from one node, the id is gone for all of them.
  EXPECT_EQ(field(op(1, {"getval:" + k + ":0"}), "getval"), "-1 EINVAL");
}

TEST_F(Cluster, MessageQueueSemanticsAcrossNodes) {
  std::string q = new_queue(1);
  op(2, {"msgsnd:" + q + ":3:ccc:0", "msgsnd:" + q + ":1:a:0", "msgsnd:" + q + ":2:bb:0"});
  EXPECT_EQ(field(op(3, {"msgstat:" + q}), "msgstat"), "0 qnum=3 cbytes=6 qbytes=16384 mode=666");
  EXPECT_EQ(field(op(3, {"msgrcv:" + q + ":-2:100:0"}), "msgrcv"), "1 type=1 text=a");          // lowest type <= 2
  EXPECT_EQ(field(op(3, {"msgrcv:" + q + ":2:100:except"}), "msgrcv"), "3 type=3 text=ccc");    // first not type 2
  EXPECT_EQ(field(op(3, {"msgrcv:" + q + ":0:1:0"}), "msgrcv"), "-1 E2BIG");                    // too long
  std::string out = op(3, {"msgrcv:" + q + ":0:1:noerror", "msgrcv:" + q + ":0:10:nowait"});
  EXPECT_NE(out.find("msgrcv=1 type=2 text=b\n"), std::string::npos) << out;                    // truncated
  EXPECT_EQ(field(out, "msgrcv"), "-1 ENOMSG");
  out = op(2, {"msgqbytes:" + q + ":4", "msgsnd:" + q + ":1:abcd:0", "msgsnd:" + q + ":1:e:nowait", "msgrm:" + q});
  EXPECT_EQ(field(out, "msgsnd"), "-1 EAGAIN");
}

TEST_F(Cluster, GarbageFramesDropOneConnectionAndTheDaemonKeepsServing) {
  std::string q = new_queue(1);
  // Node 2 listens (node 1, the lowest id, only dials: tcp_transport.cc).
  std::string addr = node_info(c().dir(), 2)[3];
  ASSERT_FALSE(addr.empty()) << slurp(c().dir() + "/nodes");
  std::smatch m;
  std::string toml = slurp(c().dir() + "/cluster.toml");
  std::string node2 = toml.substr(toml.find("name = \"node2\""));
  ASSERT_TRUE(std::regex_search(node2, m, std::regex("port = (\\d+)")));
  std::string port = m[1];
  // From inside node2's namespaces: garbage and an oversized frame to the TCP port, garbage to the client socket.
  // Each connection must be closed by the daemon (recv returns b'').
  std::string py =
      "import socket,struct,os\n"
      "s=socket.create_connection(('" + addr + "'," + port + "),timeout=10); s.sendall(b'GARBAGE'*100)\n"
      "assert s.recv(100)==b'', 'tcp garbage: connection left open'\n"
      "s=socket.create_connection(('" + addr + "'," + port + "),timeout=10)\n"
      "s.sendall(struct.pack('>IBBHQiI',0x44495043,3,2,3,1,0,0x7fffffff))\n"
      "assert s.recv(100)==b'', 'oversized frame: connection left open'\n"
      "u=socket.socket(socket.AF_UNIX); u.settimeout(10); u.connect(os.environ['DIPC_SOCKET'].replace('@','\\0',1))\n"
      "u.sendall(b'\\xff'*64); assert u.recv(100)==b'', 'unix garbage: connection left open'\n"
      "print('dropped')\n";
  auto r = c().run(2, {"python3", "-c", py}, 30, false);
  EXPECT_NE(r.out.find("dropped"), std::string::npos) << r.out << r.err;
  // The daemon still serves its own clients and its peers.
  EXPECT_EQ(field(op(1, {"msgsnd:" + q + ":1:local:0"}), "msgsnd"), "0");
  EXPECT_EQ(field(op(2, {"msgsnd:" + q + ":1:still:0"}), "msgsnd"), "0");
  std::string out = op(3, {"msgrcv:" + q + ":0:100:0", "msgrcv:" + q + ":0:100:0", "msgrm:" + q});
  EXPECT_NE(out.find("msgrcv=5 type=1 text=local\n"), std::string::npos) << out;
  EXPECT_EQ(field(out, "msgrcv"), "5 type=1 text=still");
  std::string log = c().daemon_log(2);
  EXPECT_NE(log.find("closing connection"), std::string::npos) << log;
  EXPECT_EQ(peer_state(status(2), 1), "up");
  EXPECT_EQ(peer_state(status(2), 3), "up");
}

// `dipc off` / `dipc on` change the node's state: a cluster of their own.
class DipcSwitch : public ClusterTest {
 protected:
  void SetUp() override { cluster_ = std::make_unique<SimCluster>(nodes_opt(2)); }
  void TearDown() override { cluster_.reset(); }
  SimCluster& c() override { return *cluster_; }
  std::unique_ptr<SimCluster> cluster_;
};

TEST_F(DipcSwitch, OffMakesNewGetCallsLocalAndOnRestoresDistribution) {
  if (!c().namespaced()) GTEST_SKIP() << "locality is only observable with an IPC namespace per node";
  auto dipc = [&](int node, const char* what) {
    auto r = c().run(node, {SimCluster::bin("dipc"), what}, 10, false);
    EXPECT_EQ(r.status, 0) << r.err;
  };
  std::string before = new_queue(1);  // distributed, made while on
  dipc(1, "off");
  std::string out = op(1, {"msgget:0x7e570020:creat+dipc+0666", "msgsnd:@:1:local:0"});
  EXPECT_EQ(field(out, "msgsnd"), "0");
  EXPECT_EQ(field(op(2, {"msgget:0x7e570020:dipc+0666"}), "msgget"), "-1 ENOENT");  // not visible elsewhere
  EXPECT_NE(c().run(1, {"ipcs", "-q"}, 10, false).out.find("0x7e570020"), std::string::npos);  // in node1's kernel
  // Objects made before keep working while off.
  EXPECT_EQ(field(op(1, {"msgsnd:" + before + ":1:x:0"}), "msgsnd"), "0");
  EXPECT_EQ(field(op(2, {"msgrcv:" + before + ":0:10:0"}), "msgrcv"), "1 type=1 text=x");
  dipc(1, "on");
  op(1, {"msgget:0x7e570021:creat+dipc+0666", "msgsnd:@:1:again:0"});
  out = op(2, {"msgget:0x7e570021:dipc+0666", "msgrcv:@:0:10:0", "msgrm:@"});
  EXPECT_EQ(field(out, "msgrcv"), "5 type=1 text=again");
  EXPECT_EQ(c().run(1, {"ipcs", "-q"}, 10, false).out.find("0x7e570021"), std::string::npos);
  c().run(1, {"ipcrm", "-Q", "0x7e570020"}, 10, false);
}

// A daemon killed and started again: a cluster of its own (two nodes).
class Restart : public ClusterTest {
 protected:
  void SetUp() override { cluster_ = std::make_unique<SimCluster>(nodes_opt(2)); }
  void TearDown() override { cluster_.reset(); }
  SimCluster& c() override { return *cluster_; }
  std::unique_ptr<SimCluster> cluster_;
};

TEST_F(Restart, AKilledDaemonComesBackAndReachesTheObjectsOfTheOthers) {
  std::string q = new_queue(1);
  const char* tr = getenv("DIPC_SIM_TRANSPORT");
  std::string want = tr && std::string(tr) == "verbs" ? "via verbs " : "via tcp ";
  EXPECT_NE(status(1).find(want), std::string::npos) << status(1);  // dipc status names each peer's transport
  ASSERT_TRUE(c().kill_daemon(2)) << c().last_error();
  ASSERT_TRUE(c().start_daemon(2)) << c().last_error();  // returns once the daemon answers and its peers are up
  EXPECT_EQ(peer_state(status(1), 2), "up");
  EXPECT_EQ(field(op(2, {"msgsnd:" + q + ":1:back:0"}), "msgsnd"), "0");
  EXPECT_EQ(field(op(1, {"msgrcv:" + q + ":0:10:0"}), "msgrcv"), "4 type=1 text=back");
  EXPECT_EQ(field(op(1, {"msgrm:" + q}), "msgrm"), "0");
}

// A node configured with another secret: a cluster of its own, since the node is replaced.
class WrongSecret : public ClusterTest {
 protected:
  void SetUp() override { cluster_ = std::make_unique<SimCluster>(nodes_opt(3)); }
  void TearDown() override { cluster_.reset(); }
  SimCluster& c() override { return *cluster_; }

  // Replaces node3's daemon by one configured exactly like it but with another secret; returns when a peer has
  // refused it (its log says so), bounded.
  SimCluster::Proc start_refused_node3() {
    std::string bad = c().dir() + "/bad.toml";
    std::string t = slurp(c().dir() + "/cluster.toml");
    t = std::regex_replace(t, std::regex("secret_file = \"[^\"]*\""), "secret_file = \"" + c().dir() + "/bad.secret\"");
    std::ofstream(bad) << t;
    auto mk = c().run(1, {SimCluster::bin("dipc"), "secret", c().dir() + "/bad.secret"}, 10, false);
    EXPECT_EQ(mk.status, 0) << mk.err;
    std::string sock = node_info(c().dir(), 3)[2];
    EXPECT_FALSE(sock.empty()) << slurp(c().dir() + "/nodes");
    EXPECT_TRUE(c().kill_daemon(3)) << c().last_error();
    auto d = c().spawn(3, {SimCluster::bin("dipcd"), "--config", bad, "--node", "node3", "--socket", sock}, false);
    bool logged = wait_file_text(c().dir() + "/node1.log", "authentication failed", 30) ||
                  wait_file_text(c().dir() + "/node2.log", "authentication failed", 5);
    EXPECT_TRUE(logged) << "no peer logged why it refused node3:\n" << c().daemon_log(1) << c().daemon_log(2);
    return d;
  }
  std::unique_ptr<SimCluster> cluster_;
};

TEST_F(WrongSecret, ANodeWithAnotherSecretIsRefusedAndTheOthersKeepWorking) {
  std::string q = new_queue(1);
  auto d = start_refused_node3();
  // Neither peer reports it up; it reports neither peer up.
  EXPECT_EQ(peer_state(status(1), 3), "down");
  EXPECT_EQ(peer_state(status(2), 3), "down");
  std::string st3 = status(3);
  EXPECT_EQ(peer_state(st3, 1), "down") << st3;
  EXPECT_EQ(peer_state(st3, 2), "down") << st3;
  // An object the refused node makes for itself (IPC_PRIVATE needs no peer) cannot be reached from the others, and
  // the cluster's objects cannot be reached from it: EIO both ways (in parallel: each waits for the connect timeout).
  std::string mine = new_sem(3, 1);
  auto to_it = c().spawn(1, {SimCluster::prog("ipcop"), "getval:" + mine + ":0"});
  auto from_it = c().spawn(3, {SimCluster::prog("ipcop"), "msgsnd:" + q + ":1:x:nowait"});
  // Meanwhile the others keep working.
  EXPECT_EQ(field(op(2, {"msgsnd:" + q + ":1:ok:0", "msgrcv:" + q + ":0:10:0"}), "msgrcv"), "2 type=1 text=ok");
  EXPECT_EQ(field(c().wait(to_it, 60).out, "getval"), "-1 EIO");
  EXPECT_EQ(field(c().wait(from_it, 60).out, "msgsnd"), "-1 EIO");
  EXPECT_EQ(peer_state(status(1), 2), "up");
  // Still refused after all that traffic.
  EXPECT_EQ(peer_state(status(1), 3), "down");
  EXPECT_EQ(peer_state(status(2), 3), "down");
  EXPECT_EQ(field(op(1, {"msgrm:" + q}), "msgrm"), "0");
  c().kill(d, SIGTERM);
  EXPECT_EQ(c().wait(d, 10).status, 0);
}

TEST_F(WrongSecret, TheRefusedNodesOwnLogSaysWhy) {
  // The operator of the misconfigured node reads its log: it must name the cause, not just "unreachable".
  auto d = start_refused_node3();
  // A call that needs a peer: by the time it failed, node3 has been refused repeatedly.
  std::string q = new_queue(1);
  EXPECT_EQ(field(op(3, {"msgsnd:" + q + ":1:x:nowait"}, 60), "msgsnd"), "-1 EIO");
  c().kill(d, SIGTERM);
  auto dr = c().wait(d, 10);
  std::string log = dr.out + dr.err;
  EXPECT_TRUE(log.find("authentication") != std::string::npos || log.find("secret") != std::string::npos)
      << "the refused node's log:\n" << log;
}

TEST(WithoutDipc, AProgramUsingIpcDipcRunsUnchangedWithNoDaemonAndNoPreload) {
  std::string prog = SimCluster::prog("preload_passthrough");
  FILE* f = popen((prog + " 2>&1").c_str(), "r");
  ASSERT_NE(f, nullptr);
  char buf[256] = {0};
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  EXPECT_EQ(pclose(f), 0) << std::string(buf, n);
  EXPECT_EQ(std::string(buf, n), "ok\n");
  // With the preload but no daemon reachable, a distributed key fails with EIO (it never silently becomes a kernel
  // object); a key the policy does not distribute still goes to the kernel.
  std::string cmd = "DIPC_SOCKET=@dipc-no-such-daemon DIPC_RETRY_MS=0 LD_PRELOAD=" +
                    SimCluster::bin("../lib/libdipc.so") + " " + SimCluster::prog("ipcop") +
                    " msgget:0:creat+dipc+0600 msgget:0:creat+0600 msgrm:@ 2>&1";
  f = popen(cmd.c_str(), "r");
  ASSERT_NE(f, nullptr);
  n = fread(buf, 1, sizeof buf - 1, f);
  EXPECT_EQ(pclose(f), 0) << std::string(buf, n);
  std::string out(buf, n);
  EXPECT_EQ(fields(out, "msgget").size(), 2u) << out;
  EXPECT_EQ(fields(out, "msgget")[0], "-1 EIO") << out;
  EXPECT_EQ(field(out, "msgrm"), "0") << out;
  EXPECT_NE(out.find("no dipcd answers"), std::string::npos) << out;
}

}  // namespace
}  // namespace dipc::test
