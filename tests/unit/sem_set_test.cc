// SemSet semantics against Linux ipc/sem.c behaviour.
#include "ipc/sem_set.h"

#include <gtest/gtest.h>
#include <sys/ipc.h>
#include <sys/sem.h>

#include <fstream>

namespace dipc::ipc {
namespace {

constexpr int16_t kUndo = SEM_UNDO;
constexpr int16_t kNoWait = IPC_NOWAIT;

SemBuf op(uint16_t num, int16_t o, int16_t flg = 0) { return SemBuf{num, o, flg}; }

Creds cred(uint32_t uid, uint32_t gid, int32_t pid, std::vector<uint32_t> groups = {}) {
  Creds c;
  c.uid = uid;
  c.gid = gid;
  c.pid = pid;
  c.node = 1;
  c.groups = std::move(groups);
  return c;
}

class SemSetTest : public ::testing::Test {
 protected:
  static Perm perm(uint16_t mode) {
    Perm p;
    p.key = 0x1234;
    p.uid = p.cuid = 1000;
    p.gid = p.cgid = 100;
    p.mode = mode;
    return p;
  }
  SemSet make(int nsems = 2, uint16_t mode = 0600, Limits lim = {}) { return SemSet(perm(mode), nsems, lim, 50); }
  Outcome run(SemSet& s, uint64_t token, std::vector<SemBuf> sops, const Creds& c, int64_t now = 100) {
    return s.semop(token, sops, ProcKey{c.node, c.pid}, c, now);
  }
  static int val(const SemSet& s, int n) {
    int v = -1;
    EXPECT_EQ(s.getval(n, cred(1000, 100, 1), v), 0);
    return v;
  }
  static int pid(const SemSet& s, int n) {
    int v = -1;
    EXPECT_EQ(s.getpid(n, cred(1000, 100, 1), v), 0);
    return v;
  }
  static int ncnt(const SemSet& s, int n) {
    int v = -1;
    EXPECT_EQ(s.getncnt(n, cred(1000, 100, 1), v), 0);
    return v;
  }
  static int zcnt(const SemSet& s, int n) {
    int v = -1;
    EXPECT_EQ(s.getzcnt(n, cred(1000, 100, 1), v), 0);
    return v;
  }
  static std::vector<uint64_t> tokens(const std::vector<SemSet::Completion>& cs) {
    std::vector<uint64_t> t;
    for (const auto& c : cs) t.push_back(c.token);
    return t;
  }
  Creds owner = cred(1000, 100, 11);
  Creds p2 = cred(1000, 100, 22);
  Creds p3 = cred(1000, 100, 33);
  ProcKey k1{1, 11}, k2{1, 22};
};

bool done(const Outcome& o) { return o.kind == Outcome::kDone && o.err == 0; }
bool blocked(const Outcome& o) { return o.kind == Outcome::kBlocked; }
int error(const Outcome& o) { return o.kind == Outcome::kError ? o.err : 0; }

TEST_F(SemSetTest, NewSetIsZeroedWithCtime) {
  SemSet s = make(3);
  EXPECT_EQ(s.nsems(), 3);
  std::vector<uint16_t> all;
  ASSERT_EQ(s.getall(owner, all), 0);
  EXPECT_EQ(all, (std::vector<uint16_t>{0, 0, 0}));
  SemStat st;
  ASSERT_EQ(s.stat(owner, st), 0);
  EXPECT_EQ(st.nsems, 3u);
  EXPECT_EQ(st.ctime, 50);
  EXPECT_EQ(st.otime, 0);
  EXPECT_EQ(st.perm.key, 0x1234);
  EXPECT_EQ(pid(s, 0), 0);
}

TEST_F(SemSetTest, SemopSetsValuesPidAndOtime) {
  SemSet s = make();
  EXPECT_TRUE(done(run(s, 1, {op(0, 2), op(1, 5)}, owner, 123)));
  EXPECT_TRUE(done(run(s, 2, {op(1, -1)}, p2, 124)));
  EXPECT_EQ(val(s, 0), 2);
  EXPECT_EQ(val(s, 1), 4);
  EXPECT_EQ(pid(s, 0), 11);
  EXPECT_EQ(pid(s, 1), 22);
  SemStat st;
  ASSERT_EQ(s.stat(owner, st), 0);
  EXPECT_EQ(st.otime, 124);
  EXPECT_EQ(st.ctime, 50);
}

TEST_F(SemSetTest, EfbigIsCheckedBeforeEacces) {
  SemSet s = make(2, 0600);
  Creds stranger = cred(2000, 200, 5);
  EXPECT_EQ(error(run(s, 1, {op(0, 1), op(2, 1)}, stranger)), EFBIG);
  EXPECT_EQ(error(run(s, 1, {op(0, 1)}, stranger)), EACCES);
  EXPECT_EQ(error(run(s, 1, {op(2, 0)}, owner)), EFBIG);
}

TEST_F(SemSetTest, WaitForZeroNeedsOnlyReadAccess) {
  SemSet s = make(1, 0644);
  Creds reader = cred(2000, 200, 5);
  EXPECT_TRUE(done(run(s, 1, {op(0, 0)}, reader)));
  EXPECT_EQ(error(run(s, 2, {op(0, 1)}, reader)), EACCES);
  EXPECT_EQ(error(run(s, 3, {op(0, 0), op(0, -1, kNoWait)}, reader)), EACCES);
  SemSet closed = make(1, 0600);
  EXPECT_EQ(error(run(closed, 4, {op(0, 0)}, reader)), EACCES);
}

TEST_F(SemSetTest, MultiOpSetIsAllOrNothing) {
  SemSet s = make();
  ASSERT_EQ(s.setval(0, 1, owner, 7, 60), 0);
  // The first op succeeds on its own, the second cannot: nothing is applied.
  EXPECT_EQ(error(run(s, 1, {op(0, -1), op(1, -1, kNoWait)}, p2)), EAGAIN);
  EXPECT_EQ(val(s, 0), 1);
  EXPECT_EQ(pid(s, 0), 7);
  EXPECT_TRUE(blocked(run(s, 2, {op(0, -1), op(1, -1)}, p2)));
  EXPECT_EQ(val(s, 0), 1);
  SemStat st;
  ASSERT_EQ(s.stat(owner, st), 0);
  EXPECT_EQ(st.otime, 0);
  // Once sem 1 is raised, the whole set applies.
  EXPECT_TRUE(done(run(s, 3, {op(1, 1)}, p3, 200)));
  auto c = s.take_completed();
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].token, 2u);
  EXPECT_EQ(c[0].err, 0);
  EXPECT_EQ(val(s, 0), 0);
  EXPECT_EQ(val(s, 1), 0);
  EXPECT_EQ(pid(s, 0), 22);
  EXPECT_EQ(pid(s, 1), 22);
  EXPECT_TRUE(s.take_completed().empty());
}

