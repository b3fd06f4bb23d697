// Differential test of distributed shared memory: the same seeded random sequences of shmget/shmat/shmdt/shmctl calls
// (edge cases and errors included) and of loads and stores into the attached memory (tests/progs/shmdiff.c), run once
// against the local kernel and once against dipc, must produce identical transcripts: every return value, errno,
// IPC_STAT field (as classes where ids, pids and times differ) and memory checksum.
//
// The dipc segments are created by a process on node2 and the sequence runs on node1 from the ids it was handed, so
// the segments' home is another node (another network and IPC namespace when root): a call the preload failed to
// forward would reach node1's kernel, which has no such id, and diverge at once. The kernel run uses no preload.
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

constexpr int kSteps = 500;
constexpr size_t kSlots = 4;


bool has(const std::string& l, const std::string& what) { return l.find(what) != std::string::npos; }

class ShmDifferential : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { cluster_ = std::make_unique<SimCluster>(SimCluster::Options{.nodes = 2}); }
  static void TearDownTestSuite() { cluster_.reset(); }
  static std::unique_ptr<SimCluster> cluster_;

  // Runs one seed both ways; returns the kernel transcript after asserting the dipc one equals it.
  // raw: every call a raw system call (SHMDIFF_RAW=1), which dipc sees through its seccomp path (DIPC_SECCOMP=1).
  // static_binary: shmdiff linked statically, its dipc runs under dipc-exec (which maps segments into it by ptrace).
  std::vector<std::string> run_seed(int seed, bool raw = false, bool static_binary = false) {
    SimCluster& c = *cluster_;
    std::vector<std::string> kenv, denv;
    if (raw) {
      kenv = {"SHMDIFF_RAW=1"};
      denv = {"SHMDIFF_RAW=1", "DIPC_SECCOMP=1"};
    }
    if (static_binary) kenv = denv = {"DIPC_TEST_ANY_PID=1"};  // dipc records dipc-exec's pid (README)
    std::string prog = SimCluster::prog(static_binary ? "shmdiff-static" : "shmdiff"), s = std::to_string(seed),
                steps = std::to_string(kSteps);
    std::vector<std::string> exec;
    if (static_binary) exec = {SimCluster::bin("dipc-exec")};

    auto ks = c.run(1, {prog, "setup", "kernel", s}, 30, /*preload=*/false, kenv);
    EXPECT_EQ(ks.status, 0) << ks.err;
    auto kids = parse_ids(ks.out);
    EXPECT_EQ(kids.size(), kSlots) << ks.out;
    std::vector<std::string> kargv = {prog, "run", "kernel", s, steps};
    kargv.insert(kargv.end(), kids.begin(), kids.end());
    auto k = c.run(1, kargv, 120, /*preload=*/false, kenv);
    EXPECT_EQ(k.status, 0) << k.err;

    std::vector<std::string> dsargv = exec;
    dsargv.insert(dsargv.end(), {prog, "setup", "dipc", s});
    auto ds = c.run(2, dsargv, 30, denv);
    EXPECT_EQ(ds.status, 0) << ds.err;
    auto dids = parse_ids(ds.out);
    EXPECT_EQ(dids.size(), kSlots) << ds.out;
    std::vector<std::string> dargv = exec;
    dargv.insert(dargv.end(), {prog, "run", "dipc", s, steps});
    dargv.insert(dargv.end(), dids.begin(), dids.end());
    auto d = c.run(1, dargv, 120, denv);
    EXPECT_EQ(d.status, 0) << d.err;

    auto kl = lines(k.out), dl = lines(d.out);
    EXPECT_EQ(kl.size(), static_cast<size_t>(kSteps)) << "the kernel run did not complete:\n" << k.err;
    std::string div = first_divergence(kl, dl, 12);
    EXPECT_EQ(div, "") << "seed " << seed << ": " << div << "dipc stderr:\n" << d.err;
    return kl;
  }
};
std::unique_ptr<SimCluster> ShmDifferential::cluster_;

