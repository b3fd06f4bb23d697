// Differential test: the same seeded random sequences of SysV calls (edge cases and errors included) run once against
// the local kernel and once against dipc must produce identical transcripts: every return value, errno and out-data.
//
// The dipc objects are created by a process on node2 and the sequence runs on node1 from the ids it was handed, so
// the objects' home is another node (another network and IPC namespace when root): a call the preload failed to
// forward would reach node1's kernel, which has no such id, and diverge at once. The kernel run uses no preload at all.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/harness/sim_cluster.h"
#include "tests/integration/transcript.h"

namespace dipc::test {
namespace {

SimCluster::Options nodes_opt(int n) {
  SimCluster::Options o;
  o.nodes = n;
  return o;
}

constexpr int kSteps = 500;


class Differential : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { cluster_ = std::make_unique<SimCluster>(nodes_opt(2)); }
  static void TearDownTestSuite() { cluster_.reset(); }
  static std::unique_ptr<SimCluster> cluster_;

  // Runs one seed both ways; returns the kernel transcript after asserting the dipc one equals it.
  // raw: every call a raw system call (DIFFTEST_RAW=1), which dipc sees through its seccomp path (DIPC_SECCOMP=1).
  // static_binary: difftest linked statically, its dipc runs under dipc-exec (seccomp user notification).
  std::vector<std::string> run_seed(int seed, bool raw = false, bool static_binary = false) {
    SimCluster& c = *cluster_;
    std::vector<std::string> kenv, denv;
    if (raw) {
      kenv = {"DIFFTEST_RAW=1"};
      denv = {"DIFFTEST_RAW=1", "DIPC_SECCOMP=1"};
    }
    if (static_binary) kenv = denv = {"DIPC_TEST_ANY_PID=1"};  // dipc records dipc-exec's pid (README)
    std::string prog = SimCluster::prog(static_binary ? "difftest-static" : "difftest"), s = std::to_string(seed),
                steps = std::to_string(kSteps);
    // The dipc runs' command: under dipc-exec for the static binary.
    auto dcmd = [&](std::vector<std::string> argv) {
      if (static_binary) argv.insert(argv.begin(), SimCluster::bin("dipc-exec"));
      return argv;
    };

    auto ks = c.run(1, {prog, "setup", "kernel", s}, 30, /*preload=*/false, kenv);
    EXPECT_EQ(ks.status, 0) << ks.err;
    auto kids = parse_ids(ks.out);
    EXPECT_EQ(kids.size(), 6u) << ks.out;
    std::vector<std::string> kargv = {prog, "run", "kernel", s, steps};
    kargv.insert(kargv.end(), kids.begin(), kids.end());
    auto k = c.run(1, kargv, 120, /*preload=*/false, kenv);
    EXPECT_EQ(k.status, 0) << k.err;

    auto ds = c.run(2, dcmd({prog, "setup", "dipc", s}), 30, denv);
    EXPECT_EQ(ds.status, 0) << ds.err;
    auto dids = parse_ids(ds.out);
    EXPECT_EQ(dids.size(), 6u) << ds.out;
    std::vector<std::string> dargv = {prog, "run", "dipc", s, steps};
    dargv.insert(dargv.end(), dids.begin(), dids.end());
    auto d = c.run(1, dcmd(dargv), 120, denv);
    EXPECT_EQ(d.status, 0) << d.err;

    auto kl = lines(k.out), dl = lines(d.out);
    EXPECT_EQ(kl.size(), static_cast<size_t>(kSteps)) << "the kernel run did not complete:\n" << k.err;
    std::string div = first_divergence(kl, dl);
    EXPECT_EQ(div, "") << "seed " << seed << ": " << div;
    return kl;
  }
};
std::unique_ptr<SimCluster> Differential::cluster_;

TEST_F(Differential, ObjectsHomedOnAnotherNodeBehaveExactlyAsTheKernelsOwn) {
  // Which edge cases the sequences reached (from the kernel's transcripts): the comparison is only worth what the
  // sequences exercise, so the test fails if the generator stops reaching them.
  std::set<std::string> errnos;
  std::map<std::string, int> successes;
  for (int seed : {1, 2, 3, 4, 5, 6, 7, 8}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto kl = run_seed(seed);
    if (HasFailure()) return;  // the first divergence is the useful report
    for (const auto& l : kl) {
      auto arrow = l.find("-> ");
      if (arrow == std::string::npos) continue;
      std::istringstream is(l.substr(arrow + 3));
      std::string r, e;
      is >> r >> e;
      if (r == "-1") errnos.insert(e);
      else successes[l.substr(l.find(' ') + 1, l.find(' ', l.find(' ') + 1) - l.find(' ') - 1)]++;
    }
  }
  for (const char* e : {"EINVAL", "EEXIST", "ENOENT", "EAGAIN", "EFBIG", "ERANGE", "E2BIG", "ENOMSG"})
    EXPECT_TRUE(errnos.count(e)) << "no call in any seed returned " << e;
  // And plenty succeeded: received messages, semop, GETALL, private objects.
  for (const char* what : {"msgrcv", "msgsnd", "semop", "semtimedop", "semctl", "setval", "setall", "semget", "msgget",
                           "msgcopy", "seminfo", "msginfo"})
    EXPECT_GT(successes[what], 5) << what;
}

TEST_F(Differential, RawSystemCallsBehaveExactlyAsTheKernelsOwn) {
  // The same sequences made of raw system calls (as Go programs and some test suites make them), seen by dipc
  // through its seccomp filter and SIGSYS handler; objects homed on node2, calls from node1.
  for (int seed : {11, 12, 13}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    run_seed(seed, /*raw=*/true);
    if (HasFailure()) return;
  }
}

TEST_F(Differential, StaticBinaryBehavesExactlyAsTheKernelsOwn) {
  // A statically linked difftest, which no preload reaches: dipc-exec carries its SysV system calls.
  for (int seed : {21, 22}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    run_seed(seed, /*raw=*/false, /*static_binary=*/true);
    if (HasFailure()) return;
  }
}

TEST_F(Differential, DivergenceIsDetected) {
  // The comparison itself: the same seed with different step counts or different seeds must not compare equal.
  SimCluster& c = *cluster_;
  std::string prog = SimCluster::prog("difftest");
  auto s1 = parse_ids(c.run(1, {prog, "setup", "kernel", "101"}, 30, false).out);
  auto s2 = parse_ids(c.run(1, {prog, "setup", "kernel", "102"}, 30, false).out);
  ASSERT_EQ(s1.size(), 6u);
  ASSERT_EQ(s2.size(), 6u);
  std::vector<std::string> a = {prog, "run", "kernel", "101", "100"}, b = {prog, "run", "kernel", "102", "100"};
  a.insert(a.end(), s1.begin(), s1.end());
  b.insert(b.end(), s2.begin(), s2.end());
  auto ra = c.run(1, a, 30, false), rb = c.run(1, b, 30, false);
  ASSERT_EQ(ra.status, 0);
  ASSERT_EQ(rb.status, 0);
  EXPECT_NE(first_divergence(lines(ra.out), lines(rb.out)), "");
  auto la = lines(ra.out);
  ASSERT_FALSE(la.empty());
  EXPECT_NE(first_divergence(la, std::vector<std::string>(la.begin(), la.end() - 1)), "");
}

}  // namespace
}  // namespace dipc::test