TEST_F(SemSetTest, OpsOnTheSameSemaphoreApplyInOrder) {
  SemSet s = make(1);
  ASSERT_EQ(s.setval(0, 1, owner, 7, 60), 0);
  EXPECT_EQ(error(run(s, 1, {op(0, -1), op(0, -1, kNoWait)}, p2)), EAGAIN);
  EXPECT_TRUE(done(run(s, 2, {op(0, 1), op(0, -2)}, p2)));
  EXPECT_EQ(val(s, 0), 0);
  // Increment, then wait for zero in the same set: blocks on the zero op.
  EXPECT_EQ(error(run(s, 3, {op(0, 1), op(0, 0, kNoWait)}, p2)), EAGAIN);
  EXPECT_TRUE(done(run(s, 4, {op(0, 0), op(0, 1)}, p2)));
  EXPECT_EQ(val(s, 0), 1);
}

TEST_F(SemSetTest, NowaitMattersOnlyOnTheBlockingOp) {
  SemSet s = make();
  ASSERT_EQ(s.setval(0, 1, owner, 7, 60), 0);
  // op 0 has IPC_NOWAIT but proceeds; op 1 blocks without it: the caller waits.
  EXPECT_TRUE(blocked(run(s, 1, {op(0, -1, kNoWait), op(1, -1)}, p2)));
  EXPECT_EQ(s.pending(), 1u);
  // op 0 blocks (no IPC_NOWAIT) before the IPC_NOWAIT op 1 is looked at.
  EXPECT_TRUE(blocked(run(s, 2, {op(1, -1), op(0, -5, kNoWait)}, p2)));
  EXPECT_EQ(s.pending(), 2u);
}

