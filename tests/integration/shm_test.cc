// Integration tests of distributed System V shared memory: plain SysV C programs (tests/progs/shm_tool.c,
// tests/progs/shm_work.c) under libdipc.so on simulated nodes. The segment must behave as on a multiprocessor:
// plain loads and stores see each other across nodes with no explicit synchronisation, lock-prefixed atomics are
// atomic cluster-wide, and the SysV calls (shmget/shmat/shmdt/shmctl) mean what they mean on one kernel.
//
// The workloads check themselves (they exit 1 on a failed check and print what went wrong on stderr); the tests also
// check their name=value lines. Every wait is bounded: a process's output or exit, or polling a condition with fresh
// processes up to a deadline; none sleeps for a guessed time.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <cstdio>
#include <functional>
#include <memory>
#include <sstream>

#include "tests/harness/sim_cluster.h"
#include "tests/integration/hugepages.h"
#include "tests/integration/output.h"

namespace dipc::test {
namespace {

using Clock = std::chrono::steady_clock;

// "0 key=0 segsz=8192 nattch=2 ..." -> the value of `name` in it.
std::string kv(const std::string& line, const std::string& name) {
  std::istringstream is(line);
  std::string word;
  while (is >> word)
    if (word.rfind(name + "=", 0) == 0) return word.substr(name.size() + 1);
  return "<no " + name + " in '" + line + "'>";
}

std::string key(int test) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", 0x5e000000 + test);
  return buf;
}

constexpr long kPage = 4096;
constexpr const char* kTimeoutEnv = "SHM_TIMEOUT=150";  // the workloads' own bound, below the harness's wait of 180 s

class Shm : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { cluster_ = std::make_unique<SimCluster>(SimCluster::Options{.nodes = 3}); }
  static void TearDownTestSuite() { cluster_.reset(); }
  virtual SimCluster& c() { return *cluster_; }
  static std::unique_ptr<SimCluster> cluster_;

  // Runs shm_tool with the commands on a node; expects exit 0 and returns its stdout.
  std::string tool(int node, std::vector<std::string> cmds, int timeout_s = 60) {
    cmds.insert(cmds.begin(), SimCluster::prog("shm_tool"));
    auto r = c().run(node, cmds, timeout_s, {kTimeoutEnv});
    EXPECT_EQ(r.status, 0) << "node" << node << ": " << r.out << r.err;
    return r.out;
  }
  // The same as user nobody (setpriv, as the cluster tests do).
  std::string tool_as_nobody(int node, std::vector<std::string> cmds) {
    std::vector<std::string> argv = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                     SimCluster::prog("shm_tool")};
    argv.insert(argv.end(), cmds.begin(), cmds.end());
    auto r = c().run(node, argv, 60, {kTimeoutEnv});
    EXPECT_EQ(r.status, 0) << r.out << r.err;
    return r.out;
  }
  // A fresh distributed segment (IPC_CREAT|IPC_EXCL|IPC_DIPC) made on `node`; returns its id.
  std::string create(int node, const std::string& k, long size, const std::string& mode = "0666") {
    std::string out = tool(node, {"get:" + k + ":" + std::to_string(size) + ":creat+excl+dipc+" + mode});
    std::string id = field(out, "get");
    EXPECT_TRUE(!id.empty() && id[0] != '-') << out;
    return id;
  }
  SimCluster::Proc work(int node, std::vector<std::string> args) {
    args.insert(args.begin(), SimCluster::prog("shm_work"));
    return c().spawn(node, args, {kTimeoutEnv});
  }
  // Waits for a workload and checks that it passed its own checks; returns its stdout.
  std::string finish(SimCluster::Proc& p, const std::string& what) {
    auto r = c().wait(p, 180);
    EXPECT_EQ(r.status, 0) << what << ":\n" << r.out << r.err;
    return r.out;
  }
  // Polls (a fresh shm_tool on `node` each time) until pred(its output) holds; bounded.
  bool wait_tool(int node, const std::vector<std::string>& cmds, const std::function<bool(const std::string&)>& pred,
                 int timeout_s = 30) {
    auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    do {
      if (pred(tool(node, cmds))) return true;
    } while (Clock::now() < deadline);
    return false;
  }
  std::string nattch(int node, const std::string& id) { return kv(field(tool(node, {"stat:" + id}), "stat"), "nattch"); }
};
std::unique_ptr<SimCluster> Shm::cluster_;

TEST_F(Shm, NodesAreIsolatedSoOnlyIpcDipcSegmentsAreShared) {
  if (!c().namespaced()) GTEST_SKIP() << "needs root for network and IPC namespaces";
  // A plain kernel segment made on node1 is invisible on node2: whatever the other tests see crossed dipc.
  const std::string k = key(13);
  std::string out = tool(1, {"get:" + k + ":4096:creat+excl+0666", "at", "w:0:5", "dt"});
  EXPECT_NE(field(out, "get").substr(0, 2), "-1") << out;
  EXPECT_EQ(field(tool(2, {"get:" + k + ":4096:0666"}), "get"), "-1 ENOENT");
  EXPECT_EQ(field(tool(1, {"get:" + k + ":4096:0666", "rm"}), "rm"), "0");
  // The same calls with IPC_DIPC name one segment cluster-wide.
  std::string id = create(1, k, kPage);
  tool(1, {"at:" + id, "w:0:6"});
  out = tool(2, {"get:" + k + ":4096:dipc+0666", "at", "r:0", "rm"});
  EXPECT_EQ(field(out, "get"), id);
  EXPECT_EQ(field(out, "r"), "6");
}

TEST_F(Shm, MessagePassingLitmusWriterOnOneNodeReaderOnAnother) {
  // Data on one page, the flag on another: a reader that saw round r's flag must see all of round r's data.
  // DIPC_LITMUS_ROUNDS: fewer rounds where each costs much more (the verbs run under Soft-RoCE emulation, about 0.45 s
  // a round on a loaded host: 1000 rounds would outlast the workload's bound).
  const char* env_rounds = getenv("DIPC_LITMUS_ROUNDS");
  const std::string k = key(1), rounds = env_rounds && *env_rounds ? env_rounds : "1000";
  std::string id = create(1, k, 3 * kPage);
  auto reader = work(2, {"litmus", k, "reader", rounds});
  auto writer = work(1, {"litmus", k, "writer", rounds});
  std::string wout = finish(writer, "writer"), rout = finish(reader, "reader");
  EXPECT_EQ(field(rout, "mismatches"), "0");
  EXPECT_EQ(field(rout, "rounds"), rounds);
  EXPECT_EQ(field(wout, "rounds"), rounds);
  // A third node sees the last round's flag and ack.
  std::string out = tool(3, {"at:" + id, "r:" + std::to_string(kPage), "r:" + std::to_string(2 * kPage), "rm:" + id});
  EXPECT_EQ(fields(out, "r"), (std::vector<std::string>{rounds, rounds}));
}

TEST_F(Shm, ReadAheadCopiesAreCoherentAndInvalidatedLikeAnyOther) {
  // node2 reads pages 0..31 in order: its read-ahead windows grow to 32 pages, so pages 32..62 arrive as copies no
  // access asked for. node1 then writes them: those copies must be invalidated, and node2 reads the new values.
  const std::string k = key(17);
  constexpr int kPages = 64;
  std::string id = create(1, k, kPages * kPage);
  std::vector<std::string> w1{"at:" + id}, r2{"at:" + id}, w3{"at:" + id}, r4{"at:" + id};
  for (int i = 0; i < kPages; ++i) w1.push_back("w:" + std::to_string(i * kPage) + ":" + std::to_string(i + 1));
  for (int i = 0; i < 32; ++i) r2.push_back("r:" + std::to_string(i * kPage));
  for (int i = 32; i < 63; ++i) w3.push_back("w:" + std::to_string(i * kPage) + ":" + std::to_string(1000 + i));
  for (int i = 0; i < kPages; ++i) r4.push_back("r:" + std::to_string(i * kPage));
  tool(1, w1);
  std::vector<std::string> got = fields(tool(2, r2), "r");
  ASSERT_EQ(got.size(), 32u);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(got[static_cast<size_t>(i)], std::to_string(i + 1)) << "page " << i;
  tool(1, w3);
  got = fields(tool(2, r4), "r");
  ASSERT_EQ(got.size(), static_cast<size_t>(kPages));
  for (int i = 0; i < kPages; ++i)
    EXPECT_EQ(got[static_cast<size_t>(i)], std::to_string(i >= 32 && i < 63 ? 1000 + i : i + 1)) << "page " << i;
  tool(1, {"rm:" + id});
}

