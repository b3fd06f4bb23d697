#include "ipc/shm_seg.h"

#include <sys/ipc.h>
#include <sys/shm.h>

namespace dipc::ipc {

ShmSeg::ShmSeg(const Perm& perm, uint64_t size, int32_t cpid, int64_t now)
    : perm_(perm), size_(size), cpid_(cpid), ctime_(now) {
  perm_.mode &= 0777;
}

int ShmSeg::open_check(const Creds& c, uint64_t size, int flg) const {
  if (size > size_) return EINVAL;
  return ipc_check(perm_, c, flg);
}

int ShmSeg::attach_check(const Creds& c, int shmflg) const {
  int acc = (shmflg & SHM_RDONLY) ? 0444 : 0666;
  if (shmflg & SHM_EXEC) acc |= 0111;
  return ipc_check(perm_, c, acc);
}

void ShmSeg::attached(int32_t pid, int64_t now) {
  ++nattch_;
  lpid_ = pid;
  atime_ = now;
}

void ShmSeg::detached(int32_t pid, int64_t now) {
  if (nattch_) --nattch_;
  lpid_ = pid;
  dtime_ = now;
}

int ShmSeg::stat(const Creds& c, ShmStat& out) const {
  if (int e = ipc_check(perm_, c, 0444)) return e;
  out.perm = perm_;
  out.segsz = size_;
  out.atime = atime_;
  out.dtime = dtime_;
  out.ctime = ctime_;
  out.cpid = cpid_;
  out.lpid = lpid_;
  out.nattch = nattch_;
  return 0;
}

int ShmSeg::set(uint32_t uid, uint32_t gid, uint16_t mode, const Creds& c, int64_t now) {
  if (int e = ipc_owner_check(perm_, c)) return e;
  perm_.uid = uid;
  perm_.gid = gid;
  perm_.mode = static_cast<uint16_t>((perm_.mode & ~0777) | (mode & 0777));
  ctime_ = now;
  return 0;
}

int ShmSeg::rmid(const Creds& c) {
  if (int e = ipc_owner_check(perm_, c)) return e;
  perm_.mode |= kShmDest;
  perm_.key = IPC_PRIVATE;
  return 0;
}

int ShmSeg::lock(const Creds& c, bool on, int64_t now) {
  if (!c.cap_ipc_lock && c.uid != perm_.uid && c.uid != perm_.cuid) return EPERM;
  if (on)
    perm_.mode |= kShmLocked;
  else
    perm_.mode &= static_cast<uint16_t>(~kShmLocked);
  (void)now;  // SHM_LOCK does not change shm_ctime in Linux
  return 0;
}

}  // namespace dipc::ipc