TEST_F(SemSetTest, WaitForZeroCompletesWhenValueReachesZero) {
  SemSet s = make(1);
  ASSERT_EQ(s.setval(0, 2, owner, 7, 60), 0);
  EXPECT_TRUE(blocked(run(s, 1, {op(0, 0)}, p2)));
  EXPECT_EQ(zcnt(s, 0), 1);
  EXPECT_EQ(ncnt(s, 0), 0);
  EXPECT_TRUE(done(run(s, 2, {op(0, -1)}, p3)));
  EXPECT_TRUE(s.take_completed().empty());
  EXPECT_TRUE(done(run(s, 3, {op(0, -1)}, p3, 300)));
  auto c = s.take_completed();
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].token, 1u);
  EXPECT_EQ(c[0].err, 0);
  EXPECT_EQ(zcnt(s, 0), 0);
  // A wait-for-zero does not alter, so sempid is the waiter's (the kernel sets it for every op).
  EXPECT_EQ(pid(s, 0), 22);
}

TEST_F(SemSetTest, BlockedDecrementCompletesWhenAnotherProcessIncrements) {
  SemSet s = make(1);
  EXPECT_TRUE(blocked(run(s, 9, {op(0, -2)}, p2)));
  EXPECT_EQ(ncnt(s, 0), 1);
  EXPECT_TRUE(done(run(s, 1, {op(0, 1)}, p3)));
  EXPECT_TRUE(s.take_completed().empty());
  EXPECT_TRUE(done(run(s, 2, {op(0, 1)}, p3, 400)));
  auto c = s.take_completed();
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].token, 9u);
  EXPECT_EQ(val(s, 0), 0);
  EXPECT_EQ(pid(s, 0), 22);
  EXPECT_EQ(ncnt(s, 0), 0);
  SemStat st;
  ASSERT_EQ(s.stat(owner, st), 0);
  EXPECT_EQ(st.otime, 400);
}

