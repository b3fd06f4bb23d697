// ipc/kernel_object.h's pool of parked worker threads, which sleep in the kernel for callers of other nodes: a
// thread serves one call after another with dipcd's own credentials back between them, a cancel reaches only the
// call it was meant for, and the pool's bound holds. On this process's own IPC namespace, with real kernel objects.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "common/event_loop.h"
#include "ipc/kernel_msg.h"
#include "ipc/kernel_object.h"
#include "ipc/kernel_sem.h"
#include "tests/unit/loop_until.h"

namespace dipc::ipc {
namespace {

// Runs one job on `pool` and waits until its thread is back in the pool (bounded): the thread id it ran on.
template <typename F>
pid_t run_on(KernelWorkerPool& pool, F fn) {
  auto job = std::make_shared<KernelWorkerPool::Job>();
  std::promise<pid_t> ran;
  auto got = ran.get_future();
  job->run = [&ran, fn](KernelWorkerPool::Job& j) {
    fn();
    ran.set_value(j.tid.load());
  };
  if (!pool.submit(job)) return -1;
  if (got.wait_for(std::chrono::seconds(10)) != std::future_status::ready) return -1;
  for (auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
       pool.busy() != 0 && std::chrono::steady_clock::now() < end;)
    std::this_thread::yield();  // the thread restores its credentials and parks (bounded)
  return pool.busy() == 0 ? got.get() : -1;
}

TEST(KernelWorkerPool, AWorkerThatServedAnotherUserServesTheNextCallWithTheDaemonsOwnCredentials) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root: a worker takes a caller's uid only in a root daemon";
  KernelWorkerPool pool;
  // A queue only root may write: the kernel itself says which uid the next call runs with.
  int kid = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
  ASSERT_GE(kid, 0) << strerror(errno);
  gid_t groups_before[64];
  int ngroups_before = getgroups(64, groups_before);
  long seen_uid = -1;
  pid_t as_user = run_on(pool, [&] {
    gid_t g = 1000;
    ASSERT_EQ(syscall(SYS_setgroups, 1, &g), 0);
    ASSERT_EQ(syscall(SYS_setresgid, -1, 1000, -1), 0);
    ASSERT_EQ(syscall(SYS_setresuid, -1, 1000, -1), 0);  // as become() in kernel_msg.cc
    seen_uid = syscall(SYS_geteuid);
  });
  ASSERT_GT(as_user, 0);
  EXPECT_EQ(seen_uid, 1000);
  EXPECT_EQ(geteuid(), 0u);  // the test's own thread never changed
  // The next calls until one lands on that same thread (the pool keeps it parked): each sees uid 0 and root's
  // groups, and the kernel lets it write to root's queue.
  bool reused = false;
  for (int i = 0; i < 64 && !reused; ++i) {
    long uid = -1, gid = -1;
    int sent = -1, ngroups = -1;
    gid_t groups[64];
    pid_t t = run_on(pool, [&] {
      uid = syscall(SYS_geteuid);
      gid = syscall(SYS_getegid);
      ngroups = getgroups(64, groups);
      struct {
        long mtype;
        char c;
      } m{1, 'x'};
      sent = msgsnd(kid, &m, 1, IPC_NOWAIT);
    });
    ASSERT_GT(t, 0);
    EXPECT_EQ(uid, 0);
    EXPECT_EQ(gid, static_cast<long>(getegid()));
    ASSERT_EQ(ngroups, ngroups_before);
    EXPECT_EQ(std::vector<gid_t>(groups, groups + ngroups), std::vector<gid_t>(groups_before, groups_before + ngroups));
    EXPECT_EQ(sent, 0) << strerror(errno);
    reused = t == as_user;
  }
  EXPECT_TRUE(reused) << "no later call ran on the thread that served uid 1000";
  EXPECT_EQ(pool.threads(), 1u);  // one call at a time: one thread, parked between calls
  msgctl(kid, IPC_RMID, nullptr);
}

TEST(KernelWorkerPool, GrowsToItsBoundThenRefusesAndKeepsItsThreadsParked) {
  KernelWorkerPool pool(2);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  int running = 0;
  auto blocker = [&] {
    auto job = std::make_shared<KernelWorkerPool::Job>();
    job->run = [&](KernelWorkerPool::Job&) {
      std::unique_lock<std::mutex> g(mu);
      ++running;
      cv.notify_all();
      cv.wait_for(g, std::chrono::seconds(20), [&] { return release; });
      --running;
      cv.notify_all();
    };
    return job;
  };
  ASSERT_TRUE(pool.submit(blocker()));
  ASSERT_TRUE(pool.submit(blocker()));
  {
    std::unique_lock<std::mutex> g(mu);
    ASSERT_TRUE(cv.wait_for(g, std::chrono::seconds(10), [&] { return running == 2; }));
  }
  EXPECT_EQ(pool.threads(), 2u);
  EXPECT_EQ(pool.busy(), 2u);
  EXPECT_FALSE(pool.submit(blocker()));  // the bound: refused, not queued behind calls that may never return
  {
    std::unique_lock<std::mutex> g(mu);
    release = true;
    cv.notify_all();
    ASSERT_TRUE(cv.wait_for(g, std::chrono::seconds(10), [&] { return running == 0; }));
  }
  for (auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
       pool.parked() < 2 && std::chrono::steady_clock::now() < end;)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // polling a bounded condition
  EXPECT_EQ(pool.parked(), 2u);
  EXPECT_EQ(pool.busy(), 0u);
  // Parked threads take the next calls: none is made.
  EXPECT_GT(run_on(pool, [] {}), 0);
  EXPECT_GT(run_on(pool, [] {}), 0);
  EXPECT_EQ(pool.threads(), 2u);
}

class KernelWaitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!KernelSemSet::supported()) GTEST_SKIP() << "this system cannot show a thread asleep in semtimedop()";
    Creds c;
    c.uid = geteuid();
    c.gid = getegid();
    set_ = KernelSemSet::create(loop_, c, 2, 0600);
    ASSERT_TRUE(set_) << strerror(errno);
  }
  template <typename F>
  bool run_until(F done) {
    return test::run_loop_until(loop_, done);
  }
  // A remote P on semaphore `num`: waits in a pool worker.
  struct Wait {
    bool registered = false;
    std::optional<int> result;
  };
  bool start(uint64_t token, unsigned short num, Wait& w) {
    return set_->start_wait(token, {sembuf{num, -1, 0}}, 4242, [&w] { w.registered = true; },
                            [&w](int e) { w.result = e; });
  }
  int post(unsigned short num) {
    struct sembuf b {num, 1, 0};
    return semop(set_->kid(), &b, 1);
  }
  // A cancel signal to every thread of this process but the caller: what a late signal meant for an earlier call
  // does to whichever call its worker serves now.
  static void signal_every_thread() {
    pid_t self = static_cast<pid_t>(syscall(SYS_gettid));
    std::vector<pid_t> tids;
    if (DIR* d = opendir("/proc/self/task")) {
      while (dirent* e = readdir(d))
        if (pid_t t = static_cast<pid_t>(atoi(e->d_name)); t > 0 && t != self) tids.push_back(t);
      closedir(d);
    }
    for (pid_t t : tids) syscall(SYS_tgkill, getpid(), t, SIGRTMIN + 3);
  }

  EventLoop loop_;
  std::unique_ptr<KernelSemSet> set_;
};

