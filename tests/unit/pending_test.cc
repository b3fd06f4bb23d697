// The providers' back-pressure retry queue (transport/pending.h), driven without a transport: a fake "room" that
// admits a number of operations stands for the provider's queue space.
#include <gtest/gtest.h>

#include <vector>

#include "transport/pending.h"

namespace dipc::transport {
namespace {

// A peer with room for `room` operations; admit() behaves as the providers' does.
struct FakePeer {
  PendingQueue q;
  int room = 0;
  std::vector<int> issued;  // in acceptance order
  Status issue(int n) {
    if (q.blocks_new() || room == 0) return Status::err(kNoResources);
    --room;
    issued.push_back(n);
    return Status::ok();
  }
};

TEST(PendingQueue, RetriesRunInOrderAndARefusedOneStaysFirstInLine) {
  FakePeer p;
  for (int i = 0; i < 4; ++i) p.q.add([&p, i] { return p.issue(i); });
  p.room = 5;
  EXPECT_EQ(p.issue(99).code(), kNoResources) << "a new operation overtook the queued retries";
  EXPECT_TRUE(p.issued.empty());
  p.room = 2;
  ASSERT_TRUE(p.q.want_run());
  EXPECT_FALSE(p.q.want_run()) << "a second run was scheduled before the first ran";
  p.q.run();
  EXPECT_EQ(p.issued, (std::vector<int>{0, 1}));
  EXPECT_EQ(p.q.size(), 2u);
  EXPECT_TRUE(p.q.blocks_new());
  p.room = 10;
  ASSERT_TRUE(p.q.want_run());
  p.q.run();
  EXPECT_EQ(p.issued, (std::vector<int>{0, 1, 2, 3}));
  EXPECT_TRUE(p.q.empty());
  EXPECT_FALSE(p.q.blocks_new());
  EXPECT_TRUE(p.issue(4).is_ok());
  EXPECT_FALSE(p.q.want_run()) << "nothing to run";
}

TEST(PendingQueue, AFailedRetryIsDroppedAndTheNextOneRuns) {
  PendingQueue q;
  std::vector<int> ran;
  q.add([&] {
    ran.push_back(1);
    return Status::err(ECONNRESET);  // the retry reports its own failure; the queue goes on
  });
  q.add([&] {
    ran.push_back(2);
    return Status::ok();
  });
  ASSERT_TRUE(q.want_run());
  q.run();
  EXPECT_EQ(ran, (std::vector<int>{1, 2}));
  EXPECT_TRUE(q.empty());
}

TEST(PendingQueue, ARetryAddedWhileRunningRunsInTheSamePassBehindTheOthers) {
  PendingQueue q;
  std::vector<int> ran;
  q.add([&] {
    ran.push_back(1);
    q.add([&] {
      ran.push_back(3);
      return Status::ok();
    });
    return Status::ok();
  });
  q.add([&] {
    ran.push_back(2);
    return Status::ok();
  });
  ASSERT_TRUE(q.want_run());
  q.run();
  EXPECT_EQ(ran, (std::vector<int>{1, 2, 3}));
}

}  // namespace
}  // namespace dipc::transport