TEST_F(SemSetTest, WaitersCompleteInFifoOrder) {
  SemSet s = make(1);
  for (uint64_t t = 1; t <= 3; ++t) EXPECT_TRUE(blocked(run(s, t, {op(0, -1)}, p2)));
  EXPECT_EQ(ncnt(s, 0), 3);
  EXPECT_TRUE(done(run(s, 10, {op(0, 1)}, p3)));
  EXPECT_EQ(tokens(s.take_completed()), (std::vector<uint64_t>{1}));
  EXPECT_TRUE(done(run(s, 11, {op(0, 2)}, p3)));
  EXPECT_EQ(tokens(s.take_completed()), (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(s.pending(), 0u);
}

TEST_F(SemSetTest, LaterWaiterThatFitsGoesAheadOfOneThatDoesNot) {
  SemSet s = make(1);
  EXPECT_TRUE(blocked(run(s, 1, {op(0, -2)}, p2)));
  EXPECT_TRUE(blocked(run(s, 2, {op(0, -1)}, p3)));
  EXPECT_TRUE(done(run(s, 10, {op(0, 1)}, owner)));
  EXPECT_EQ(tokens(s.take_completed()), (std::vector<uint64_t>{2}));
  EXPECT_EQ(s.pending(), 1u);
}

TEST_F(SemSetTest, ScanRestartsAfterACompletionChangesValues) {
  SemSet s = make();
  // A waits on sem 1; B waits on sem 0 and would then raise sem 1.
  EXPECT_TRUE(blocked(run(s, 1, {op(1, -1)}, p2)));
  EXPECT_TRUE(blocked(run(s, 2, {op(0, -1), op(1, 1)}, p3)));
  EXPECT_TRUE(done(run(s, 10, {op(0, 1)}, owner)));
  EXPECT_EQ(tokens(s.take_completed()), (std::vector<uint64_t>{2, 1}));
  EXPECT_EQ(val(s, 0), 0);
  EXPECT_EQ(val(s, 1), 0);
  EXPECT_EQ(pid(s, 1), 22);
}

TEST_F(SemSetTest, OverflowIsErangeAndRollsBack) {
  SemSet s = make();
  ASSERT_EQ(s.setval(0, 32767, owner, 7, 60), 0);
  EXPECT_EQ(error(run(s, 1, {op(0, 1)}, p2)), ERANGE);
  EXPECT_EQ(error(run(s, 2, {op(1, 5), op(0, 1)}, p2)), ERANGE);
  EXPECT_EQ(val(s, 0), 32767);
  EXPECT_EQ(val(s, 1), 0);
  EXPECT_EQ(pid(s, 1), 0);
  // A blocking op before the overflowing one wins: the caller waits.
  EXPECT_TRUE(blocked(run(s, 3, {op(1, -1), op(0, 1)}, p2)));
}

TEST_F(SemSetTest, SemvmxComesFromLimits) {
  Limits lim;
  lim.semvmx = 10;
  SemSet s = make(1, 0600, lim);
  EXPECT_TRUE(done(run(s, 1, {op(0, 10)}, owner)));
  EXPECT_EQ(error(run(s, 2, {op(0, 1)}, owner)), ERANGE);
  EXPECT_EQ(s.setval(0, 11, owner, 1, 1), ERANGE);
}

TEST_F(SemSetTest, QueuedOperationThatNowOverflowsCompletesWithErange) {
  SemSet s = make();
  EXPECT_TRUE(blocked(run(s, 1, {op(0, -1), op(1, 1)}, p2)));
  ASSERT_EQ(s.setval(1, 32767, owner, 7, 60), 0);
  EXPECT_TRUE(s.take_completed().empty());
  ASSERT_EQ(s.setval(0, 1, owner, 7, 61), 0);
  auto c = s.take_completed();
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].token, 1u);
  EXPECT_EQ(c[0].err, ERANGE);
  EXPECT_EQ(val(s, 0), 1);
  EXPECT_EQ(val(s, 1), 32767);
  EXPECT_EQ(s.pending(), 0u);
  SemStat st;
  ASSERT_EQ(s.stat(owner, st), 0);
  EXPECT_EQ(st.otime, 0);  // a failed completion does not count as an operation
}

TEST_F(SemSetTest, QueuedOperationBlockingOnANowaitOpCompletesWithEagain) {
  SemSet s = make();
  EXPECT_TRUE(blocked(run(s, 1, {op(0, -1), op(1, -1, kNoWait)}, p2)));
  ASSERT_EQ(s.setval(0, 1, owner, 7, 60), 0);
  auto c = s.take_completed();
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].err, EAGAIN);
  EXPECT_EQ(val(s, 0), 1);
}

TEST_F(SemSetTest, UndoIsAccumulatedAndAppliedAtExit) {
  SemSet s = make();
  EXPECT_FALSE(s.has_undo(k1));
  EXPECT_TRUE(done(run(s, 1, {op(0, 3, kUndo), op(1, 2)}, owner)));
  EXPECT_TRUE(done(run(s, 2, {op(0, -1, kUndo)}, owner)));
  EXPECT_TRUE(done(run(s, 3, {op(0, 4)}, p2)));  // no SEM_UNDO: not undone
  EXPECT_TRUE(s.has_undo(k1));
  EXPECT_FALSE(s.has_undo(k2));
  EXPECT_EQ(val(s, 0), 6);
  s.apply_undo(k1, 500);
  EXPECT_FALSE(s.has_undo(k1));
  EXPECT_EQ(val(s, 0), 4);
  EXPECT_EQ(val(s, 1), 2);
  EXPECT_EQ(pid(s, 0), 11);
  EXPECT_EQ(pid(s, 1), 11);  // from the semop; semaphores without adjustment are not touched
  SemStat st;
  ASSERT_EQ(s.stat(owner, st), 0);
  EXPECT_EQ(st.otime, 500);
  s.apply_undo(k1, 600);  // nothing left: no-op
  EXPECT_EQ(val(s, 0), 4);
}

