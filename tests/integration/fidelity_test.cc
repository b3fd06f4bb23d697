// SysV fidelity on a cluster with policy = "all" (issue 9): IPC_PRIVATE objects are distributed, MSG_COPY, *_STAT
// scans and *_INFO over the cluster's objects, limits read when they are checked, SHM_HUGETLB. Every node is its own
// IPC namespace when root, so whatever a process finds of an object homed elsewhere crossed the network through dipc.
#include <gtest/gtest.h>
#include <signal.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "tests/harness/sim_cluster.h"
#include "tests/integration/hugepages.h"
#include "tests/integration/output.h"

namespace dipc::test {
namespace {

bool is_dipc_id(const std::string& s) {
  if (s.empty() || s[0] == '-') return false;
  return (std::stol(s) & (1L << 30)) != 0;
}

// "N used=U keys=K,K,..." from ipcop scan, with the keys sorted (index order differs between the kernel and dipc).
std::string scan_result(const std::string& out) {
  std::string v = field(out, "scan");
  size_t k = v.find("keys=");
  if (k == std::string::npos) return v;
  std::vector<std::string> keys;
  std::string rest = v.substr(k + 5);
  for (size_t p = 0; p < rest.size();) {
    size_t e = rest.find(',', p);
    if (e == std::string::npos) e = rest.size();
    keys.push_back(rest.substr(p, e - p));
    p = e + 1;
  }
  std::sort(keys.begin(), keys.end());
  std::string joined;
  for (const auto& x : keys) joined += (joined.empty() ? "" : ",") + x;
  return v.substr(0, k + 5) + joined;
}

class PolicyAll : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    SimCluster::Options o;
    o.nodes = 3;
    o.policy = "all";
    cluster_ = std::make_unique<SimCluster>(o);
  }
  static void TearDownTestSuite() { cluster_.reset(); }
  static std::unique_ptr<SimCluster> cluster_;
  SimCluster& c() { return *cluster_; }

  // ipcop commands on a node, under the preload (or, with preload = false, against the node's kernel alone).
  std::string op(int node, std::vector<std::string> cmds, bool preload = true) {
    cmds.insert(cmds.begin(), SimCluster::prog("ipcop"));
    auto r = c().run(node, cmds, 30, preload);
    EXPECT_EQ(r.status, 0) << r.err;
    return r.out;
  }
  // A shell command on a node without the preload (a sysctl of the node's IPC namespace).
  void sh(int node, const std::string& cmd) {
    auto r = c().run(node, {"/bin/sh", "-c", cmd}, 10, false);
    ASSERT_EQ(r.status, 0) << cmd << ": " << r.err;
  }
};
std::unique_ptr<SimCluster> PolicyAll::cluster_;

TEST_F(PolicyAll, PrivateObjectsAreDistributed) {
  // The common pattern: a private object made by one process, used by others through its id. Under "all" the id is
  // a dipc id and names the object on every node.
  std::string sem = field(op(1, {"semget:0:2:creat+0600"}), "semget");
  ASSERT_TRUE(is_dipc_id(sem)) << sem;
  EXPECT_EQ(field(op(2, {"setval:" + sem + ":1:5"}), "setval"), "0");
  EXPECT_EQ(field(op(1, {"getval:" + sem + ":1"}), "getval"), "5");
  std::string q = field(op(1, {"msgget:0:creat+0600", "msgsnd:@:3:private:0"}), "msgget");
  ASSERT_TRUE(is_dipc_id(q)) << q;
  EXPECT_EQ(field(op(3, {"msgrcv:" + q + ":0:100:nowait"}), "msgrcv"), "7 type=3 text=private");
  std::string shm = field(op(2, {"shmget:0:4096:creat+0600"}), "shmget");
  EXPECT_TRUE(is_dipc_id(shm)) << shm;
  op(1, {"semrm:" + sem, "msgrm:" + q, "shmrm:" + shm});
}