TEST_F(Shm, ASequentialReaderOnAnotherNodeTakesNoFaultPerPage) {
  // node2 reads 1 MiB written on node1 page by page. The read-ahead windows are installed straight into the
  // reader's page tables (UFFDIO_COPY into the attach that faulted): a fault per window, not one per page (its
  // attach is registered for write-protect faults, so the kernel maps no neighbouring pages at a fault).
  const std::string k = key(45);
  constexpr int kPages = 256;
  std::string id = create(1, k, kPages * kPage);
  EXPECT_EQ(field(tool(1, {"at:" + id, "sparsew:4096"}), "sparsew"), std::to_string(kPages + 1));  // + the last word
  std::string out = tool(2, {"at:" + id, "minflt", "sparsec:4096", "minflt", "rm:" + id});
  EXPECT_EQ(field(out, "sparsec"), "0") << out;
  std::vector<std::string> f = fields(out, "minflt");
  ASSERT_EQ(f.size(), 2u) << out;
  long faults = std::stol(f[1]) - std::stol(f[0]);
  EXPECT_LT(faults, kPages / 4) << "minor faults reading " << kPages << " pages: " << faults;
}

// A counter of `dipc status` on a node: the number after `label` on the line that has it (-1 if none).
long status_counter(SimCluster& cl, int node, const std::string& label) {
  std::string st = cl.run(node, {SimCluster::bin("dipc"), "status"}, 10, false).out;
  auto at = st.find(label + " ");
  return at == std::string::npos ? -1 : std::atol(st.c_str() + at + label.size() + 1);
}

TEST_F(Shm, ASequentialWriterOnAnotherNodeTakesAFaultPerWindowAndEveryNodeReadsWhatItWroteAndRewrote) {
  // node2 writes a word into every page of a fresh 4 MiB segment homed on node1, in order. Its write-ahead windows
  // (1, 2, 4, ... blocks, up to 1 MiB) are granted exclusive in one round trip each and installed writable at once:
  // node2's daemon handles a fault per window, not one per page. The pages so granted are node2's like any other
  // it wrote: node3 and the home read every word, and a write of the home afterwards is read on node2. A rewrite
  // by node2 of pages the two others hold read copies of invalidates them in runs (batched per holder).
  const std::string k = key(46);
  constexpr int kPages = 1024;
  std::string id = create(1, k, kPages * kPage);
  long faults0 = status_counter(c(), 2, "dsm faults"), ahead0 = status_counter(c(), 2, "pages written ahead");
  ASSERT_GE(faults0, 0);
  ASSERT_GE(ahead0, 0);
  EXPECT_EQ(field(tool(2, {"at:" + id, "sparsew:" + std::to_string(kPage)}), "sparsew"),
            std::to_string(kPages * kPage / 4096 + 1));
  long faults = status_counter(c(), 2, "dsm faults") - faults0;
  long ahead = status_counter(c(), 2, "pages written ahead") - ahead0;
  EXPECT_LT(faults, kPages / 16) << "node2 took about a fault per page writing " << kPages << " pages";
  EXPECT_GT(ahead, kPages / 2) << "node2's pages were not granted through write-ahead";
  EXPECT_EQ(field(tool(3, {"at:" + id, "sparsec:" + std::to_string(kPage)}), "sparsec"), "0");
  EXPECT_EQ(field(tool(1, {"at:" + id, "sparsec:" + std::to_string(kPage), "w:8:4242"}), "sparsec"), "0");
  EXPECT_EQ(field(tool(2, {"at:" + id, "r:8"}), "r"), "4242");
  // node1 and node3 hold read copies of every page now: node2 writing the first kRewrite pages again takes them
  // away window by window, one Invalidate per holder and run (and one acknowledgement), not one per page.
  constexpr int kRewrite = 256;
  std::vector<std::string> w2{"at:" + id}, r3{"at:" + id};
  for (int i = 0; i < kRewrite; ++i) {
    w2.push_back("w:" + std::to_string(i * kPage + 16) + ":" + std::to_string(7000 + i));
    r3.push_back("r:" + std::to_string(i * kPage + 16));
  }
  const long first_faults = faults;
  faults0 = status_counter(c(), 2, "dsm faults");
  tool(2, w2);
  faults = status_counter(c(), 2, "dsm faults") - faults0;
  EXPECT_LT(faults, kRewrite / 4) << "node2 took about a fault per page writing " << kRewrite << " read-shared pages";
  std::printf("node2: %ld faults writing %d fresh pages (%ld written ahead), %ld rewriting %d read-shared ones\n",
              first_faults, kPages, ahead, faults, kRewrite);
  std::vector<std::string> got = fields(tool(3, r3), "r");
  ASSERT_EQ(got.size(), static_cast<size_t>(kRewrite));
  for (int i = 0; i < kRewrite; ++i) EXPECT_EQ(got[static_cast<size_t>(i)], std::to_string(7000 + i)) << "page " << i;
  EXPECT_EQ(field(tool(1, {"at:" + id, "r:" + std::to_string(100 * kPage + 16), "rm:" + id}), "r"), "7100");
}

TEST_F(Shm, AtomicFetchAddFromTwoProcessesOnEachOfThreeNodesSumsExactly) {
  const std::string k = key(2);
  constexpr int kIters = 20000, kProcs = 6;
  std::string id = create(1, k, 2 * kPage);
  std::vector<SimCluster::Proc> ps;
  for (int i = 0; i < kProcs; ++i) ps.push_back(work(i % 3 + 1, {"counter", k, std::to_string(kIters), std::to_string(kProcs)}));
  for (auto& p : ps) EXPECT_EQ(field(finish(p, "counter"), "counter"), std::to_string(kIters * kProcs));
  EXPECT_EQ(field(tool(2, {"at:" + id, "r:0", "rm:" + id}), "r"), std::to_string(kIters * kProcs));
}

TEST_F(Shm, ThreadsOfProcessesOnThreeNodesFaultAndAddConcurrently) {
  // 4 threads in each of 3 processes (one per node): one process's threads fault on the same page and on their own
  // pages at once, all through the process's one userfaultfd.
  const std::string k = key(16);
  constexpr int kIters = 5000, kProcs = 3, kThreads = 4;
  std::string id = create(1, k, (kThreads + 2) * kPage);
  std::vector<SimCluster::Proc> ps;
  for (int i = 0; i < kProcs; ++i)
    ps.push_back(work(i + 1, {"tcounter", k, std::to_string(kIters), std::to_string(kProcs), std::to_string(kThreads)}));
  for (auto& p : ps) EXPECT_EQ(field(finish(p, "tcounter"), "counter"), std::to_string(kIters * kProcs * kThreads));
  tool(2, {"rm:" + id});
}

TEST_F(Shm, CasSpinlockGuardsPlainReadModifyWriteAcrossNodes) {
  const std::string k = key(3);
  constexpr int kIters = 2000, kProcs = 4;
  std::string id = create(2, k, 4 * kPage);
  std::vector<SimCluster::Proc> ps;
  for (int i = 0; i < kProcs; ++i) ps.push_back(work(i % 3 + 1, {"spinlock", k, std::to_string(kIters), std::to_string(kProcs)}));
  for (auto& p : ps) {
    std::string out = finish(p, "spinlock");
    EXPECT_EQ(field(out, "errors"), "0");
    EXPECT_EQ(field(out, "counter"), std::to_string(kIters * kProcs));
  }
  // The lock is free, the counter and its shadow agree.
  std::string out = tool(3, {"at:" + id, "r:0", "r:" + std::to_string(kPage), "r:" + std::to_string(3 * kPage), "rm:" + id});
  EXPECT_EQ(fields(out, "r"), (std::vector<std::string>{"0", std::to_string(kIters * kProcs), std::to_string(kIters * kProcs)}));
}

TEST_F(Shm, RandomizedWorkloadMatchesTheSequentialReference) {
  const std::string k = key(4), steps = "100", seed = "0x5eed1234", pages = "8";
  std::string id = create(3, k, 9 * kPage);
  std::vector<SimCluster::Proc> ps;
  for (int i = 0; i < 3; ++i) ps.push_back(work(i + 1, {"random", k, "3", std::to_string(i), steps, seed, pages}));
  for (auto& p : ps) {
    std::string out = finish(p, "random");
    EXPECT_EQ(field(out, "errors"), "0");
    EXPECT_EQ(field(out, "checks"), "101");
  }
  EXPECT_EQ(field(tool(1, {"at:" + id, "r:0", "rm:" + id}), "r"), "300");  // the turn word: all 3 x 100 turns taken
}

TEST_F(Shm, TwoWritersPingPongOnePageAcrossNodes) {
  const std::string k = key(5), rounds = "500";
  std::string id = create(2, k, kPage);
  auto a = work(1, {"pingpong", k, "0", rounds});
  auto b = work(3, {"pingpong", k, "1", rounds});
  for (auto* p : {&a, &b}) {
    std::string out = finish(*p, "pingpong");
    EXPECT_EQ(field(out, "errors"), "0");
    EXPECT_EQ(field(out, "counter"), "1000");
  }
  EXPECT_EQ(fields(tool(2, {"at:" + id, "r:0", "r:64", "rm:" + id}), "r"), (std::vector<std::string>{"1000", "1000"}));
}