TEST_F(SemSetTest, UndoIsKeptPerProcessAcrossNodes) {
  SemSet s = make(1);
  Creds remote = cred(1000, 100, 11);
  remote.node = 2;
  ProcKey rk{2, 11};
  EXPECT_TRUE(done(run(s, 1, {op(0, 1, kUndo)}, owner)));
  EXPECT_TRUE(done(run(s, 2, {op(0, 2, kUndo)}, remote)));
  s.apply_undo(rk, 10);
  EXPECT_EQ(val(s, 0), 1);
  EXPECT_TRUE(s.has_undo(k1));
}

TEST_F(SemSetTest, ApplyUndoClampsToZeroAndSemvmx) {
  SemSet s = make();
  EXPECT_TRUE(done(run(s, 1, {op(0, 5, kUndo)}, owner)));
  EXPECT_TRUE(done(run(s, 2, {op(0, -4)}, p2)));
  EXPECT_TRUE(done(run(s, 3, {op(1, 1)}, p2)));
  EXPECT_TRUE(done(run(s, 4, {op(1, -1, kUndo)}, owner)));
  EXPECT_TRUE(done(run(s, 5, {op(1, 32767)}, p2)));
  s.apply_undo(k1, 10);
  EXPECT_EQ(val(s, 0), 0);      // 1 - 5 clamped
  EXPECT_EQ(val(s, 1), 32767);  // 32767 + 1 clamped
  EXPECT_EQ(pid(s, 0), 11);
  EXPECT_EQ(pid(s, 1), 11);
}

TEST_F(SemSetTest, ApplyUndoWakesWaiters) {
  SemSet s = make(1);
  EXPECT_TRUE(done(run(s, 1, {op(0, 1, kUndo)}, owner)));
  EXPECT_TRUE(blocked(run(s, 2, {op(0, 0)}, p2)));
  EXPECT_TRUE(blocked(run(s, 3, {op(0, -2)}, p3)));
  s.apply_undo(k1, 10);
  EXPECT_EQ(tokens(s.take_completed()), (std::vector<uint64_t>{2}));
  EXPECT_EQ(s.pending(), 1u);
}

TEST_F(SemSetTest, UndoRangeIsCheckedLikeSemaem) {
  Limits lim;
  lim.semaem = 2;
  SemSet s = make(1, 0600, lim);
  EXPECT_TRUE(done(run(s, 1, {op(0, 3, kUndo)}, owner)));   // semadj -3 == -(semaem + 1): allowed
  EXPECT_EQ(error(run(s, 2, {op(0, 1, kUndo)}, owner)), ERANGE);  // -4
  EXPECT_EQ(val(s, 0), 3);
  EXPECT_TRUE(done(run(s, 3, {op(0, 1)}, owner)));           // without SEM_UNDO: fine
  EXPECT_EQ(error(run(s, 4, {op(0, -3, kUndo)}, p2)), ERANGE);  // semadj +3 > semaem
  EXPECT_FALSE(s.has_undo(k2));
  EXPECT_EQ(val(s, 0), 4);
  EXPECT_TRUE(done(run(s, 5, {op(0, -2, kUndo)}, p2)));
  s.apply_undo(k1, 1);
  EXPECT_EQ(val(s, 0), 0);  // 2 - 3 clamped
  s.apply_undo(k2, 1);
  EXPECT_EQ(val(s, 0), 2);
}

TEST_F(SemSetTest, FailedUndoSetLeavesAdjustmentsUnchanged) {
  SemSet s = make();
  EXPECT_TRUE(done(run(s, 1, {op(0, 2, kUndo)}, owner)));
  EXPECT_EQ(error(run(s, 2, {op(0, 1, kUndo), op(1, -1, kUndo | kNoWait)}, owner)), EAGAIN);
  s.apply_undo(k1, 1);
  EXPECT_EQ(val(s, 0), 0);
  EXPECT_EQ(val(s, 1), 0);
}

TEST_F(SemSetTest, QueuedUndoOperationRecordsAdjustmentForTheWaiter) {
  SemSet s = make(1);
  EXPECT_TRUE(blocked(run(s, 1, {op(0, -1, kUndo)}, p2)));
  EXPECT_FALSE(s.has_undo(k2));
  EXPECT_TRUE(done(run(s, 2, {op(0, 3)}, owner)));
  EXPECT_EQ(s.take_completed().size(), 1u);
  EXPECT_TRUE(s.has_undo(k2));
  EXPECT_EQ(val(s, 0), 2);
  s.apply_undo(k2, 1);
  EXPECT_EQ(val(s, 0), 3);
}