TEST_F(PolicyAll, MsgCopyReadsAtAnIndexAndLeavesTheQueue) {
  std::string q = field(op(2, {"msgget:0:creat+0600", "msgsnd:@:4:first:0", "msgsnd:@:9:second:0"}), "msgget");
  ASSERT_TRUE(is_dipc_id(q)) << q;
  auto out = op(1, {"msgrcv:" + q + ":1:100:nowait+copy", "msgrcv:" + q + ":0:100:nowait+copy",
                    "msgrcv:" + q + ":2:100:nowait+copy", "msgstat:" + q});
  auto r = fields(out, "msgrcv");
  ASSERT_EQ(r.size(), 3u) << out;
  EXPECT_EQ(r[0], "6 type=9 text=second");
  EXPECT_EQ(r[1], "5 type=4 text=first");
  EXPECT_EQ(r[2], "-1 ENOMSG");  // past the end
  EXPECT_EQ(field(out, "msgstat").substr(0, 8), "0 qnum=2");
  // Without IPC_NOWAIT, or with MSG_EXCEPT: EINVAL; a message longer than the buffer: E2BIG.
  out = op(1, {"msgrcv:" + q + ":0:100:copy", "msgrcv:" + q + ":0:100:nowait+copy+except",
               "msgrcv:" + q + ":0:2:nowait+copy", "msgrm:" + q});
  r = fields(out, "msgrcv");
  ASSERT_EQ(r.size(), 3u) << out;
  EXPECT_EQ(r[0], "-1 EINVAL");
  EXPECT_EQ(r[1], "-1 EINVAL");
  EXPECT_EQ(r[2], "-1 E2BIG");
}

TEST_F(PolicyAll, StatScansFindTheObjectsOfEveryNode) {
  // Objects homed on node2 and node3 and a private one on node1: a scan on node1, as ipcs does it without /proc,
  // finds all three, and the *_INFO count includes them.
  for (std::string t : {"sem", "msg", "shm"}) {
    SCOPED_TRACE(t);
    auto make = [&](int node, const std::string& key) {
      std::string cmd = t == "sem" ? "semget:" + key + ":1:creat+0600"
                        : t == "msg" ? "msgget:" + key + ":creat+0600"
                                     : "shmget:" + key + ":8192:creat+0600";
      std::string id = field(op(node, {cmd}), t + "get");
      EXPECT_TRUE(is_dipc_id(id)) << id;
      return id;
    };
    std::string a = make(2, "0x5a0001"), b = make(3, "0x5a0002"), p = make(1, "0");
    for (std::string any : {"", ":any"}) {
      std::string out = op(1, {"scan:" + t + any});
      EXPECT_EQ(scan_result(out), "3 used=3 keys=0,0x5a0001,0x5a0002") << out;
    }
    // The kernel of node1 alone knows none of them, but for the kernel set (queue) behind the semaphore set (message
    // queue) homed there (docs/ARCHITECTURE.md, "Semaphores homed here", "Message queues homed here"), which the
    // preload's scan hides.
    if (c().namespaced()) {
      EXPECT_EQ(scan_result(op(1, {"scan:" + t}, false)), t == "shm" ? "0 used=0 keys=" : "1 used=1 keys=0");
    }
    std::string rm = t == "sem" ? "semrm:" : t == "msg" ? "msgrm:" : "shmrm:";
    op(2, {rm + a});
    EXPECT_EQ(scan_result(op(1, {"scan:" + t})), "2 used=2 keys=0,0x5a0002");
    op(1, {rm + b, rm + p});
  }
}

