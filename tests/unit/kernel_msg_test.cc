// ipc/kernel_msg.h on this process's own IPC namespace: the kernel queue behind a queue homed here, driven as dipcd
// drives it for callers of other nodes (a nonblocking try, a worker asleep in the kernel), with a local program's
// calls made directly on the kernel id. Skipped where the kernel cannot show a thread asleep in msgrcv (qemu-user).
#include <gtest/gtest.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>

#include "common/event_loop.h"
#include "ipc/kernel_msg.h"
#include "tests/unit/loop_until.h"

namespace dipc::ipc {
namespace {

class KernelMsgQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!KernelMsgQueue::supported()) GTEST_SKIP() << "this system cannot show a thread asleep in msgrcv()";
    caller_.uid = geteuid();
    caller_.gid = getegid();
    caller_.pid = 4242;  // a process of another node
    caller_.node = 2;
    q_ = KernelMsgQueue::create(loop_, caller_, 0600);
    ASSERT_TRUE(q_) << strerror(errno);
  }
  // Runs the loop until `done` (bounded).
  template <typename F>
  bool run_until(F done) {
    return test::run_loop_until(loop_, done);
  }
  // A local program's msgsnd on the kernel queue itself.
  int local_send(long type, const char* text) {
    struct {
      long mtype;
      char text[64];
    } m{type, {}};
    std::memcpy(m.text, text, strlen(text));
    return msgsnd(q_->kid(), &m, strlen(text), IPC_NOWAIT);
  }

  EventLoop loop_;
  Creds caller_;
  std::unique_ptr<KernelMsgQueue> q_;
};

TEST_F(KernelMsgQueueTest, TriesAreTheKernelsNonblockingCalls) {
  Message m;
  EXPECT_EQ(q_->try_recv(100, 0, 0, caller_.pid, m), ENOMSG);
  EXPECT_EQ(q_->try_send(7, Bytes{'a', 'b', 'c'}, 0, caller_.pid), 0);
  EXPECT_EQ(q_->try_recv(2, 0, 0, caller_.pid, m), E2BIG);  // too long, no MSG_NOERROR: stays queued
  EXPECT_EQ(q_->try_recv(100, 0, MSG_COPY | IPC_NOWAIT, caller_.pid, m), 0);  // a copy at index 0
  EXPECT_EQ(m.mtype, 7);
  struct msqid_ds ds {};
  ASSERT_EQ(q_->stat(ds), 0);
  EXPECT_EQ(ds.msg_qnum, 1u);
  EXPECT_EQ(ds.msg_lspid, caller_.pid);  // dipcd sent it for the caller: its pid on its node
  EXPECT_EQ(q_->try_recv(100, 8, 0, caller_.pid, m), ENOMSG);  // no message of type 8
  EXPECT_EQ(q_->try_recv(100, 0, 0, caller_.pid, m), 0);
  EXPECT_EQ(m.text, (Bytes{'a', 'b', 'c'}));
  ASSERT_EQ(q_->stat(ds), 0);
  EXPECT_EQ(ds.msg_qnum, 0u);
  EXPECT_EQ(ds.msg_lrpid, caller_.pid);
}

TEST_F(KernelMsgQueueTest, AWaitingReceiverIsRegisteredOnlyAsleepAndALocalSenderWakesIt) {
  bool registered = false;
  std::optional<int> result;
  Message got;
  ASSERT_TRUE(q_->start_recv(1, caller_, 100, 0, 0, [&] { registered = true; },
                             [&](int e, Message m) {
                               result = e;
                               got = std::move(m);
                             }));
  ASSERT_TRUE(run_until([&] { return registered; }));
  EXPECT_FALSE(result);
  ASSERT_EQ(local_send(3, "wake"), 0);
  ASSERT_TRUE(run_until([&] { return result.has_value(); }));
  EXPECT_EQ(*result, 0);
  EXPECT_EQ(got.mtype, 3);
  EXPECT_EQ(got.text, (Bytes{'w', 'a', 'k', 'e'}));
  struct msqid_ds ds {};
  ASSERT_EQ(q_->stat(ds), 0);
  EXPECT_EQ(ds.msg_lrpid, caller_.pid);
}

TEST_F(KernelMsgQueueTest, ACancelledWaitEndsWithEcanceledAndARemovedQueueWakesItsWaitersWithEidrm) {
  bool registered = false;
  std::optional<int> cancelled, removed;
  ASSERT_TRUE(q_->start_recv(1, caller_, 100, 0, 0, [&] { registered = true; }, [&](int e, Message) { cancelled = e; }));
  ASSERT_TRUE(run_until([&] { return registered; }));
  EXPECT_TRUE(q_->cancel(1));
  ASSERT_TRUE(run_until([&] { return cancelled.has_value(); }));
  EXPECT_EQ(*cancelled, ECANCELED);
  EXPECT_FALSE(q_->cancel(1));  // gone

  // A sender waiting for room: the queue removed under it.
  struct msqid_ds ds {};
  ASSERT_EQ(q_->stat(ds), 0);
  ASSERT_EQ(q_->set(ds.msg_perm.uid, ds.msg_perm.gid, 0600, 4), 0);  // room for 4 bytes
  ASSERT_EQ(local_send(1, "full"), 0);
  registered = false;
  ASSERT_TRUE(q_->start_send(2, caller_, 1, Bytes{'x'}, 0, [&] { registered = true; }, [&](int e) { removed = e; }));
  ASSERT_TRUE(run_until([&] { return registered; }));
  q_.reset();  // IPC_RMID, workers joined
  ASSERT_TRUE(run_until([&] { return removed.has_value(); }));
  EXPECT_EQ(*removed, EIDRM);
}

}  // namespace
}  // namespace dipc::ipc