TEST_F(SemSetTest, SetvalClearsThatSemaphoresUndoInAllProcesses) {
  SemSet s = make();
  EXPECT_TRUE(done(run(s, 1, {op(0, 2, kUndo), op(1, 1, kUndo)}, owner)));
  EXPECT_TRUE(done(run(s, 2, {op(0, 3, kUndo)}, p2)));
  ASSERT_EQ(s.setval(0, 10, owner, 99, 70), 0);
  s.apply_undo(k1, 80);
  s.apply_undo(k2, 80);
  EXPECT_EQ(val(s, 0), 10);
  EXPECT_EQ(val(s, 1), 0);
  EXPECT_EQ(pid(s, 0), 99);
}

TEST_F(SemSetTest, SetallClearsAllUndo) {
  SemSet s = make();
  EXPECT_TRUE(done(run(s, 1, {op(0, 2, kUndo), op(1, 1, kUndo)}, owner)));
  ASSERT_EQ(s.setall({5, 6}, owner, 99, 70), 0);
  s.apply_undo(k1, 80);
  EXPECT_EQ(val(s, 0), 5);
  EXPECT_EQ(val(s, 1), 6);
}

TEST_F(SemSetTest, SetvalErrorsInKernelOrder) {
  SemSet s = make(2, 0640);
  Creds reader = cred(2000, 100, 5);
  EXPECT_EQ(s.setval(0, -1, owner, 1, 1), ERANGE);
  EXPECT_EQ(s.setval(0, 32768, owner, 1, 1), ERANGE);
  EXPECT_EQ(s.setval(9, -1, reader, 1, 1), ERANGE);  // range before index before permission
  EXPECT_EQ(s.setval(9, 1, reader, 1, 1), EINVAL);
  EXPECT_EQ(s.setval(-1, 1, owner, 1, 1), EINVAL);
  EXPECT_EQ(s.setval(0, 1, reader, 1, 1), EACCES);
  ASSERT_EQ(s.setval(1, 32767, owner, 42, 77), 0);
  EXPECT_EQ(val(s, 1), 32767);
  EXPECT_EQ(pid(s, 1), 42);
  SemStat st;
  ASSERT_EQ(s.stat(owner, st), 0);
  EXPECT_EQ(st.ctime, 77);
  EXPECT_EQ(st.otime, 0);
}

TEST_F(SemSetTest, GetErrorsCheckPermissionBeforeIndex) {
  SemSet s = make(2, 0600);
  Creds stranger = cred(2000, 200, 5);
  int v;
  EXPECT_EQ(s.getval(5, stranger, v), EACCES);
  EXPECT_EQ(s.getval(5, owner, v), EINVAL);
  EXPECT_EQ(s.getval(-1, owner, v), EINVAL);
  EXPECT_EQ(s.getpid(2, owner, v), EINVAL);
  EXPECT_EQ(s.getncnt(2, owner, v), EINVAL);
  EXPECT_EQ(s.getzcnt(2, owner, v), EINVAL);
  EXPECT_EQ(s.getncnt(0, stranger, v), EACCES);
  std::vector<uint16_t> all;
  EXPECT_EQ(s.getall(stranger, all), EACCES);
  SemStat st;
  EXPECT_EQ(s.stat(stranger, st), EACCES);
}

TEST_F(SemSetTest, SetallValidatesAndWakesWaiters) {
  SemSet s = make();
  Creds reader = cred(2000, 100, 5);
  EXPECT_EQ(s.setall({1}, owner, 1, 1), EINVAL);
  EXPECT_EQ(s.setall({1, 40000}, owner, 1, 1), ERANGE);
  EXPECT_EQ(s.setall({1, 1}, reader, 1, 1), EACCES);
  EXPECT_TRUE(blocked(run(s, 1, {op(0, -1), op(1, -2)}, p2)));
  ASSERT_EQ(s.setall({1, 2}, owner, 42, 90), 0);
  EXPECT_EQ(tokens(s.take_completed()), (std::vector<uint64_t>{1}));
  std::vector<uint16_t> all;
  ASSERT_EQ(s.getall(owner, all), 0);
  EXPECT_EQ(all, (std::vector<uint16_t>{0, 0}));
  SemStat st;
  ASSERT_EQ(s.stat(owner, st), 0);
  EXPECT_EQ(st.ctime, 90);
  EXPECT_EQ(st.otime, 90);  // the completed waiter counts as an operation (do_smart_update())
  ASSERT_EQ(s.setall({3, 4}, owner, 42, 91), 0);
  EXPECT_EQ(pid(s, 0), 42);
  EXPECT_EQ(pid(s, 1), 42);
}