TEST_F(Shm, DetachAndReattachKeepTheData) {
  const std::string k = key(6);
  std::string id = create(1, k, 2 * kPage);
  std::string out = tool(2, {"get:" + k + ":0:dipc+0666", "at", "w:0:77", "w:4096:78", "dt", "at", "r:0", "r:4096", "dt"});
  EXPECT_EQ(fields(out, "r"), (std::vector<std::string>{"77", "78"}));
  EXPECT_EQ(field(out, "get"), id);
  // Nobody is attached any more; the segment and its data stay until removed.
  EXPECT_TRUE(wait_tool(3, {"stat:" + id}, [](const std::string& o) { return kv(field(o, "stat"), "nattch") == "0"; }));
  out = tool(3, {"stat:" + id, "at:" + id, "r:0", "r:4096", "stat:" + id, "dt", "stat:" + id});
  auto st = fields(out, "stat");
  ASSERT_EQ(st.size(), 3u) << out;
  EXPECT_EQ(kv(st[0], "segsz"), "8192");
  EXPECT_EQ(kv(st[0], "dtime"), "set");
  EXPECT_EQ(kv(st[1], "nattch"), "1");
  EXPECT_EQ(kv(st[1], "lpid"), "self");
  EXPECT_EQ(kv(st[2], "nattch"), "0");
  EXPECT_EQ(fields(out, "r"), (std::vector<std::string>{"77", "78"}));
  EXPECT_EQ(field(tool(1, {"rm:" + id}), "rm"), "0");
}

TEST_F(Shm, RemovalWhileAttachedKeepsTheMemoryAndCountsAttachesClusterWide) {
  const std::string k = key(7);
  std::string id = create(1, k, 2 * kPage);
  // node2 attaches, writes, and waits (bounded) to be told to go on; then it reads and writes after the removal.
  auto p2 = c().spawn(2, {SimCluster::prog("shm_tool"), "get:" + k + ":0:dipc+0666", "at", "w:0:111", "print:held=1",
                          "waitw:8:1:90", "r:0", "w:16:222", "print:written=1", "hold"}, {kTimeoutEnv});
  ASSERT_TRUE(c().wait_output(p2, "held=1")) << p2.out_buf << p2.err_buf;
  std::string st = field(tool(3, {"stat:" + id}), "stat");  // IPC_STAT from a node with no attach
  EXPECT_EQ(kv(st, "nattch"), "1") << st;
  EXPECT_EQ(kv(st, "cpid"), "other") << st;
  // node1 attaches too, removes the segment while both are attached, and goes on using it.
  auto p1 = c().spawn(1, {SimCluster::prog("shm_tool"), "get:" + k + ":0:dipc+0666", "at", "stat", "rm", "stat",
                          "get:" + k + ":0:dipc+0666", "w:8:1", "waitw:16:222:90", "r:0", "r:16", "print:held=1", "hold"},
                      {kTimeoutEnv});
  ASSERT_TRUE(c().wait_output(p1, "held=1")) << p1.out_buf << p1.err_buf;
  ASSERT_TRUE(c().wait_output(p2, "written=1")) << p2.out_buf << p2.err_buf;
  auto sts = fields(p1.out_buf, "stat");
  ASSERT_EQ(sts.size(), 2u) << p1.out_buf;
  EXPECT_EQ(kv(sts[0], "nattch"), "2");
  EXPECT_EQ(kv(sts[0], "dest"), "0");
  EXPECT_EQ(kv(sts[1], "nattch"), "2");  // removed, but still there for those attached
  EXPECT_EQ(kv(sts[1], "dest"), "1");
  EXPECT_EQ(kv(sts[1], "key"), "0");     // the key is released at once
  EXPECT_EQ(field(p1.out_buf, "rm"), "0");
  EXPECT_EQ(field(p1.out_buf, "get"), "-1 ENOENT");
  EXPECT_EQ(fields(p1.out_buf, "r"), (std::vector<std::string>{"111", "222"}));
  EXPECT_EQ(field(p2.out_buf, "r"), "111");
  // Every node sees the same: removed, still attached twice, the key free.
  std::string out = tool(3, {"stat:" + id, "get:" + k + ":0:dipc+0666"});
  EXPECT_EQ(kv(field(out, "stat"), "nattch"), "2") << out;
  EXPECT_EQ(kv(field(out, "stat"), "dest"), "1") << out;
  EXPECT_EQ(field(out, "get"), "-1 ENOENT");
  // The attaches go away with their processes; the segment goes with the last one.
  c().kill(p2, SIGTERM);
  EXPECT_EQ(c().wait(p2, 10).status, 128 + SIGTERM);
  EXPECT_TRUE(wait_tool(3, {"stat:" + id}, [](const std::string& o) { return kv(field(o, "stat"), "nattch") == "1"; }))
      << tool(3, {"stat:" + id});
  c().kill(p1, SIGTERM);
  EXPECT_EQ(c().wait(p1, 10).status, 128 + SIGTERM);
  EXPECT_TRUE(wait_tool(2, {"stat:" + id}, [](const std::string& o) { return field(o, "stat") == "-1 EINVAL"; }))
      << tool(2, {"stat:" + id});
  // The key names a new segment now.
  out = tool(2, {"get:" + k + ":4096:creat+excl+dipc+0666", "at", "r:0", "rm"});
  EXPECT_NE(field(out, "get"), id);
  EXPECT_EQ(field(out, "get").substr(0, 2) == "-1", false) << out;
  EXPECT_EQ(field(out, "r"), "0");
}

TEST_F(Shm, ForkAfterAttachSharesTheSegmentWithTheChild) {
  const std::string k = key(8);
  std::string id = create(1, k, 2 * kPage);
  tool(1, {"at:" + id, "w:0:5"});  // the page starts out on node1
  // On node2 the child sees the parent's memory (not a copy), and the parent sees the child's write.
  std::string out = tool(2, {"at:" + id, "fork:0:77", "r:0", "r:8"});
  EXPECT_EQ(field(out, "fork_child_saw"), "5");
  EXPECT_EQ(field(out, "fork_child_nattch"), "2");
  EXPECT_EQ(field(out, "fork_child_status"), "0");
  EXPECT_EQ(field(out, "fork_parent_sees"), "77");
  EXPECT_EQ(fields(out, "r"), (std::vector<std::string>{"77", "78"}));
  EXPECT_EQ(fields(tool(3, {"at:" + id, "r:0", "r:8", "rm:" + id}), "r"), (std::vector<std::string>{"77", "78"}));
}

TEST_F(Shm, ExecDropsTheAttachesAForkedChildInherited) {
  const std::string k = key(15);
  std::string id = create(1, k, kPage);
  // On node2 a process attaches and forks a child that execs `tail -f /dev/null`: the child's inherited attach is
  // counted at fork() and dropped at exec(), while the exec'd program (and the parent) live on.
  auto h = c().spawn(2, {SimCluster::prog("shm_tool"), "at:" + id, "forkexec", "hold"}, {kTimeoutEnv});
  ASSERT_TRUE(c().wait_output(h, "held=1")) << c().output(h);
  EXPECT_EQ(field(c().output(h), "forkexec_child_nattch"), "2");  // counted at fork()
  EXPECT_TRUE(wait_tool(3, {"stat:" + id}, [](const std::string& o) { return kv(field(o, "stat"), "nattch") == "1"; }))
      << tool(3, {"stat:" + id});
  c().kill_group(h, SIGKILL);  // the parent and the exec'd child
  c().wait(h, 30);
  EXPECT_TRUE(wait_tool(3, {"stat:" + id}, [](const std::string& o) { return kv(field(o, "stat"), "nattch") == "0"; }));
  tool(3, {"rm:" + id});
}

TEST_F(Shm, WritingThroughAnShmRdonlyAttachDiesBySigsegvAndChangesNothing) {
  const std::string k = key(9);
  std::string id = create(1, k, kPage);
  tool(1, {"at:" + id, "w:0:42"});
  std::string out = tool(2, {"at:" + id + ":rdonly", "r:0", "crashw:0:9", "r:0"});
  EXPECT_EQ(field(out, "crashw"), "SIGSEGV");
  EXPECT_EQ(fields(out, "r"), (std::vector<std::string>{"42", "42"}));
  EXPECT_EQ(field(tool(3, {"at:" + id, "r:0"}), "r"), "42");
  // A read-write attach on the same node may write.
  out = tool(2, {"at:" + id, "crashw:0:9", "r:0"});
  EXPECT_EQ(field(out, "crashw"), "exit 0");
  EXPECT_EQ(field(out, "r"), "9");
  EXPECT_EQ(field(tool(1, {"at:" + id, "r:0", "rm:" + id}), "r"), "9");
}

TEST_F(Shm, ReadSyscallIntoADsmPageFillsItAndAnotherNodeSeesTheData) {
  const std::string k = key(10);
  std::string id = create(1, k, 2 * kPage);
  tool(1, {"at:" + id, "w:96:1", "w:4088:1", "w:4096:1"});  // both pages start out written on node1
  // The kernel, not the program, writes the memory: read(2) must fill it, not fail with EFAULT.
  std::string out = tool(2, {"at:" + id, "readinto:100:hello-from-read", "readinto:4090:across-a-page-boundary",
                             "rstr:100:15", "rstr:4090:22"});
  EXPECT_EQ(fields(out, "readinto"), (std::vector<std::string>{"15", "22"}));
  EXPECT_EQ(fields(out, "rstr"), (std::vector<std::string>{"hello-from-read", "across-a-page-boundary"}));
  out = tool(3, {"at:" + id, "rstr:100:15", "rstr:4090:22", "rm:" + id});
  EXPECT_EQ(fields(out, "rstr"), (std::vector<std::string>{"hello-from-read", "across-a-page-boundary"}));
}

