// ShmSeg: the home's bookkeeping of one segment, against what Linux ipc/shm.c does.
#include "ipc/shm_seg.h"

#include <gtest/gtest.h>
#include <sys/ipc.h>
#include <sys/shm.h>

namespace dipc::ipc {
namespace {

Perm perm(uint16_t mode, uint32_t uid = 1000, uint32_t gid = 1000) {
  Perm p;
  p.key = 0x1234;
  p.uid = p.cuid = uid;
  p.gid = p.cgid = gid;
  p.mode = mode;
  return p;
}
Creds who(uint32_t uid, uint32_t gid = 2000) {
  Creds c;
  c.uid = uid;
  c.gid = gid;
  c.pid = 42;
  return c;
}

TEST(ShmSeg, OpenChecksSizeBeforePermissions) {
  ShmSeg s(perm(0600), 8192, 7, 100);
  EXPECT_EQ(s.open_check(who(1000), 8192, 0600), 0);
  EXPECT_EQ(s.open_check(who(1000), 0, 0), 0);            // size 0 opens any segment
  EXPECT_EQ(s.open_check(who(1000), 8193, 0600), EINVAL);  // larger than the segment
  EXPECT_EQ(s.open_check(who(5), 8193, 0600), EINVAL);     // shm_more_checks() comes first
  EXPECT_EQ(s.open_check(who(5), 100, 0400), EACCES);
}

TEST(ShmSeg, AttachNeedsReadAndWriteUnlessReadOnly) {
  ShmSeg s(perm(0640), 4096, 7, 100);
  EXPECT_EQ(s.attach_check(who(1000), 0), 0);
  EXPECT_EQ(s.attach_check(who(5, 1000), SHM_RDONLY), 0);  // group may read
  EXPECT_EQ(s.attach_check(who(5, 1000), 0), EACCES);       // but not write
  EXPECT_EQ(s.attach_check(who(5, 9), SHM_RDONLY), EACCES);
  Creds owner_cap = who(5, 9);
  owner_cap.cap_ipc_owner = true;
  EXPECT_EQ(s.attach_check(owner_cap, 0), 0);
}

TEST(ShmSeg, RemovalIsDeferredUntilTheLastDetach) {
  ShmSeg s(perm(0600), 4096, 7, 100);
  s.attached(11, 101);
  s.attached(12, 102);
  EXPECT_EQ(s.rmid(who(5)), EPERM);
  EXPECT_EQ(s.rmid(who(1000)), 0);
  EXPECT_TRUE(s.removed());
  EXPECT_FALSE(s.gone());
  EXPECT_EQ(s.perm().key, IPC_PRIVATE);
  ShmStat st;
  ASSERT_EQ(s.stat(who(1000), st), 0);
  EXPECT_EQ(st.perm.mode & kShmDest, kShmDest);
  EXPECT_EQ(st.nattch, 2u);
  EXPECT_EQ(st.lpid, 12);
  EXPECT_EQ(st.atime, 102);
  s.detached(11, 103);
  EXPECT_FALSE(s.gone());
  s.detached(12, 104);
  EXPECT_TRUE(s.gone());
}

TEST(ShmSeg, SetAndLockFollowTheKernelsOwnershipRules) {
  ShmSeg s(perm(0600), 4096, 7, 100);
  EXPECT_EQ(s.set(1, 2, 0644, who(5), 200), EPERM);
  EXPECT_EQ(s.lock(who(5), true, 200), EPERM);
  Creds locker = who(5);
  locker.cap_ipc_lock = true;
  EXPECT_EQ(s.lock(locker, true, 200), 0);
  ShmStat st;
  ASSERT_EQ(s.stat(who(1000), st), 0);
  EXPECT_EQ(st.perm.mode & kShmLocked, kShmLocked);
  EXPECT_EQ(s.lock(who(1000), false, 200), 0);
  EXPECT_EQ(s.set(1000, 3, 01640, who(1000), 300), 0);
  ASSERT_EQ(s.stat(who(1000), st), 0);
  EXPECT_EQ(st.perm.mode, 0640);  // only the permission bits are set
  EXPECT_EQ(st.perm.gid, 3u);
  EXPECT_EQ(st.ctime, 300);
  EXPECT_EQ(st.cpid, 7);
  EXPECT_EQ(s.stat(who(5, 9), st), EACCES);  // others may not read
}

}  // namespace
}  // namespace dipc::ipc