TEST_F(PolicyAll, LimitsLoweredAtRunTimeApplyToTheNextCreate) {
  if (!c().namespaced()) GTEST_SKIP() << "needs root: the sysctls are those of a node's own IPC namespace";
  // The home is the creating node; its kernel's limits are read when they are checked, as the kernel does.
  sh(1, "echo 0 > /proc/sys/kernel/msgmni");
  EXPECT_EQ(field(op(1, {"msgget:0x5b0001:creat+0600"}, false), "msgget"), "-1 ENOSPC");  // the kernel
  EXPECT_EQ(field(op(1, {"msgget:0x5b0001:creat+0600"}), "msgget"), "-1 ENOSPC");         // dipc
  sh(1, "echo 32000 > /proc/sys/kernel/msgmni");
  std::string q = field(op(1, {"msgget:0x5b0001:creat+0600"}), "msgget");
  EXPECT_TRUE(is_dipc_id(q)) << q;
  sh(1, "echo 4096 > /proc/sys/kernel/shmmax");
  EXPECT_EQ(field(op(1, {"shmget:0x5b0002:8192:creat+0600"}, false), "shmget"), "-1 EINVAL");
  EXPECT_EQ(field(op(1, {"shmget:0x5b0002:8192:creat+0600"}), "shmget"), "-1 EINVAL");
  // msgmax, checked by every msgsnd, is re-read at most every 50 ms: the lowered value applies within that.
  sh(1, "echo 2048 > /proc/sys/kernel/msgmax");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  std::string snd;
  do {
    snd = field(op(1, {"msgsnd:" + q + ":1:" + std::string(3000, 'x') + ":nowait"}), "msgsnd");
  } while (snd != "-1 EINVAL" && std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(snd, "-1 EINVAL");
  sh(1, "echo 18446744073692774399 > /proc/sys/kernel/shmmax; echo 8192 > /proc/sys/kernel/msgmax");
  std::string s = field(op(1, {"shmget:0x5b0002:8192:creat+0600"}), "shmget");
  EXPECT_TRUE(is_dipc_id(s)) << s;
  op(1, {"msgrm:" + q, "shmrm:" + s});
}

TEST_F(PolicyAll, ShmHugetlbIsCheckedAsTheKernelChecksIt) {
  // Root: the kernel's answer (ENOMEM on a machine without free huge pages, an id with a free one) is dipc's. An
  // unprivileged user outside vm.hugetlb_shm_group: EPERM from both. With huge pages when the test may add two
  // (root on the host: the kernel may grant fewer, and then both answer ENOMEM again).
  for (long more : {0L, 2L})
  for (bool nobody : {false, true}) {
    SCOPED_TRACE(std::string(nobody ? "nobody" : "root") + ", huge pages added: " + std::to_string(more));
    HugePages pages(more);
    std::vector<std::string> pre;
    if (nobody) pre = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"};
    auto run = [&](bool preload) {
      std::vector<std::string> argv = pre;
      argv.push_back(SimCluster::prog("ipcop"));
      argv.push_back("shmget:0:4096:creat+huge+0600");
      argv.push_back("shmrm:@");
      auto r = c().run(1, argv, 30, preload);
      EXPECT_EQ(r.status, 0) << r.err;
      return field(r.out, "shmget");
    };
    std::string k = run(false), d = run(true);
    if (k.substr(0, 2) != "-1") {
      EXPECT_TRUE(is_dipc_id(d)) << d;
    } else {
      EXPECT_EQ(d, k);
    }
  }
}

// Busy processes, one more than there are CPUs, killed and reaped at the end of the scope.
struct CpuLoad {
  std::vector<pid_t> pids;
  CpuLoad() {
    long n = sysconf(_SC_NPROCESSORS_ONLN) + 1;
    for (long i = 0; i < n; ++i) {
      pid_t p = fork();
      if (p == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (volatile unsigned long x = 0;;) x = x + 1ul;
      }
      if (p > 0) pids.push_back(p);
    }
  }
  ~CpuLoad() {
    for (pid_t p : pids) ::kill(p, SIGKILL);
    for (pid_t p : pids) waitpid(p, nullptr, 0);
  }
};

TEST_F(PolicyAll, ACallerSeenSleepingIsRegisteredAtTheHome) {
  // A process on the home node removes the object the moment it sees a caller on another node sleeping in
  // semop/msgrcv (state S): the sleeper must get EIDRM, as with the kernel, never EINVAL (its request not yet at
  // the home). With the CPU loaded, over many rounds.
  CpuLoad load;
  constexpr int kRounds = 60;
  int eidrm = 0;
  for (int round = 0; round < kRounds; ++round) {
    bool sem = round % 2 == 0;
    std::string id = field(op(2, {sem ? "semget:0:2:creat+0600" : "msgget:0:creat+0600"}), sem ? "semget" : "msgget");
    ASSERT_TRUE(is_dipc_id(id)) << id;
    std::string go = c().dir() + "/go." + std::to_string(round);
    // DIPC_SPIN_US=0: no answer polling to hide a sleep before the wait is registered.
    auto b = c().spawn(1, {SimCluster::prog("blocker"), "none", sem ? "sem" : "msgrcv", id},
                       {"BLOCKER_GO=" + go, "DIPC_SPIN_US=0"});
    ASSERT_TRUE(c().wait_output(b, "ready", 30));
    auto w = c().spawn(2, {SimCluster::prog("rmwatch"), sem ? "sem" : "msg", id, std::to_string(b.pid)});
    ASSERT_TRUE(c().wait_output(w, "watching", 30));
    std::ofstream(go).put('\n');
    auto wr = c().wait(w, 60);
    auto br = c().wait(b, 60);
    EXPECT_EQ(field(wr.out, "rm"), "0") << "round " << round;
    EXPECT_EQ(field(br.out, "result"), "-1 EIDRM") << "round " << round;
    eidrm += field(br.out, "result") == "-1 EIDRM";
  }
  EXPECT_EQ(eidrm, kRounds);
}

TEST_F(PolicyAll, ForkUnderLoadKeepsEveryInheritedAttach) {
  // Many attaches, all of removed segments that the parent detaches the moment fork() returns: only the child's
  // inherited attaches keep them alive, so fork() must have had them counted at the home before it returned (as
  // the kernel counts them in dup_mmap()); the child reads and writes every one. With the CPU loaded.
  CpuLoad load;
  auto r = c().run(1, {SimCluster::prog("forkshm"), "30", "8"}, 240);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(field(r.out, "rounds"), "30 bad=0") << r.err;
  EXPECT_EQ(r.err.find("could not be registered"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("not kept coherent"), std::string::npos) << r.err;
}

TEST_F(PolicyAll, StaticBinariesRunDistributedUnderDipcLaunchSeccomp) {
  // A statically linked program, which no LD_PRELOAD library reaches, run on two nodes by dipc-launch --seccomp
  // (under dipc-exec): the ranks share one queue homed on a node, the receiver blocking until the sender sends.
  std::string prog = SimCluster::prog("ipcop-static");
  auto r = c().run(1,
                   {SimCluster::bin("dipc-launch"), "--sim", c().dir(), "--seccomp", "--timeout", "60", "-H", "node1",
                    prog, "msgget:0x5c0001:creat+0666", "msgsnd:@:5:static:0", ":", "-H", "node2", prog,
                    "msgget:0x5c0001:creat+0666", "msgrcv:@:0:100:0", "msgrm:@"},
                   90, false);
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(field(r.out, "msgrcv"), "6 type=5 text=static") << r.out << r.err;
  auto ids = fields(r.out, "msgget");
  ASSERT_EQ(ids.size(), 2u) << r.out;
  EXPECT_EQ(ids[0], ids[1]);
  EXPECT_TRUE(is_dipc_id(ids[0])) << ids[0];
  // Without dipc-exec the same binary ignores the preload and reaches the node's kernel: a kernel id.
  std::string k = field(c().run(1, {prog, "msgget:0x5c0002:creat+0666", "msgrm:@"}, 30).out, "msgget");
  EXPECT_FALSE(k.empty() || k[0] == '-' || is_dipc_id(k)) << k;
}

TEST_F(PolicyAll, AReattachIsCheckedAsTheFirstAttachWasAsTheKernelChecksIt) {
  // The preload keeps a segment's view descriptor after a detach, so that attaching it again costs less: the rights
  // must still be checked at every attach (an owner who took write permission away gets EACCES), and an id whose
  // segment is gone must not reach the old memory. The same calls against the kernel give the same lines.
  std::vector<std::string> argv = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                   SimCluster::prog("ipcop"), "shmget:0x5c0004:4096:creat+excl+0600",
                                   "shmat:@:0", "shmdt", "shmat:@:0", "shmdt", "shmset:@:0400", "shmat:@:0",
                                   "shmat:@:rdonly", "shmnattch:@", "shmdt", "shmset:@:0600", "shmat:@:0", "shmdt",
                                   "shmrm:@", "shmat:@:0", "shmnattch:@"};
  auto k = c().run(1, argv, 30, false), d = c().run(1, argv, 30, true);
  ASSERT_EQ(k.status, 0) << k.err;
  ASSERT_EQ(d.status, 0) << d.err;
  EXPECT_EQ(fields(k.out, "shmat"), (std::vector<std::string>{"0", "0", "-1 EACCES", "0", "0", "-1 EINVAL"})) << k.out;
  EXPECT_EQ(fields(d.out, "shmat"), fields(k.out, "shmat")) << d.out << d.err;
  EXPECT_EQ(fields(d.out, "shmnattch"), fields(k.out, "shmnattch")) << d.out << d.err;
  EXPECT_EQ(fields(d.out, "shmrm"), std::vector<std::string>{"0"}) << d.out << d.err;
}

TEST_F(PolicyAll, StaticBinariesAttachDistributedSegmentsCoherently) {
  // A static binary under dipc-exec (which maps the segment into it by ptrace system call injection) on node1
  // attaches a segment homed on node2: it reads what a program on node2 wrote, writes, and node2 reads that; both
  // ways. shm_nattch counts its attach and shmdt takes it back, as the kernel's.
  std::string stat = SimCluster::prog("ipcop-static"), dyn = SimCluster::prog("ipcop");
  auto h =
      c().run(2, {dyn, "shmget:0x5c0003:8192:creat+0666", "shmat:@:0", "shmwrite:0:11", "shmwrite:4096:12", "shmdt"});
  ASSERT_EQ(h.status, 0) << h.err;
  std::string id = field(h.out, "shmget");
  ASSERT_TRUE(is_dipc_id(id)) << h.out << h.err;
  for (int round = 0; round < 2; ++round) {
    auto r = c().run(1,
                     {SimCluster::bin("dipc-exec"), stat, "shmget:0x5c0003:8192:0666", "shmat:@:0", "shmnattch:@",
                      "shmread:0", "shmread:4096", "shmwrite:0:21", "shmwrite:4096:22", "shmat:@:rdonly",
                      "shmread:4096", "shmnattch:@", "shmdt", "shmnattch:@"},
                     60);
    EXPECT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_EQ(field(r.out, "shmget"), id) << r.out << r.err;
    EXPECT_EQ(fields(r.out, "shmat"), (std::vector<std::string>{"0", "0"})) << r.out << r.err;
    // shmdt detaches the last attach (the read-only one); exit takes the other.
    EXPECT_EQ(fields(r.out, "shmnattch"), (std::vector<std::string>{"1", "2", "1"})) << r.out << r.err;
    EXPECT_EQ(fields(r.out, "shmread"), (std::vector<std::string>{round ? "31" : "11", round ? "32" : "12", "22"}))
        << r.out << r.err;
    EXPECT_EQ(field(r.out, "shmdt"), "0") << r.out << r.err;
    // PROG exited: its remaining attach is gone with it (dipcd saw dipc-exec's connection close).
    auto d = c().run(2, {dyn, "shmget:0x5c0003:8192:0666", "shmnattch:@", "shmat:@:0", "shmread:0", "shmread:4096",
                         "shmwrite:0:31", "shmwrite:4096:32", "shmdt"});
    EXPECT_EQ(d.status, 0) << d.err;
    EXPECT_EQ(field(d.out, "shmnattch"), "0") << d.out << d.err;
    EXPECT_EQ(fields(d.out, "shmread"), (std::vector<std::string>{"21", "22"})) << d.out << d.err;
  }
  // A fork()ed child of the static program is not traced, so nobody would keep its view coherent: it does not
  // inherit the attach (an access faults), where the kernel's child would read it (README).
  auto f = c().run(1,
                   {SimCluster::bin("dipc-exec"), stat, "shmget:0x5c0003:8192:0666", "shmat:@:0", "shmread:0",
                    "forkread:0", "shmdt"},
                   60);
  EXPECT_EQ(f.status, 0) << f.out << f.err;
  EXPECT_EQ(field(f.out, "shmread"), "31") << f.out << f.err;
  EXPECT_EQ(field(f.out, "forkread"), "signal SEGV") << f.out << f.err;
  EXPECT_EQ(field(f.out, "shmdt"), "0") << f.out << f.err;
  EXPECT_EQ(field(op(2, {"shmget:0x5c0003:8192:0666", "shmrm:@"}), "shmrm"), "0");
}

TEST_F(PolicyAll, StaticBinariesShmatAndShmdtErrorsAreTheKernels) {
  // Missing rights, an id nobody knows, a removed segment, shmdt of an address that is no attach any more: the same
  // errno under dipc-exec (as user nobody) as from the kernel; an IPC_PRIVATE segment is attached and written.
  std::vector<std::string> cmds = {"shmget:0x5c0005:4096:creat+excl+0600",
                                   "shmset:@:0400",
                                   "shmat:@:0",
                                   "shmat:@:rdonly",
                                   "shmdt",
                                   "shmdt",
                                   "shmat:1073754169:0",
                                   "shmrm:@",
                                   "shmat:@:0",
                                   "shmget:0:4096:creat+0600",
                                   "shmat:@:0",
                                   "shmwrite:0:5",
                                   "shmread:0",
                                   "shmdt",
                                   "shmrm:@"};
  std::vector<std::string> user = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"};
  auto k = user;
  k.push_back(SimCluster::prog("ipcop-static"));
  k.insert(k.end(), cmds.begin(), cmds.end());
  auto d = user;
  d.push_back(SimCluster::bin("dipc-exec"));
  d.push_back(SimCluster::prog("ipcop-static"));
  d.insert(d.end(), cmds.begin(), cmds.end());
  auto kr = c().run(1, k, 30, false), dr = c().run(1, d, 30, true);
  ASSERT_EQ(kr.status, 0) << kr.err;
  ASSERT_EQ(dr.status, 0) << dr.out << dr.err;
  EXPECT_EQ(fields(kr.out, "shmat"), (std::vector<std::string>{"-1 EACCES", "0", "-1 EINVAL", "-1 EINVAL", "0"}))
      << kr.out;
  EXPECT_EQ(fields(dr.out, "shmat"), fields(kr.out, "shmat")) << dr.out << dr.err;
  EXPECT_EQ(fields(dr.out, "shmdt"), fields(kr.out, "shmdt")) << dr.out << dr.err;
  EXPECT_EQ(fields(dr.out, "shmread"), std::vector<std::string>{"5"}) << dr.out << dr.err;
  auto ids = fields(dr.out, "shmget");
  ASSERT_EQ(ids.size(), 2u) << dr.out;
  EXPECT_TRUE(is_dipc_id(ids[0])) << dr.out;
}

TEST_F(PolicyAll, StaticBinariesKeepTheirSignalsAndExitStatusUnderTracing) {
  // dipc-exec traces its program (for shmat): a stop and a continue still pass, a signal it waits for still comes,
  // a fatal signal still gives 128 + its number, an exit status passes. (Each wait below is bounded: 10 s.)
  std::string stat = SimCluster::prog("ipcop-static");
  std::string exec = SimCluster::bin("dipc-exec");
  std::string wait_line = "for i in $(seq 1 200); do grep -q LINE $o && break; sleep 0.05; done; c=$(pgrep -P $p); ";
  auto waiting = [&](const std::string& line) {
    std::string w = wait_line;
    return w.replace(w.find("LINE"), 4, line);
  };
  auto r = c().run(1,
                   {"/bin/sh", "-c",
                    "o=$(mktemp); " + exec + " " + stat +
                        " semget:0x5c0006:1:creat+0666 pause print:after >$o & "
                        "p=$!; " +
                        waiting("paused") +
                        "kill -STOP $c; for i in $(seq 1 200); do "
                        "grep -q '^State:.[Tt]' /proc/$c/status && break; sleep 0.05; done; "
                        "grep '^State' /proc/$c/status; "
                        "kill -CONT $c; kill -USR1 $c; wait $p; echo status=$?; cat $o; rm -f $o"},
                   60, true);
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  // Stopped: "t (tracing stop)" in /proc now that it is traced, as stopped for every purpose.
  EXPECT_TRUE(r.out.find("State:\tT") != std::string::npos || r.out.find("State:\tt") != std::string::npos)
      << r.out << r.err;
  EXPECT_NE(r.out.find("\nafter\n"), std::string::npos) << r.out << r.err;
  EXPECT_EQ(field(r.out, "status"), "0") << r.out << r.err;
  auto s = c().run(1,
                   {"/bin/sh", "-c",
                    "o=$(mktemp); " + exec + " " + stat + " semget:0x5c0006:1:0666 semrm:@ hold >$o & p=$!; " +
                        waiting("held") + "kill -TERM $c; wait $p; echo status=$?; rm -f $o"},
                   60, true);
  EXPECT_EQ(field(s.out, "status"), "143") << s.out << s.err;
  auto e = c().run(1, {exec, stat, "unknown-command"}, 30, true);
  EXPECT_EQ(e.status, 2) << e.out << e.err;
}

}  // namespace
}  // namespace dipc::test