TEST_F(Shm, KillDashNineOfTheNodeHoldingPagesExclusivelyKeepsItsLastWrites) {
  const std::string k = key(11);
  std::string id = create(1, k, 4 * kPage);
  tool(1, {"at:" + id, "w:0:1", "w:4096:1", "w:8192:1", "w:12288:1"});
  EXPECT_EQ(fields(tool(3, {"at:" + id, "r:0", "r:4096", "r:8192", "r:12288"}), "r"),
            (std::vector<std::string>(4, "1")));  // copies of the old values on node1 and node3
  // node2 overwrites every page (taking them exclusively) and is killed while attached.
  auto h = c().spawn(2, {SimCluster::prog("shm_tool"), "at:" + id, "r:0", "w:0:1001", "w:4096:1002", "w:8192:1003",
                         "w:12288:1004", "hold"}, {kTimeoutEnv});
  ASSERT_TRUE(c().wait_output(h, "held=1")) << h.out_buf << h.err_buf;
  c().kill(h, SIGKILL);
  EXPECT_EQ(c().wait(h, 10).status, 128 + SIGKILL);
  const std::vector<std::string> last = {"1001", "1002", "1003", "1004"};
  EXPECT_EQ(fields(tool(1, {"at:" + id, "r:0", "r:4096", "r:8192", "r:12288"}), "r"), last);
  EXPECT_EQ(fields(tool(3, {"at:" + id, "r:0", "r:4096", "r:8192", "r:12288"}), "r"), last);
  // The dead process's attach is gone, and the segment is still fully usable.
  EXPECT_TRUE(wait_tool(3, {"stat:" + id}, [](const std::string& o) { return kv(field(o, "stat"), "nattch") == "0"; }))
      << tool(3, {"stat:" + id});
  tool(3, {"at:" + id, "w:4096:2002"});
  EXPECT_EQ(field(tool(2, {"at:" + id, "r:4096", "rm:" + id}), "r"), "2002");
}

TEST_F(Shm, SegmentLargerThanOneGiBIsSparselyTouchedFromTwoNodes) {
  const std::string k = key(12);
  constexpr long kSize = 1342177280;  // 1.25 GiB
  const std::string step = std::to_string(64L << 20);
  std::string out = tool(1, {"get:" + k + ":" + std::to_string(kSize) + ":creat+excl+dipc+0600", "at",
                             "sparsew:" + step, "stat"}, 120);
  std::string id = field(out, "get");
  ASSERT_FALSE(id.empty() || id[0] == '-') << out;
  EXPECT_EQ(field(out, "sparsew"), "21");  // 20 x 64 MiB and the last word
  EXPECT_EQ(kv(field(out, "stat"), "segsz"), std::to_string(kSize));
  out = tool(2, {"get:" + k + ":0:dipc+0600", "at", "sparsec:" + step, "w:" + std::to_string(kSize / 2 + 8) + ":7"}, 120);
  EXPECT_EQ(field(out, "sparsec"), "0");
  EXPECT_EQ(field(out, "sparse_words"), "21");
  out = tool(1, {"at:" + id, "r:" + std::to_string(kSize / 2 + 8), "sparsec:" + step, "rm:" + id}, 120);
  EXPECT_EQ(field(out, "r"), "7");
  EXPECT_EQ(field(out, "sparsec"), "0");
}

// Memory on a node (docs/ARCHITECTURE.md): over tcp the home holds what its processes wrote once, in its view (its
// frames memfd released), after another node read all of it, and so does the reader; `dipc status` prints each
// segment's bytes of view and frames (st_blocks). The data still moves both ways afterwards.
TEST_F(Shm, ATouchedSegmentIsHeldOncePerNodeAfterARemoteReadOfAllOfIt) {
  const std::string k = key(21);
  constexpr long kSize = 16L << 20;
  std::string out = tool(1, {"get:" + k + ":" + std::to_string(kSize) + ":creat+excl+dipc+0600", "at",
                             "sparsew:4096"}, 120);
  std::string id = field(out, "get");
  ASSERT_FALSE(id.empty() || id[0] == '-') << out;
  EXPECT_EQ(field(out, "sparsew"), std::to_string(kSize / 4096 + 1));
  out = tool(2, {"get:" + k + ":0:dipc+0600", "at", "sparsec:4096"}, 120);
  EXPECT_EQ(field(out, "sparsec"), "0");
  // "  shmid ID home ... memory view N frames N" in `dipc status` of each node (the segment stays: nobody removed it).
  auto held = [&](int node, long& view, long& frames) {
    std::string st = c().run(node, {SimCluster::bin("dipc"), "status"}, 10, false).out;
    std::istringstream is(st);
    std::string line;
    while (std::getline(is, line)) {
      auto at = line.find(" memory view ");
      if (line.find("shmid " + id + " ") == std::string::npos || at == std::string::npos) continue;
      return std::sscanf(line.c_str() + at, " memory view %ld frames %ld", &view, &frames) == 2;
    }
    ADD_FAILURE() << "no memory of segment " << id << " in node" << node << "'s status:\n" << st;
    return false;
  };
  long view = 0, frames = 0;
  ASSERT_TRUE(held(1, view, frames));
  EXPECT_GE(view, kSize) << "the home's view lost pages its processes wrote";
  EXPECT_LE(view + frames, kSize + kSize / 8) << "the home holds the segment twice: view " << view << " frames "
                                              << frames;
  ASSERT_TRUE(held(2, view, frames));
  EXPECT_LE(view + frames, kSize + kSize / 8) << "the reader holds the segment twice: view " << view << " frames "
                                              << frames;
  // Both ways after the frames were released: a home write is read on node2, node2's write on the home, and every
  // other word the home wrote is still there (pages node2 wrote into included).
  tool(1, {"at:" + id, "w:8:4242"});
  EXPECT_EQ(field(tool(2, {"at:" + id, "r:8", "w:" + std::to_string(kSize / 2 + 16) + ":77"}), "r"), "4242");
  out = tool(1, {"at:" + id, "r:" + std::to_string(kSize / 2 + 16), "sparsec:4096", "rm:" + id}, 120);
  EXPECT_EQ(field(out, "r"), "77");
  EXPECT_EQ(field(out, "sparsec"), "0");
}

TEST_F(Shm, IpcPrivateIdPassedToAnotherNodeNamesTheSameSegment) {
  std::string out = tool(1, {"get:0:8192:creat+dipc+0600", "get:0:8192:creat+dipc+0600"});
  auto ids = fields(out, "get");
  ASSERT_EQ(ids.size(), 2u) << out;
  ASSERT_FALSE(ids[0].empty() || ids[0][0] == '-') << out;
  EXPECT_NE(ids[0], ids[1]);  // every IPC_PRIVATE get makes a new segment
  const std::string& id = ids[0];
  EXPECT_EQ(field(tool(2, {"at:" + id, "w:4096:999"}), "w"), "0");
  out = tool(3, {"at:" + id, "r:4096", "stat:" + id});
  EXPECT_EQ(field(out, "r"), "999");
  std::string st = field(out, "stat");
  EXPECT_EQ(kv(st, "key"), "0") << st;
  EXPECT_EQ(kv(st, "segsz"), "8192") << st;
  EXPECT_EQ(kv(st, "mode"), "600") << st;
  EXPECT_EQ(field(tool(1, {"at:" + id, "r:4096", "at:" + ids[1], "r:4096"}), "r"), "0");  // the other one is apart
  EXPECT_EQ(fields(tool(1, {"at:" + id, "r:4096", "rm:" + id, "rm:" + ids[1]}), "r"), (std::vector<std::string>{"999"}));
  EXPECT_EQ(field(tool(2, {"stat:" + id}), "stat"), "-1 EINVAL");
}