TEST_F(KernelWaitsTest, ACancelEndsOnlyItsOwnCallAndALateSignalLeavesTheNextCallAsleep) {
  Wait a, b;
  ASSERT_TRUE(start(1, 0, a));
  ASSERT_TRUE(start(2, 1, b));
  ASSERT_TRUE(run_until([&] { return a.registered && b.registered; }));
  EXPECT_TRUE(set_->cancel(1));
  ASSERT_TRUE(run_until([&] { return a.result.has_value(); }));
  EXPECT_EQ(*a.result, ECANCELED);
  EXPECT_FALSE(b.result.has_value());
  EXPECT_EQ(set_->ctl(1, GETNCNT), 1);  // b still sleeps in the kernel set
  EXPECT_FALSE(set_->cancel(1));

  // a's worker now serves c; signals as late as any cancel of a can be reach every worker: c and b sleep on.
  Wait c;
  ASSERT_TRUE(start(3, 0, c));
  ASSERT_TRUE(run_until([&] { return c.registered; }));
  for (int i = 0; i < 5; ++i) {
    signal_every_thread();
    loop_.run_once(1);
  }
  for (auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
       (set_->ctl(0, GETNCNT) != 1 || set_->ctl(1, GETNCNT) != 1) && std::chrono::steady_clock::now() < end;)
    loop_.run_once(1);  // back asleep after the EINTR (bounded)
  EXPECT_EQ(set_->ctl(0, GETNCNT), 1);
  EXPECT_EQ(set_->ctl(1, GETNCNT), 1);
  EXPECT_FALSE(c.result.has_value());
  EXPECT_FALSE(b.result.has_value());
  ASSERT_EQ(post(0), 0);
  ASSERT_EQ(post(1), 0);
  ASSERT_TRUE(run_until([&] { return b.result.has_value() && c.result.has_value(); }));
  EXPECT_EQ(*b.result, 0);
  EXPECT_EQ(*c.result, 0);
  EXPECT_EQ(set_->ctl(0, GETVAL), 0);  // each post taken once
  EXPECT_EQ(set_->ctl(1, GETVAL), 0);
}

TEST_F(KernelWaitsTest, ARegisteredCallIsCountedByTheKernelAndItsRemovalGivesEidrm) {
  Wait a;
  ASSERT_TRUE(start(1, 0, a));
  ASSERT_TRUE(run_until([&] { return a.registered; }));
  EXPECT_EQ(set_->ctl(0, GETNCNT), 1);  // registered means the kernel counts it
  set_.reset();  // IPC_RMID, then every call waited for
  ASSERT_TRUE(run_until([&] { return a.result.has_value(); }));
  EXPECT_EQ(*a.result, EIDRM);
}

}  // namespace
}  // namespace dipc::ipc