namespace dipc::test {
namespace {

// The kernel id of the private kernel set on `node` with nsems semaphores and mode `mode` ("" if none), from the
// node's /proc/sysvipc/sem (key, semid, perms, nsems, ...), read without the preload.
std::string kernel_set(SimCluster& c, int node, int nsems, const std::string& mode) {
  auto r = c.run(node, {"/bin/sh", "-c", "awk '$1 == 0 && $3 == " + mode + " && $4 == " + std::to_string(nsems) +
                                              " {print $2}' /proc/sysvipc/sem"},
                 10, false);
  std::string out = r.out;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

TEST_F(PolicyAll, SemaphoresHomedHereAreKernelSetsTheHomesProgramsUseDirectly) {
  // A set homed on node1 is a kernel set in node1's IPC namespace: node1's programs operate on it with the kernel's
  // own semop (issue 9 item 9: the kernel's speed), node2's through dipcd; both see one set, and the kernel checks
  // node1's programs against the set's owner and mode.
  if (!c().namespaced()) GTEST_SKIP() << "needs an IPC namespace per node (root)";
  std::string id = field(op(1, {"semget:0x5a1001:2:creat+0640"}), "semget");
  ASSERT_TRUE(is_dipc_id(id)) << id;
  std::string kid = kernel_set(c(), 1, 2, "640");
  ASSERT_FALSE(kid.empty()) << "no kernel set of 2 semaphores, mode 640, on node1";
  ASSERT_EQ(kid.find('\n'), std::string::npos) << kid;
  EXPECT_EQ(field(op(2, {"setval:" + id + ":0:7"}), "setval"), "0");  // node2: dipcd acts on the kernel set
  EXPECT_EQ(field(op(1, {"getval:" + kid + ":0"}, false), "getval"), "7");
  EXPECT_EQ(field(op(1, {"semop:" + id + ":0/-2/0"}), "semop"), "0");  // node1: the kernel set itself
  EXPECT_EQ(field(op(1, {"getval:" + kid + ":0"}, false), "getval"), "5");
  EXPECT_EQ(field(op(2, {"getval:" + id + ":0"}), "getval"), "5");

  // A caller of node2 that must wait sleeps in the kernel set's queue: node1's GETNCNT counts it, node1's semop
  // wakes it.
  auto b = c().spawn(2, {SimCluster::prog("blocker"), "none", "sem", id});
  ASSERT_TRUE(c().wait_output(b, "blocking", 30));
  std::string ncnt;
  for (auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
       ncnt != "1" && std::chrono::steady_clock::now() < end;)
    ncnt = field(op(1, {"getncnt:" + id + ":1"}), "getncnt");
  EXPECT_EQ(ncnt, "1");
  EXPECT_EQ(field(op(1, {"semop:" + id + ":1/1/0"}), "semop"), "0");
  auto br = c().wait(b, 30);
  EXPECT_EQ(field(br.out, "result"), "0") << br.out;
  EXPECT_EQ(field(op(1, {"getval:" + kid + ":0"}, false), "getval"), "6");

  // Mode 0640, owner root: nobody on node1 may neither read nor alter, as the kernel says (EACCES).
  auto nobody = c().run(1, {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SimCluster::prog("ipcop"),
                            "getval:" + id + ":0", "semop:" + id + ":0/1/nowait"});
  EXPECT_EQ(field(nobody.out, "getval"), "-1 EACCES") << nobody.out << nobody.err;
  EXPECT_EQ(field(nobody.out, "semop"), "-1 EACCES") << nobody.out << nobody.err;

  // IPC_RMID through dipc removes the kernel set.
  EXPECT_EQ(field(op(1, {"semrm:" + id}), "semrm"), "0");
  EXPECT_EQ(kernel_set(c(), 1, 2, "640"), "");
  EXPECT_EQ(field(op(1, {"getval:" + id + ":0"}), "getval"), "-1 EINVAL");
}

// The kernel id of the private kernel queue on `node` with mode `mode` ("" if none), from the node's
// /proc/sysvipc/msg (key, msqid, perms, ...), read without the preload.
std::string kernel_queue(SimCluster& c, int node, const std::string& mode) {
  auto r = c.run(node, {"/bin/sh", "-c", "awk '$1 == 0 && $3 == " + mode + " {print $2}' /proc/sysvipc/msg"}, 10, false);
  std::string out = r.out;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// Waits (bounded) until process `pid` sleeps (state S): for a dipc call, registered at its home.
bool sleeping(pid_t pid) {
  for (auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30); std::chrono::steady_clock::now() < end;) {
    std::string st = slurp("/proc/" + std::to_string(pid) + "/stat");
    size_t e = st.rfind(')');
    if (e != std::string::npos && e + 2 < st.size() && st[e + 2] == 'S') return true;
    sched_yield();
  }
  return false;
}

TEST_F(PolicyAll, QueuesHomedHereAreKernelQueuesTheHomesProgramsUseDirectly) {
  // A queue homed on node1 is a kernel queue in node1's IPC namespace: node1's programs call msgsnd/msgrcv on it
  // (issue 9 item 9: the kernel's speed), node2's go through dipcd; both see one queue, the kernel checks node1's
  // programs against the queue's owner and mode, and node2's as themselves.
  if (!c().namespaced()) GTEST_SKIP() << "needs an IPC namespace per node (root)";
  std::string id = field(op(1, {"msgget:0x5a1002:creat+0640"}), "msgget");
  ASSERT_TRUE(is_dipc_id(id)) << id;
  std::string kid = kernel_queue(c(), 1, "640");
  ASSERT_FALSE(kid.empty()) << "no kernel queue of mode 640 on node1";
  ASSERT_EQ(kid.find('\n'), std::string::npos) << kid;
  // node2's message lands in the kernel queue; msg_lspid is the sender's pid on its node.
  auto out2 = op(2, {"pid", "msgsnd:" + id + ":5:remote:0"});
  EXPECT_EQ(field(out2, "msgsnd"), "0");
  EXPECT_EQ(field(op(1, {"msgrcv:" + kid + ":0:100:nowait+copy"}, false), "msgrcv"), "6 type=5 text=remote");
  EXPECT_EQ(field(op(1, {"msgpids:" + id}), "msgpids"), "0 lspid=" + field(out2, "pid") + " lrpid=0");
  // node1's programs use the kernel queue itself.
  auto out1 = op(1, {"pid", "msgrcv:" + id + ":0:100:nowait", "msgsnd:" + id + ":7:local:0"});
  EXPECT_EQ(field(out1, "msgrcv"), "6 type=5 text=remote");
  EXPECT_EQ(field(op(1, {"msgstat:" + kid}, false), "msgstat").substr(0, 17), "0 qnum=1 cbytes=5");
  std::string pid1 = field(out1, "pid");
  EXPECT_EQ(field(op(2, {"msgpids:" + id}), "msgpids"), "0 lspid=" + pid1 + " lrpid=" + pid1);
  EXPECT_EQ(field(op(2, {"msgrcv:" + id + ":0:100:nowait"}), "msgrcv"), "5 type=7 text=local");

  // A receiver of node2 that must wait sleeps in the kernel queue; node1's msgsnd wakes it.
  auto b = c().spawn(2, {SimCluster::prog("blocker"), "none", "msgrcv", id});
  ASSERT_TRUE(c().wait_output(b, "blocking", 30));
  ASSERT_TRUE(sleeping(b.pid));
  EXPECT_EQ(field(op(1, {"msgsnd:" + id + ":3:wake:0"}), "msgsnd"), "0");
  EXPECT_EQ(field(c().wait(b, 30).out, "result"), "4");

  // Mode 0640, owner root: nobody on node1 may neither read nor write, as the kernel says (EACCES).
  auto nobody = c().run(1, {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SimCluster::prog("ipcop"),
                            "msgsnd:" + id + ":1:x:nowait", "msgrcv:" + id + ":0:10:nowait"});
  EXPECT_EQ(field(nobody.out, "msgsnd"), "-1 EACCES") << nobody.out << nobody.err;
  EXPECT_EQ(field(nobody.out, "msgrcv"), "-1 EACCES") << nobody.out << nobody.err;

  // A receiver of node2 waiting as nobody loses its right when the owner takes it away (IPC_SET): the kernel wakes
  // it and checks it again, as nobody, as it would a local receiver: EACCES (never dipcd's root rights).
  std::string open_id = field(op(1, {"msgget:0x5a1003:creat+0666"}), "msgget");
  auto nb = c().spawn(2, {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SimCluster::prog("blocker"),
                          "none", "msgrcv", open_id});
  ASSERT_TRUE(c().wait_output(nb, "blocking", 30));
  ASSERT_TRUE(sleeping(nb.pid));
  EXPECT_EQ(field(op(1, {"msgset:" + open_id + ":0600"}), "msgset"), "0");
  EXPECT_EQ(field(c().wait(nb, 30).out, "result"), "-1 EACCES");

  // IPC_RMID through dipc removes the kernel queue.
  EXPECT_EQ(field(op(1, {"msgrm:" + id, "msgrm:" + open_id}), "msgrm"), "0");
  EXPECT_EQ(kernel_queue(c(), 1, "640"), "");
  EXPECT_EQ(field(op(1, {"msgsnd:" + id + ":1:x:nowait"}), "msgsnd"), "-1 EINVAL");
}

TEST_F(PolicyAll, AKernelSetLeftByACrashedDaemonIsRemovedAtItsNextStart) {
  // dipcd killed with SIGKILL leaves its kernel sets and queues behind; the next start removes them before it hands
  // out any id, so a process holding the old kernel id finds nothing (EINVAL), never an object of the new
  // incarnation.
  if (!c().namespaced()) GTEST_SKIP() << "needs an IPC namespace per node (root)";
  std::string id = field(op(3, {"semget:0:3:creat+0604"}), "semget");
  ASSERT_TRUE(is_dipc_id(id)) << id;
  std::string kid = kernel_set(c(), 3, 3, "604");
  ASSERT_FALSE(kid.empty());
  std::string qid = field(op(3, {"msgget:0:creat+0602"}), "msgget");
  ASSERT_TRUE(is_dipc_id(qid)) << qid;
  std::string kqid = kernel_queue(c(), 3, "602");
  ASSERT_FALSE(kqid.empty());
  std::string pid = slurp(c().dir() + "/node3.dipcd.pid");
  ASSERT_FALSE(pid.empty());
  pid_t p = std::stoi(pid);
  ASSERT_EQ(::kill(p, SIGKILL), 0);
  auto dead = [p] {
    std::string st = slurp("/proc/" + std::to_string(p) + "/stat");
    size_t e = st.rfind(')');
    return st.empty() || (e != std::string::npos && e + 2 < st.size() && st[e + 2] == 'Z');
  };
  for (auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
       !dead() && std::chrono::steady_clock::now() < end;)
    sched_yield();
  ASSERT_TRUE(dead());
  ASSERT_TRUE(c().start_daemon(3));
  EXPECT_EQ(kernel_set(c(), 3, 3, "604"), "");
  EXPECT_EQ(field(op(3, {"getval:" + kid + ":0"}, false), "getval"), "-1 EINVAL");
  EXPECT_EQ(field(op(3, {"getval:" + id + ":0"}), "getval"), "-1 EINVAL");
  EXPECT_EQ(kernel_queue(c(), 3, "602"), "");
  EXPECT_EQ(field(op(3, {"msgsnd:" + kqid + ":1:x:nowait"}, false), "msgsnd"), "-1 EINVAL");
  EXPECT_EQ(field(op(3, {"msgsnd:" + qid + ":1:x:nowait"}), "msgsnd"), "-1 EINVAL");
}

}  // namespace
}  // namespace dipc::test