// On the home node shmdt is a one-way note to dipcd (docs/ARCHITECTURE.md, "One-way shmdt"): whatever comes after
// it, the same process's IPC_STAT on another connection, another node's IPC_STAT, IPC_RMID, sees the detach done.
TEST_F(Shm, ShmdtOnTheHomeNodeIsCountedBeforeAnythingAfterIt) {
  const std::string k = key(18);
  std::string id = create(1, k, 2 * kPage);
  auto holder = c().spawn(1, {SimCluster::prog("shm_tool"), "at:" + id, "print:held=1", "hold"}, {kTimeoutEnv});
  ASSERT_TRUE(c().wait_output(holder, "held=1")) << holder.out_buf << holder.err_buf;
  // The same process asks at once, many times: the note and the IPC_STAT race to dipcd on two sockets.
  std::vector<std::string> cmds;
  for (int i = 0; i < 30; ++i) cmds.insert(cmds.end(), {"at:" + id, "w:0:" + std::to_string(i), "dt", "stat:" + id});
  auto sts = fields(tool(1, cmds), "stat");
  ASSERT_EQ(sts.size(), 30u);
  for (const std::string& st : sts) {
    EXPECT_EQ(kv(st, "nattch"), "1") << st;
    EXPECT_EQ(kv(st, "lpid"), "self") << st;
    EXPECT_EQ(kv(st, "dtime"), "set") << st;
  }
  // Another node, right after a detach returned (no polling): counted already.
  auto p = c().spawn(1, {SimCluster::prog("shm_tool"), "at:" + id, "r:0", "dt", "print:detached=1", "hold"},
                     {kTimeoutEnv});
  ASSERT_TRUE(c().wait_output(p, "detached=1")) << p.out_buf << p.err_buf;
  std::string st = field(tool(2, {"stat:" + id}), "stat");
  EXPECT_EQ(kv(st, "nattch"), "1") << st;
  EXPECT_EQ(kv(st, "lpid"), "other") << st;
  EXPECT_EQ(field(p.out_buf, "r"), "29");
  c().kill(p, SIGTERM);
  EXPECT_EQ(c().wait(p, 10).status, 128 + SIGTERM);
  c().kill(holder, SIGTERM);
  EXPECT_EQ(c().wait(holder, 10).status, 128 + SIGTERM);
  ASSERT_TRUE(wait_tool(1, {"stat:" + id}, [](const std::string& o) { return kv(field(o, "stat"), "nattch") == "0"; }));
  // IPC_RMID, then the last detach: the segment is gone when shmdt returns, on every node.
  std::string out = tool(1, {"at:" + id, "rm:" + id, "stat:" + id, "dt", "stat:" + id});
  sts = fields(out, "stat");
  ASSERT_EQ(sts.size(), 2u) << out;
  EXPECT_EQ(kv(sts[0], "dest"), "1") << out;
  EXPECT_EQ(sts[1], "-1 EINVAL") << out;
  EXPECT_EQ(field(tool(2, {"stat:" + id}), "stat"), "-1 EINVAL");
  EXPECT_EQ(field(tool(1, {"at:" + id}), "at"), "-1 EINVAL");
}

// shmget of a key homed on this node is answered in the program from dipcd's segment table (docs/ARCHITECTURE.md,
// "shmget from the segment table"), with the kernel's checks in the kernel's order; what the table cannot decide
// (a refusal: CAP_IPC_OWNER is dipcd's to judge; an absent key) goes to dipcd. IPC_SET and IPC_RMID count at once.
TEST_F(Shm, ShmgetOnTheHomeNodeChecksAsTheKernelAndSeesEveryChangeAtOnce) {
  const std::string k = key(19);
  std::string id = create(1, k, kPage, "0640");
  std::string out = tool(1, {"get:" + k + ":0:dipc", "get:" + k + ":4096:dipc+0600", "get:" + k + ":8192:dipc",
                             "get:" + k + ":0:creat+excl+dipc+0600", "get:" + k + ":8192:creat+excl+dipc",
                             "get:" + k + ":0:creat+dipc+0600"});
  EXPECT_EQ(fields(out, "get"), (std::vector<std::string>{id, id, "-1 EINVAL", "-1 EEXIST", "-1 EEXIST", id}));
  out = tool_as_nobody(1, {"get:" + k + ":0:dipc+0400", "get:" + k + ":0:dipc"});
  EXPECT_EQ(fields(out, "get"), (std::vector<std::string>{"-1 EACCES", id}));
  EXPECT_EQ(field(tool(1, {"set:" + id + ":0604"}), "set"), "0");
  out = tool_as_nobody(1, {"get:" + k + ":0:dipc+0400", "get:" + k + ":0:dipc+0600"});
  EXPECT_EQ(fields(out, "get"), (std::vector<std::string>{id, "-1 EACCES"}));
  out = tool(1, {"rm:" + id, "get:" + k + ":0:dipc", "get:" + k + ":4096:creat+excl+dipc+0600", "get:" + k + ":0:dipc"});
  auto gets = fields(out, "get");
  ASSERT_EQ(gets.size(), 3u) << out;
  EXPECT_EQ(gets[0], "-1 ENOENT");
  EXPECT_NE(gets[1], id);
  EXPECT_NE(gets[1].substr(0, 2), "-1") << out;
  EXPECT_EQ(gets[2], gets[1]);
  EXPECT_EQ(field(tool(2, {"get:" + k + ":0:dipc"}), "get"), gets[1]);
  EXPECT_EQ(field(tool(1, {"rm:" + gets[1]}), "rm"), "0");
}

// A re-attach on the home node through a view the process kept is a one-way note (docs/ARCHITECTURE.md, "One-way
// shmat"): shmat returns without waiting for dipcd, and anything that happens after it returned sees the attach
// counted (shm_nattch, shm_lpid, shm_atime), on this node and on others. The same with every note confirmed by a
// round trip (DIPC_SHM_ATTACH_NOTE=check, the path a shared segment takes).
TEST_F(Shm, OneWayShmatOnTheHomeNodeIsCountedBeforeAnythingAfterIt) {
  const std::string k = key(21);
  std::string id = create(1, k, 2 * kPage);
  for (const char* mode : {"", "check"}) {
    SCOPED_TRACE(std::string("DIPC_SHM_ATTACH_NOTE=") + mode);
    std::vector<std::string> env = {kTimeoutEnv, std::string("DIPC_SHM_ATTACH_NOTE=") + mode};
    // The first attach takes the full path and keeps the view; the next ones are notes.
    std::vector<std::string> cmds = {SimCluster::prog("shm_tool"), "get:" + k + ":0:dipc", "at", "dt"};
    for (int i = 0; i < 20; ++i)
      cmds.insert(cmds.end(), {"get:" + k + ":0:dipc", "at", "stat", "w:0:" + std::to_string(i), "dt"});
    auto r = c().run(1, cmds, 60, env);
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    auto sts = fields(r.out, "stat");
    ASSERT_EQ(sts.size(), 20u) << r.out;
    for (const std::string& st : sts) {
      EXPECT_EQ(kv(st, "nattch"), "1") << st;
      EXPECT_EQ(kv(st, "lpid"), "self") << st;
      EXPECT_EQ(kv(st, "atime"), "set") << st;
    }
    // Another process on another node, right after the attach returned (no polling): counted already.
    auto p = c().spawn(1, {SimCluster::prog("shm_tool"), "get:" + k + ":0:dipc", "at", "dt", "get:" + k + ":0:dipc",
                           "at", "r:0", "print:attached=1", "hold"},
                       env);
    ASSERT_TRUE(c().wait_output(p, "attached=1")) << p.out_buf << p.err_buf;
    EXPECT_EQ(field(p.out_buf, "r"), "19");
    std::string st = field(tool(2, {"stat:" + id}), "stat");
    EXPECT_EQ(kv(st, "nattch"), "1") << st;
    EXPECT_EQ(kv(st, "lpid"), "other") << st;
    st = field(tool(1, {"stat:" + id}), "stat");
    EXPECT_EQ(kv(st, "nattch"), "1") << st;
    c().kill(p, SIGTERM);
    EXPECT_EQ(c().wait(p, 10).status, 128 + SIGTERM);
    ASSERT_TRUE(wait_tool(1, {"stat:" + id}, [](const std::string& o) { return kv(field(o, "stat"), "nattch") == "0"; }));
  }
  // IPC_RMID while a note attach is counted, then its detach: destroyed when shmdt returns, as the kernel.
  std::string out = tool(1, {"get:" + k + ":0:dipc", "at", "dt", "get:" + k + ":0:dipc", "at", "rm", "stat:" + id,
                             "dt", "stat:" + id});
  auto sts = fields(out, "stat");
  ASSERT_EQ(sts.size(), 2u) << out;
  EXPECT_EQ(kv(sts[0], "dest"), "1") << out;
  EXPECT_EQ(kv(sts[0], "nattch"), "1") << out;
  EXPECT_EQ(sts[1], "-1 EINVAL") << out;
  EXPECT_EQ(field(tool(2, {"stat:" + id}), "stat"), "-1 EINVAL");
}

// A view kept from a writable attach never serves a writable attach the segment's mode no longer allows: IPC_SET to
// 0444, then shmat without SHM_RDONLY is EACCES (the table's check, the kernel's order); SHM_RDONLY still works.
TEST_F(Shm, OneWayShmatAfterIpcSetToReadOnlyIsRefused) {
  const std::string k = key(22);
  std::string id = create(1, k, kPage);
  // Where user nobody can see it (the cluster's directory is root's own).
  std::string go = "/tmp/dipc-shm-set-22." + std::to_string(getpid());
  std::remove(go.c_str());
  auto p = c().spawn(1, {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SimCluster::prog("shm_tool"),
                         "get:" + k + ":0:dipc", "at", "w:0:3", "dt", "get:" + k + ":0:dipc", "at", "dt",
                         "print:first=1", "waitfile:" + go + ":90", "get:" + k + ":0:dipc", "at", "get:" + k + ":0:dipc",
                         "at:@:rdonly", "r:0", "dt"},
                     {kTimeoutEnv});
  ASSERT_TRUE(c().wait_output(p, "first=1")) << p.out_buf << p.err_buf;
  EXPECT_EQ(field(tool(1, {"set:" + id + ":0444"}), "set"), "0");
  std::ofstream(go) << "go\n";
  auto r = c().wait(p, 120);
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(fields(r.out, "at"), (std::vector<std::string>{"0", "0", "-1 EACCES", "0"})) << r.out;
  EXPECT_EQ(field(r.out, "r"), "3");
  EXPECT_EQ(kv(field(tool(1, {"stat:" + id}), "stat"), "nattch"), "0");
  EXPECT_EQ(field(tool(1, {"rm:" + id}), "rm"), "0");
  std::remove(go.c_str());
}