TEST_F(ShmDifferential, SegmentsHomedOnAnotherNodeBehaveExactlyAsTheKernelsOwn) {
  // What the sequences reached (from the kernel's transcripts): the comparison is only worth what they exercise, so
  // the test fails if the generator stops reaching these.
  std::set<std::string> errnos;
  std::map<std::string, int> seen;
  for (int seed : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    auto kl = run_seed(seed);
    if (HasFailure()) return;  // the first divergence is the useful report
    for (const auto& l : kl) {
      std::istringstream is(l);
      for (std::string w, prev; is >> w; prev = w)
        if (prev == "-1" || prev.ends_with("=-1")) errnos.insert(w);
      auto arrow = l.find("-> ");
      std::string result = arrow == std::string::npos ? "" : l.substr(arrow + 3);
      if (has(l, ": shmat ") && result.starts_with("ok")) seen["shmat ok"]++;
      if (has(l, ": shmat ") && has(l, " null ") && result.starts_with("ok")) seen["shmat null ok"]++;
      if (has(l, " at-window ")) seen["shmat at an address"]++;
      // Flags are printed in octal: SHM_RDONLY 010000, SHM_RND 020000, SHM_REMAP 040000.
      if ((has(l, " fl=20000 ") || has(l, " fl=30000 ")) && has(l, " at-window ")) seen["shmat SHM_RND"]++;
      if ((has(l, " fl=40000 ") || has(l, " fl=50000 ")) && has(l, " at-window ")) seen["shmat SHM_REMAP"]++;
      if (has(l, " replaced=att")) seen["SHM_REMAP over an attach"]++;
      if (has(l, " remap=same-place ")) seen["SHM_REMAP over a removed segment's last attach"]++;
      if ((has(l, " fl=10000 ") || has(l, " fl=30000 ")) && result.starts_with("ok")) seen["SHM_RDONLY"]++;
      if (has(l, "-> SIGSEGV")) seen["write to SHM_RDONLY faults"]++;
      if (has(l, ": shmdt att") && !has(l, "+") && result == "0") seen["shmdt ok"]++;
      if (has(l, ": shmdt ") && has(result, "-1 EINVAL")) seen["shmdt EINVAL"]++;
      if (has(l, " stat=0 ")) seen["IPC_STAT ok"]++;
      if (has(l, " dest=1 ")) seen["SHM_DEST"]++;
      if (has(l, " locked=1 ")) seen["SHM_LOCKED"]++;
      if (has(l, ": shmset ") && has(l, "-> 0 ")) seen["IPC_SET ok"]++;
      if (has(l, ": shmrm ") && has(l, "-> 0 ")) seen["IPC_RMID ok"]++;
      if (has(l, ": shmget slot ") && has(l, "-> ok new")) seen["shmget creates anew"]++;
      if (has(l, ": shmget slot ") && has(l, "-> ok same")) seen["shmget existing"]++;
      if (has(l, ": private ") && has(l, "-> ok")) seen["IPC_PRIVATE"]++;
      if (has(l, ": read att")) seen["read"]++;
      if (has(l, ": write att") && result == "ok") seen["write"]++;
      if (has(l, ": shminfo -> ok") && !has(l, " found=0")) seen["SHM_STAT scan finds"]++;
      // Removed ids: EINVAL (or EIDRM) once the segment is gone.
      if ((has(l, " stale") && (has(l, "-1 EINVAL") || has(l, "-1 EIDRM"))) ||
          (has(l, ": shmrm ") && has(l, "-> 0 stat=-1 EINVAL")))
        seen["removed id refused"]++;
    }
  }
  for (const char* e : {"EINVAL", "EEXIST", "ENOENT", "EFAULT"})
    EXPECT_TRUE(errnos.count(e)) << "no call in any seed returned " << e;
  for (const char* what :
       {"shmat ok", "shmat null ok", "shmat at an address", "shmat SHM_RND", "shmat SHM_REMAP",
        "SHM_REMAP over an attach", "SHM_REMAP over a removed segment's last attach", "SHM_RDONLY",
        "write to SHM_RDONLY faults", "shmdt ok", "shmdt EINVAL", "IPC_STAT ok", "SHM_DEST", "SHM_LOCKED", "IPC_SET ok",
        "IPC_RMID ok", "shmget creates anew", "shmget existing", "IPC_PRIVATE", "read", "write", "removed id refused",
        "SHM_STAT scan finds"})
    EXPECT_GT(seen[what], 2) << what;
  EXPECT_GT(seen["shmat ok"], 50);
  EXPECT_GT(seen["shmdt ok"], 30);
  EXPECT_GT(seen["IPC_STAT ok"], 100);
}

TEST_F(ShmDifferential, RawSystemCallsBehaveExactlyAsTheKernelsOwn) {
  // The same sequences made of raw system calls, seen by dipc through its seccomp filter and SIGSYS handler.
  for (int seed : {11, 12}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    run_seed(seed, /*raw=*/true);
    if (HasFailure()) return;
  }
}

TEST_F(ShmDifferential, StaticBinaryBehavesExactlyAsTheKernelsOwn) {
  // The same sequences from a statically linked program, which no preload reaches: dipc-exec carries its calls and
  // maps the segments into it (shmat, SHM_RND, SHM_REMAP, SHM_RDONLY, shmdt) by ptrace system call injection.
  for (int seed : {21, 22}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    run_seed(seed, /*raw=*/false, /*static_binary=*/true);
    if (HasFailure()) return;
  }
}

TEST_F(ShmDifferential, DivergenceIsDetected) {
  // The comparison itself: different seeds, or a transcript cut short, must not compare equal.
  SimCluster& c = *cluster_;
  std::string prog = SimCluster::prog("shmdiff");
  auto s1 = parse_ids(c.run(1, {prog, "setup", "kernel", "101"}, 30, false).out);
  auto s2 = parse_ids(c.run(1, {prog, "setup", "kernel", "102"}, 30, false).out);
  ASSERT_EQ(s1.size(), kSlots);
  ASSERT_EQ(s2.size(), kSlots);
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