TEST_F(SemSetTest, NcntAndZcntCountTheOpThatBlocked) {
  SemSet s = make(3);
  ASSERT_EQ(s.setval(1, 1, owner, 1, 1), 0);
  // Blocks on sem 0 (op 0); op 1 (zero wait on sem 1) would block too but is not counted.
  EXPECT_TRUE(blocked(run(s, 1, {op(0, -1), op(1, 0)}, p2)));
  EXPECT_EQ(ncnt(s, 0), 1);
  EXPECT_EQ(zcnt(s, 1), 0);
  // Once sem 0 can proceed the waiter blocks on sem 1 instead.
  ASSERT_EQ(s.setval(0, 1, owner, 1, 2), 0);
  EXPECT_TRUE(s.take_completed().empty());
  EXPECT_EQ(ncnt(s, 0), 0);
  EXPECT_EQ(zcnt(s, 1), 1);
  // Two decrements of one semaphore: the second is the one that blocks.
  ASSERT_EQ(s.setval(2, 1, owner, 1, 3), 0);
  EXPECT_TRUE(blocked(run(s, 2, {op(2, -1), op(2, -1)}, p3)));
  EXPECT_EQ(ncnt(s, 2), 1);
  EXPECT_TRUE(blocked(run(s, 3, {op(2, 0)}, p3)));
  EXPECT_EQ(zcnt(s, 2), 1);
  EXPECT_EQ(ncnt(s, 1), 0);
}

TEST_F(SemSetTest, CancelRemovesOnlyPendingWaiters) {
  SemSet s = make(1);
  EXPECT_TRUE(blocked(run(s, 1, {op(0, -1)}, p2)));
  EXPECT_TRUE(blocked(run(s, 2, {op(0, -1)}, p3)));
  EXPECT_TRUE(s.cancel(1));
  EXPECT_FALSE(s.cancel(1));
  EXPECT_FALSE(s.cancel(77));
  EXPECT_EQ(ncnt(s, 0), 1);
  EXPECT_TRUE(done(run(s, 10, {op(0, 1)}, owner)));
  EXPECT_EQ(tokens(s.take_completed()), (std::vector<uint64_t>{2}));
  EXPECT_FALSE(s.cancel(2));  // already completed
  EXPECT_EQ(val(s, 0), 0);
}

TEST_F(SemSetTest, RemoveWaitersReturnsAllPendingInOrder) {
  SemSet s = make();
  EXPECT_TRUE(blocked(run(s, 5, {op(0, -1)}, p2)));
  EXPECT_TRUE(blocked(run(s, 3, {op(1, -1)}, p3)));
  EXPECT_TRUE(done(run(s, 9, {op(1, 1)}, owner)));  // completes 3 first
  EXPECT_TRUE(blocked(run(s, 7, {op(1, -1)}, p3)));
  EXPECT_EQ(s.remove_waiters(), (std::vector<uint64_t>{5, 7}));
  EXPECT_EQ(s.pending(), 0u);
  EXPECT_TRUE(s.remove_waiters().empty());
  EXPECT_EQ(tokens(s.take_completed()), (std::vector<uint64_t>{3}));
}