// Strict consistency across one-way attaches: on the home node a process attaches anew before every write of a word
// that another node reads between two writes (so the block is read-only at the home, shared, whenever the attach
// happens); the reader must see every value. A write through an attach dipcd did not know yet would land in the
// home's view without taking the reader's copy away, and the reader would wait for it in vain: the segment's
// "shared" word sends such attaches through a round trip.
std::vector<std::string> one_way_writer(const std::string& k, int rounds) {
  std::vector<std::string> cmds = {SimCluster::prog("shm_tool"), "get:" + k + ":0:dipc", "at", "dt"};
  for (int i = 1; i <= rounds; ++i) {
    std::string v = std::to_string(i);
    cmds.insert(cmds.end(), {"get:" + k + ":0:dipc", "at", "w:0:" + v, "waitw:4096:" + v + ":20", "dt"});
  }
  return cmds;
}
std::vector<std::string> one_way_reader(const std::string& id, int rounds) {
  std::vector<std::string> cmds = {SimCluster::prog("shm_tool"), "at:" + id};
  for (int i = 1; i <= rounds; ++i) {
    std::string v = std::to_string(i);
    cmds.insert(cmds.end(), {"waitw:0:" + v + ":20", "w:4096:" + v});
  }
  return cmds;
}

TEST_F(Shm, OneWayShmatKeepsAReaderOnAnotherNodeCoherent) {
  const std::string k = key(23);
  std::string id = create(1, k, 2 * kPage);
  constexpr int kRounds = 40;
  auto reader = c().spawn(2, one_way_reader(id, kRounds), {kTimeoutEnv});
  auto writer = c().spawn(1, one_way_writer(k, kRounds), {kTimeoutEnv});
  auto w = c().wait(writer, 180);
  auto r = c().wait(reader, 180);
  EXPECT_EQ(w.status, 0) << w.out << w.err;
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(field(tool(1, {"rm:" + id}), "rm"), "0");
}

// The same with the home's dipcd stopped while the writer re-attaches and writes: the attach must wait for it
// (the segment is shared, so the note is confirmed), and the reader sees the write. With the program's re-check
// switched off (DIPC_SHM_ATTACH_NOTE=nocheck, test-only) the attach returns at once and the write lands in the home's
// view where the reader's copy is never invalidated: the reader never sees it. That shows the handshake is needed.
TEST_F(Shm, OneWayShmatWaitsForALateDaemonWhenTheSegmentIsShared) {
  for (const char* mode : {"", "nocheck"}) {
    SCOPED_TRACE(std::string("DIPC_SHM_ATTACH_NOTE=") + mode);
    const bool broken = std::string(mode) == "nocheck";
    const std::string k = key(broken ? 26 : 25);
    std::string id = create(1, k, 2 * kPage);
    std::string go = c().dir() + "/shm-late-" + k;
    auto writer = c().spawn(1, {SimCluster::prog("shm_tool"), "get:" + k + ":0:dipc", "at", "w:0:1", "dt",
                                "print:ready=1", "waitfile:" + go + ":60", "get:" + k + ":0:dipc", "at:@:nostat", "w:0:42",
                                "print:written=1", "dt"},
                            {kTimeoutEnv, std::string("DIPC_SHM_ATTACH_NOTE=") + mode});
    auto reader = c().spawn(2, {SimCluster::prog("shm_tool"), "at:" + id, "waitw:0:1:30", "print:read=1",
                                "waitw:0:42:10"},
                            {kTimeoutEnv});
    ASSERT_TRUE(c().wait_output(writer, "ready=1")) << writer.out_buf << writer.err_buf;
    ASSERT_TRUE(c().wait_output(reader, "read=1")) << reader.out_buf << reader.err_buf;
    // The block is now read-only at the home (the reader holds a copy).
    pid_t d = c().daemon_pid(1);
    ASSERT_GT(d, 0);
    ASSERT_EQ(kill(d, SIGSTOP), 0);
    std::ofstream(go) << "go\n";
    if (broken) {
      EXPECT_TRUE(c().wait_output(writer, "written=1")) << writer.out_buf << writer.err_buf;
    }
    ASSERT_EQ(kill(d, SIGCONT), 0);
    auto w = c().wait(writer, 120);
    auto r = c().wait(reader, 120);
    EXPECT_EQ(w.status, 0) << w.out << w.err;
    if (broken) {
      EXPECT_EQ(r.status, 1) << "the write through the unconfirmed attach reached the reader: " << r.out << r.err;
    } else {
      EXPECT_EQ(r.status, 0) << r.out << r.err;
    }
    EXPECT_EQ(field(tool(1, {"rm:" + id}), "rm"), "0");
  }
}

// Forked children of a process whose attaches were one-way notes inherit them counted and coherent.
TEST_F(Shm, ForkAfterOneWayShmatSharesTheSegmentWithTheChild) {
  const std::string k = key(24);
  std::string id = create(1, k, 2 * kPage);
  std::string out = tool(1, {"get:" + k + ":0:dipc", "at", "dt", "get:" + k + ":0:dipc", "at", "w:0:5", "fork:0:77",
                             "r:0", "r:8"});
  EXPECT_EQ(field(out, "fork_child_saw"), "5");
  EXPECT_EQ(field(out, "fork_child_nattch"), "2");
  EXPECT_EQ(field(out, "fork_child_status"), "0");
  EXPECT_EQ(field(out, "fork_parent_sees"), "77");
  EXPECT_EQ(fields(tool(2, {"at:" + id, "r:0", "r:8", "rm:" + id}), "r"), (std::vector<std::string>{"77", "78"}));
}

// The note channel (docs/ARCHITECTURE.md, "The note channel"): a detach note dipcd has not read yet (nothing on the
// home node depended on it) is applied before an IPC_RMID from another node, which then destroys the segment at once
// as the kernel would (nobody attached): EINVAL after, on every node, and the key is free.
TEST_F(Shm, DetachNoteThenIpcRmidFromAnotherNodeDestroysAtOnce) {
  const std::string k = key(27);
  std::string id = create(1, k, 2 * kPage);
  auto p = c().spawn(1, {SimCluster::prog("shm_tool"), "get:" + k + ":0:dipc", "at", "dt", "get:" + k + ":0:dipc",
                         "at:@:nostat", "w:0:9", "dt", "print:detached=1", "hold"},
                     {kTimeoutEnv});
  ASSERT_TRUE(c().wait_output(p, "detached=1")) << p.out_buf << p.err_buf;
  EXPECT_EQ(field(tool(2, {"rm:" + id}), "rm"), "0");
  EXPECT_EQ(field(tool(2, {"stat:" + id}), "stat"), "-1 EINVAL");
  EXPECT_EQ(field(tool(1, {"stat:" + id}), "stat"), "-1 EINVAL");
  EXPECT_EQ(field(tool(1, {"get:" + k + ":0:dipc"}), "get"), "-1 ENOENT");
  c().kill(p, SIGTERM);
  EXPECT_EQ(c().wait(p, 10).status, 128 + SIGTERM);
}

// A process killed (SIGKILL) with notes dipcd has not read (its last attach, or its last detach) leaves shm_nattch
// right: dipcd reads a closing connection's notes before it detaches what is left.
TEST_F(Shm, ProcessKilledWithUnreadNotesLeavesNattchRight) {
  const std::string k = key(28);
  std::string id = create(1, k, 2 * kPage);
  for (const char* last : {"attached", "detached"}) {
    SCOPED_TRACE(last);
    std::vector<std::string> cmds = {SimCluster::prog("shm_tool"), "get:" + k + ":0:dipc", "at", "dt"};
    for (int i = 0; i < 5; ++i) cmds.insert(cmds.end(), {"get:" + k + ":0:dipc", "at:@:nostat", "dt"});
    cmds.insert(cmds.end(), {"get:" + k + ":0:dipc", "at:@:nostat"});
    if (std::string(last) == "detached") cmds.push_back("dt");
    cmds.insert(cmds.end(), {std::string("print:") + last + "=1", "hold"});
    auto p = c().spawn(1, cmds, {kTimeoutEnv});
    ASSERT_TRUE(c().wait_output(p, std::string(last) + "=1")) << p.out_buf << p.err_buf;
    c().kill(p, SIGKILL);
    EXPECT_EQ(c().wait(p, 10).status, 128 + SIGKILL);
    for (int node : {1, 2})
      EXPECT_TRUE(wait_tool(node, {"stat:" + id}, [](const std::string& o) {
        return kv(field(o, "stat"), "nattch") == "0";
      })) << "node" << node;
  }
  EXPECT_EQ(field(tool(1, {"rm:" + id}), "rm"), "0");
}

