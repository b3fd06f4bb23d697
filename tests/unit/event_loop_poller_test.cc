// EventLoop hooks for completion-queue providers: pollers called while the loop polls, add() errors as a Status,
// UniqueFd ownership.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "common/event_loop.h"
#include "common/unique_fd.h"

namespace dipc {
namespace {

TEST(EventLoopPoller, ABusyPollingLoopCallsThePollerAndStopsSpinningWhenItHandledSomething) {
  EventLoop loop;
  int calls = 0;
  bool fired = false;
  auto id = loop.add_poller([&] {
    ++calls;
    return calls == 3 ? 1 : 0;  // a completion shows up on the third poll
  });
  loop.add_timer(2000, [&] { fired = true; });
  loop.set_busy_poll_us(1000000);  // would spin for a second without the poller's completion
  int64_t t0 = EventLoop::now_ms();
  loop.run_once(5000);
  EXPECT_EQ(calls, 3);
  EXPECT_FALSE(fired);  // returned at the completion, not at the timer
  EXPECT_LT(EventLoop::now_ms() - t0, 900);
  loop.remove_poller(id);
  loop.set_busy_poll_us(0);
  loop.run_once(0);
  EXPECT_EQ(calls, 3);  // removed: never called again; a loop that does not poll never calls it either
}

TEST(EventLoopPoller, ALoopArmsItsPollersBeforeItSleepsAndStaysAwakeWhenArmingFoundWork) {
  EventLoop loop;
  int polls = 0, arms = 0, found = 0;
  bool fired = false;
  auto id = loop.add_poller(
      [&] {
        ++polls;
        return 0;
      },
      [&] {
        ++arms;
        return found;
      });
  loop.set_busy_poll_us(2000);
  loop.add_timer(30, [&] { fired = true; });
  // Nothing to find: the loop polls 2 ms, arms once, then sleeps until the timer.
  loop.run_once(-1);
  EXPECT_GT(polls, 0);
  EXPECT_EQ(arms, 1);
  if (!fired) loop.run_once(-1);  // (the timer's own iteration when the poll ended right at it)
  EXPECT_TRUE(fired);
  // Arming finds a completion: the loop does not sleep on the far timer, it returns to poll again.
  found = 1;
  fired = false;
  loop.add_timer(5000, [&] { fired = true; });
  int64_t t0 = EventLoop::now_ms();
  loop.run_once(-1);
  EXPECT_FALSE(fired);
  EXPECT_LT(EventLoop::now_ms() - t0, 2000);
  EXPECT_GE(arms, 2);
  // No sleep ahead (timeout 0): no arming either.
  int before = arms;
  loop.run_once(0);
  EXPECT_EQ(arms, before);
  loop.remove_poller(id);
}

TEST(EventLoopPoller, AddReportsEpollErrorsAsAStatus) {
  EventLoop loop;
  EXPECT_EQ(loop.add(-1, EPOLLIN, [](uint32_t) {}).code(), EBADF);
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  UniqueFd r(p[0]), w(p[1]);
  EXPECT_TRUE(loop.add(r.get(), EPOLLIN, [](uint32_t) {}));
  EXPECT_EQ(loop.add(r.get(), EPOLLIN, [](uint32_t) {}).code(), EEXIST);
  loop.remove(r.get());
}

TEST(UniqueFdTest, ClosesOnceAndMovesOwnership) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  int raw = p[0];
  {
    UniqueFd a(raw);
    UniqueFd b(std::move(a));
    EXPECT_FALSE(a);
    EXPECT_EQ(b.get(), raw);
    EXPECT_NE(fcntl(raw, F_GETFD), -1);
  }
  EXPECT_EQ(fcntl(raw, F_GETFD), -1);  // closed when its owner went
  UniqueFd w(p[1]);
  int kept = w.release();
  EXPECT_FALSE(w);
  EXPECT_NE(fcntl(kept, F_GETFD), -1);
  close(kept);
}

}  // namespace
}  // namespace dipc