TEST_F(SemSetTest, PermissionClasses) {
  SemSet s = make(1, 0640);
  Creds group_supp = cred(2000, 300, 5, {7, 100});  // member of the set's group via a supplementary group
  Creds group_cgid = cred(2000, 100, 5);
  Creds other = cred(2000, 300, 6);
  Creds other_cap = other;
  other_cap.cap_ipc_owner = true;
  int v;
  EXPECT_EQ(s.getval(0, group_supp, v), 0);
  EXPECT_EQ(s.getval(0, group_cgid, v), 0);
  EXPECT_EQ(s.setval(0, 1, group_supp, 5, 1), EACCES);
  EXPECT_EQ(error(run(s, 1, {op(0, 1)}, group_supp)), EACCES);
  EXPECT_EQ(s.getval(0, other, v), EACCES);
  EXPECT_EQ(error(run(s, 1, {op(0, 0)}, other)), EACCES);
  EXPECT_EQ(s.getval(0, other_cap, v), 0);
  EXPECT_EQ(s.setval(0, 3, other_cap, 6, 1), 0);
  EXPECT_TRUE(done(run(s, 1, {op(0, -1)}, other_cap)));
  // Owner bits apply to the owner even when they deny what group bits would grant.
  SemSet odd = make(1, 0060);
  EXPECT_EQ(odd.getval(0, owner, v), EACCES);
  EXPECT_EQ(odd.getval(0, group_supp, v), 0);
}

TEST_F(SemSetTest, IpcSetAndRmidNeedOwnershipOrCapSysAdmin) {
  SemSet s = make(1, 0600);
  Creds other = cred(2000, 200, 5);
  Creds admin = other;
  admin.cap_sys_admin = true;
  Creds ipc_owner_only = other;
  ipc_owner_only.cap_ipc_owner = true;
  EXPECT_EQ(s.set(2000, 200, 0666, other, 60), EPERM);
  EXPECT_EQ(s.set(2000, 200, 0666, ipc_owner_only, 60), EPERM);
  EXPECT_EQ(s.check_rmid(other), EPERM);
  EXPECT_EQ(s.check_rmid(owner), 0);
  EXPECT_EQ(s.check_rmid(admin), 0);
  ASSERT_EQ(s.set(3000, 300, 01644, owner, 61), 0);  // only the permission bits are taken
  SemStat st;
  ASSERT_EQ(s.stat(owner, st), 0);
  EXPECT_EQ(st.perm.uid, 3000u);
  EXPECT_EQ(st.perm.gid, 300u);
  EXPECT_EQ(st.perm.cuid, 1000u);
  EXPECT_EQ(st.perm.cgid, 100u);
  EXPECT_EQ(st.perm.mode & 07777, 0644);
  EXPECT_EQ(st.ctime, 61);
  // The creator keeps control after giving the set away; the new owner gets it.
  EXPECT_EQ(s.check_rmid(owner), 0);
  EXPECT_EQ(s.check_rmid(cred(3000, 1, 1)), 0);
  ASSERT_EQ(s.set(1, 1, 0600, admin, 62), 0);
  EXPECT_EQ(s.perm().uid, 1u);
}

TEST_F(SemSetTest, TakeCompletedDrains) {
  SemSet s = make(1);
  EXPECT_TRUE(blocked(run(s, 1, {op(0, -1)}, p2)));
  EXPECT_TRUE(done(run(s, 2, {op(0, 1)}, owner)));
  EXPECT_EQ(s.take_completed().size(), 1u);
  EXPECT_TRUE(s.take_completed().empty());
}

TEST(LimitsTest, ReadProcMatchesTheKernelOrKeepsDefaults) {
  Limits l = Limits::read_proc();
  std::ifstream f("/proc/sys/kernel/sem");
  int msl, mns, opm, mni;
  if (f >> msl >> mns >> opm >> mni) {
    EXPECT_EQ(l.semmsl, msl);
    EXPECT_EQ(l.semmns, mns);
    EXPECT_EQ(l.semopm, opm);
    EXPECT_EQ(l.semmni, mni);
  } else {
    EXPECT_EQ(l.semmsl, Limits{}.semmsl);
  }
  std::ifstream m("/proc/sys/kernel/msgmnb");
  int mnb;
  EXPECT_EQ(l.msgmnb, (m >> mnb) ? mnb : Limits{}.msgmnb);
  EXPECT_EQ(l.semvmx, 32767);
  EXPECT_EQ(l.semaem, 32767);
  EXPECT_GT(l.msgmax, 0);
  EXPECT_GT(l.msgmni, 0);
}

}  // namespace
}  // namespace dipc::ipc