// A re-attach registered on the kept userfaultfd at a new address, faulted at once (no IPC_STAT after the attach):
// the fault drains the notes, so dipcd knows the new range before it resolves it, and the data is the segment's.
TEST_F(Shm, ReattachAtANewAddressFaultedAtOnceSeesTheSegment) {
  const std::string k = key(29);
  std::string id = create(1, k, 8 * kPage);
  std::string g = "get:" + k + ":0:dipc";
  // Each attach touches a page never touched before (a fault dipcd resolves), the last two at a new address.
  std::string out = tool(1, {g, "at:@:nostat", "w:0:1", "dt", g, "at:@:nostat", "w:4096:2", "dt", "blockva", g,
                             "at:@:nostat", "w:8192:3", "r:0", "r:4096", "dt", "blockva", g, "at:@:nostat",
                             "r:12288", "r:8192", "dt"});
  EXPECT_EQ(fields(out, "r"), (std::vector<std::string>{"1", "2", "0", "3"})) << out;
  EXPECT_EQ(fields(out, "blockva"), (std::vector<std::string>{"0", "0"})) << out;
  std::string st = field(tool(2, {"stat:" + id}), "stat");
  EXPECT_EQ(kv(st, "nattch"), "0") << st;
  EXPECT_EQ(fields(tool(2, {"at:" + id, "r:0", "r:4096", "r:8192", "dt", "rm:" + id}), "r"),
            (std::vector<std::string>{"1", "2", "3"}));
}

// A full note channel (a send buffer of a few notes, test-only DIPC_SHM_NOTE_SNDBUF) makes the attach and the
// detach synchronous calls: every attach still counted, every detach too.
TEST_F(Shm, FullNoteChannelFallsBackToTheSynchronousCall) {
  const std::string k = key(30);
  std::string id = create(1, k, 2 * kPage);
  std::vector<std::string> cmds = {SimCluster::prog("shm_tool"), "get:" + k + ":0:dipc", "at", "dt"};
  for (int i = 1; i <= 60; ++i)
    cmds.insert(cmds.end(), {"get:" + k + ":0:dipc", "at:@:nostat", "w:0:" + std::to_string(i), "dt"});
  cmds.insert(cmds.end(), {"get:" + k + ":0:dipc", "at", "stat", "dt", "stat"});
  auto r = c().run(1, cmds, 60, {kTimeoutEnv, "DIPC_SHM_NOTE_SNDBUF=1"});
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  auto sts = fields(r.out, "stat");
  ASSERT_EQ(sts.size(), 2u) << r.out;
  EXPECT_EQ(kv(sts[0], "nattch"), "1") << r.out;
  EXPECT_EQ(kv(sts[1], "nattch"), "0") << r.out;
  std::string st = field(tool(2, {"stat:" + id}), "stat");
  EXPECT_EQ(kv(st, "nattch"), "0") << st;
  EXPECT_EQ(field(tool(2, {"at:" + id, "r:0", "dt", "rm:" + id}), "r"), "60");
}

// A program that read the segment table of a daemon that then restarted never gets an id from the dead daemon's
// table (still mapped in it): its shmget asks the new daemon.
TEST_F(Shm, ShmgetAfterADaemonRestartNeverAnswersFromTheOldTable) {
  const std::string k = key(20);
  std::string id = create(3, k, kPage);
  std::string go = c().dir() + "/shm-restarted-20";
  auto p = c().spawn(3, {SimCluster::prog("shm_tool"), "get:" + k + ":0:dipc", "print:first=1", "waitfile:" + go + ":90",
                         "get:" + k + ":0:dipc"}, {kTimeoutEnv});
  ASSERT_TRUE(c().wait_output(p, "first=1")) << p.out_buf << p.err_buf;
  ASSERT_TRUE(c().kill_daemon(3)) << c().last_error();
  ASSERT_TRUE(c().start_daemon(3)) << c().last_error();
  std::ofstream(go) << "go\n";
  auto r = c().wait(p, 120);
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  auto gets = fields(r.out, "get");
  ASSERT_EQ(gets.size(), 2u) << r.out << r.err;
  EXPECT_EQ(gets[0], id);
  EXPECT_NE(gets[1], id) << "an id of the dead daemon";
  EXPECT_EQ(gets[1], field(tool(3, {"get:" + k + ":0:dipc"}), "get"));  // what a new process gets
}

TEST_F(Shm, PermissionsRefuseNobodyOnAnotherNode) {
  const std::string k = key(14);
  std::string out = tool(1, {"get:" + k + ":4096:creat+excl+dipc+0600", "at", "w:0:31337"});
  std::string id = field(out, "get");
  ASSERT_FALSE(id.empty() || id[0] == '-') << out;
  out = tool_as_nobody(2, {"get:" + k + ":4096:dipc+0600", "at:" + id, "at:" + id + ":rdonly", "stat:" + id,
                           "set:" + id + ":0666", "rm:" + id});
  EXPECT_EQ(field(out, "get"), "-1 EACCES");
  EXPECT_EQ(fields(out, "at"), (std::vector<std::string>{"-1 EACCES", "-1 EACCES"}));
  EXPECT_EQ(field(out, "stat"), "-1 EACCES");
  EXPECT_EQ(field(out, "set"), "-1 EACCES");  // shm_tool's set reads IPC_STAT first
  EXPECT_EQ(field(out, "rm"), "-1 EPERM");
  EXPECT_EQ(field(tool_as_nobody(3, {"get:" + k + ":0:dipc"}), "get"), id);  // asking for no access is allowed
  // The refused calls changed nothing.
  out = tool(3, {"at:" + id, "r:0", "stat:" + id});
  EXPECT_EQ(field(out, "r"), "31337");
  EXPECT_EQ(kv(field(out, "stat"), "mode"), "600");
  EXPECT_EQ(kv(field(out, "stat"), "dest"), "0");
  // The owner lets others read: nobody may attach read-only from any node, but still not read-write.
  EXPECT_EQ(field(tool(1, {"set:" + id + ":0644"}), "set"), "0");
  out = tool_as_nobody(3, {"at:" + id + ":rdonly", "r:0", "at:" + id});
  EXPECT_EQ(fields(out, "at"), (std::vector<std::string>{"0", "-1 EACCES"}));
  EXPECT_EQ(field(out, "r"), "31337");
  EXPECT_EQ(field(tool(1, {"rm:" + id}), "rm"), "0");
}

}  // namespace
}  // namespace dipc::test

namespace dipc::test {
namespace {

// SHM_HUGETLB segments are backed by huge pages on every node that caches them (a hugetlbfs view, blocks of one huge
// page): they count in the host's pool as the kernel's own segment does, once per node that holds a page (the
// simulated nodes share the host's pool), stay strictly coherent, and a node that cannot reserve them is refused
// at shmat (ENOMEM) instead of failing later.
TEST_F(Shm, HugetlbSegmentsAreBackedByHugePagesOnEveryNodeAndStayCoherent) {
  constexpr long kPages = 8;
  HugePages pool(2 * kPages + 4);
  const long hp = HugePages::meminfo("Hugepagesize") * 1024;
  if (hp <= 0 || HugePages::available() < 2 * kPages + 2)
    GTEST_SKIP() << "the kernel cannot provide " << 2 * kPages + 2 << " huge pages (vm.nr_hugepages; root needed)";
  const long free0 = HugePages::meminfo("HugePages_Free"), rsvd0 = HugePages::meminfo("HugePages_Rsvd");
  const std::string hps = std::to_string(hp);

  // The size is reported as asked, as the kernel reports it (not rounded to huge pages).
  const long size = kPages * hp - 100;
  std::string kout = tool(1, {"get:" + key(40) + ":" + std::to_string(size) + ":creat+excl+huge+0600", "stat", "rm"});
  std::string out = tool(1, {"get:" + key(41) + ":" + std::to_string(size) + ":creat+excl+dipc+huge+0600", "at",
                             "sparsew:" + hps, "stat"});
  std::string id = field(out, "get");
  ASSERT_TRUE(!id.empty() && id[0] != '-') << out;
  EXPECT_EQ(kv(field(out, "stat"), "segsz"), std::to_string(size));
  EXPECT_EQ(kv(field(out, "stat"), "segsz"), kv(field(kout, "stat"), "segsz")) << kout;
  EXPECT_EQ(field(out, "sparsew"), std::to_string(kPages + 1));  // a word on every huge page and the last word
  // The home holds the kPages pages it wrote, in huge pages.
  const long free1 = HugePages::meminfo("HugePages_Free");
  EXPECT_EQ(free0 - free1, kPages);
  // Another node reads every one of them: its view takes kPages more; the home keeps its (now shared) copies.
  out = tool(2, {"get:" + key(41) + ":0:dipc+0600", "at", "sparsec:" + hps});
  EXPECT_EQ(field(out, "sparsec"), "0") << out;
  EXPECT_EQ(free1 - HugePages::meminfo("HugePages_Free"), kPages);

  // A ping-pong of writes through one huge page between the two nodes: every turn moves the page.
  const std::string pk = key(42), rounds = "100";
  std::string pid = field(tool(1, {"get:" + pk + ":4096:creat+excl+dipc+huge+0666"}), "get");
  ASSERT_TRUE(!pid.empty() && pid[0] != '-') << pid;
  auto a = work(1, {"pingpong", pk, "0", rounds});
  auto b = work(2, {"pingpong", pk, "1", rounds});
  for (auto* p : {&a, &b}) {
    out = finish(*p, "pingpong");
    EXPECT_EQ(field(out, "errors"), "0");
    EXPECT_EQ(field(out, "counter"), "200");
  }
  // Written on node 2 after the home's reads: node 1 sees it, and node 2's copy is taken back for the home's write.
  out = tool(2, {"at:" + id, "w:" + std::to_string(3 * hp + 8) + ":77"});
  out = tool(
      1, {"at:" + id, "r:" + std::to_string(3 * hp + 8), "w:" + std::to_string(3 * hp + 16) + ":78", "sparsec:" + hps});
  EXPECT_EQ(field(out, "r"), "77");
  EXPECT_EQ(field(out, "sparsec"), "0") << out;
  EXPECT_EQ(field(tool(2, {"at:" + id, "r:" + std::to_string(3 * hp + 16)}), "r"), "78");
  // A read-only attach (mapped MAP_PRIVATE | MAP_NORESERVE) reads the same data and reserves nothing more.
  const long avail = HugePages::available();
  out = tool(2, {"at:" + id + ":rdonly", "sparsec:" + hps, "r:" + std::to_string(3 * hp + 16)});
  EXPECT_EQ(field(out, "sparsec"), "0") << out;
  EXPECT_EQ(field(out, "r"), "78");
  EXPECT_EQ(HugePages::available(), avail);

  // A node that cannot reserve the segment's huge pages: the home reserved what was left of the pool, the other
  // node's shmat fails with ENOMEM (the kernel reserves a SHM_HUGETLB segment whole at shmget; a caching node
  // reserves it whole at its first attach), and nothing is held by the failure.
  const long left = HugePages::available();
  ASSERT_GT(left, 0);
  // One page more than the pool can reserve: the home refuses it at shmget, as the kernel does.
  EXPECT_EQ(
      field(tool(1, {"get:" + key(44) + ":" + std::to_string((left + 1) * hp) + ":creat+excl+dipc+huge+0600"}), "get"),
      "-1 ENOMEM");
  EXPECT_EQ(HugePages::available(), left);
  std::string big =
      field(tool(1, {"get:" + key(43) + ":" + std::to_string(left * hp) + ":creat+excl+dipc+huge+0600"}), "get");
  ASSERT_TRUE(!big.empty() && big[0] != '-') << big;
  EXPECT_EQ(HugePages::available(), 0);
  EXPECT_EQ(field(tool(2, {"at:" + big}), "at"), "-1 ENOMEM");
  EXPECT_EQ(field(tool(1, {"at:" + big, "w:0:5", "r:0"}), "r"), "5");  // the home's own attach works

  // Removed, every node drops the segments' huge pages and their reservations (the other node hears of it a
  // message later: bounded polling).
  tool(1, {"rm:" + id, "rm:" + pid, "rm:" + big});
  auto deadline = Clock::now() + std::chrono::seconds(30);
  while ((HugePages::meminfo("HugePages_Free") != free0 || HugePages::meminfo("HugePages_Rsvd") != rsvd0) &&
         Clock::now() < deadline)
    tool(1, {"print:poll"});
  EXPECT_EQ(HugePages::meminfo("HugePages_Free"), free0);
  EXPECT_EQ(HugePages::meminfo("HugePages_Rsvd"), rsvd0);
}

// The coherence unit and the quantum are configurable: the same workloads with 64 KiB blocks (16 pages move and are
// invalidated together, so false sharing between the words of different processes is heavy) and no quantum at all
// (nothing but the protocol itself keeps a woken access from starving).
class ShmBigBlocksNoQuantum : public Shm {
 protected:
  static void SetUpTestSuite() {
    SimCluster::Options o{.nodes = 3};
    o.up_args = {"--dsm-block", "65536", "--dsm-quantum-us", "0"};
    big_ = std::make_unique<SimCluster>(o);
  }
  static void TearDownTestSuite() { big_.reset(); }
  SimCluster& c() override { return *big_; }
  static std::unique_ptr<SimCluster> big_;
};
std::unique_ptr<SimCluster> ShmBigBlocksNoQuantum::big_;

TEST_F(ShmBigBlocksNoQuantum, AtomicCounterOnThreeNodesSumsExactly) {
  const std::string k = key(0x21);
  constexpr int kIters = 5000, kProcs = 6;
  std::string id = create(1, k, 20 * kPage);
  std::vector<SimCluster::Proc> ps;
  for (int i = 0; i < kProcs; ++i)
    ps.push_back(work(i % 3 + 1, {"counter", k, std::to_string(kIters), std::to_string(kProcs)}));
  for (auto& p : ps) EXPECT_EQ(field(finish(p, "counter"), "counter"), std::to_string(kIters * kProcs));
  EXPECT_EQ(field(tool(2, {"at:" + id, "r:0", "rm:" + id}), "r"), std::to_string(kIters * kProcs));
}

TEST_F(ShmBigBlocksNoQuantum, RandomizedWorkloadMatchesTheSequentialReference) {
  const std::string k = key(0x22), steps = "60", seed = "0x5eed4321", pages = "40";
  std::string id = create(2, k, 41 * kPage);
  std::vector<SimCluster::Proc> ps;
  for (int i = 0; i < 3; ++i) ps.push_back(work(i + 1, {"random", k, "3", std::to_string(i), steps, seed, pages}));
  for (auto& p : ps) {
    std::string out = finish(p, "random");
    EXPECT_EQ(field(out, "errors"), "0");
    EXPECT_EQ(field(out, "checks"), "61");
  }
  EXPECT_EQ(field(tool(1, {"at:" + id, "r:0", "rm:" + id}), "r"), "180");
}

TEST_F(ShmBigBlocksNoQuantum, TwoWritersPingPongOnePageStillBothProgress) {
  const std::string k = key(0x23), rounds = "300";
  std::string id = create(3, k, kPage);
  auto a = work(1, {"pingpong", k, "0", rounds});
  auto b = work(2, {"pingpong", k, "1", rounds});
  for (auto* p : {&a, &b}) {
    std::string out = finish(*p, "pingpong");
    EXPECT_EQ(field(out, "errors"), "0");
    EXPECT_EQ(field(out, "counter"), "600");
  }
  tool(3, {"rm:" + id});
}

}  // namespace
}  // namespace dipc::test

namespace dipc::test {
namespace {

// A network partition between a segment's home and a node that holds a copy: the home forgets the copy when it
// declares the node lost (TCP keepalive, about 5 s), so the node must drop it too, or its processes would go on
// reading a value the cluster has moved past.
class ShmPartition : public Shm {
 protected:
  static void SetUpTestSuite() { two_ = std::make_unique<SimCluster>(SimCluster::Options{.nodes = 2}); }
  static void TearDownTestSuite() { two_.reset(); }
  SimCluster& c() override { return *two_; }
  static std::unique_ptr<SimCluster> two_;

  // Polls `dipc status` on `node` (a fresh process each time) until it reports `peer` in `state`; bounded.
  bool wait_peer(int node, int peer, const std::string& state, int timeout_s) {
    auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    do {
      if (peer_state(c().dipc(node, {"status"}).out, peer) == state) return true;
    } while (Clock::now() < deadline);
    return false;
  }
  // Takes node2's veth port on the simulated switch down or up.
  void link(bool up) {
    std::ifstream f(c().dir() + "/tag");
    std::string tag;
    f >> tag;
    std::string cmd = "ip -n dipc-" + tag + "-sw link set n2 " + (up ? "up" : "down");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
};
std::unique_ptr<SimCluster> ShmPartition::two_;

TEST_F(ShmPartition, ANodeCutOffFromTheHomeDropsItsCopiesAndReadsTheNewValueAfterwards) {
  if (!c().namespaced()) GTEST_SKIP() << "needs root for the simulated network";
  const std::string k = key(0x31);
  std::string id = create(1, k, kPage);
  tool(1, {"at:" + id, "w:0:1"});
  // node2 holds a read copy, and a process there stays attached through it all.
  auto h = c().spawn(2, {SimCluster::prog("shm_tool"), "at:" + id, "r:0", "hold"}, {kTimeoutEnv});
  ASSERT_TRUE(c().wait_output(h, "held=1")) << c().output(h);
  EXPECT_EQ(field(c().output(h), "r"), "1");
  link(false);
  ASSERT_TRUE(wait_peer(1, 2, "down", 60)) << c().daemon_log(1);
  ASSERT_TRUE(wait_peer(2, 1, "down", 60)) << c().daemon_log(2);
  tool(1, {"at:" + id, "w:0:2"});  // the home no longer counts node2's copy: nothing to invalidate
  link(true);
  ASSERT_TRUE(wait_peer(2, 1, "up", 60)) << c().daemon_log(2);
  EXPECT_EQ(field(tool(2, {"at:" + id, "r:0"}), "r"), "2");
  c().kill(h, SIGKILL);
  c().wait(h, 30);
  tool(1, {"rm:" + id});
}

}  // namespace
}  // namespace dipc::test
