// One System V shared memory segment's identity and bookkeeping at its home node, as Linux ipc/shm.c keeps it:
// pure state, no I/O, time passed in. The memory itself is the DSM layer's (dsm/segment.h).
#pragma once

#include <cstdint>

#include "ipc/protocol.h"
#include "ipc/types.h"

namespace dipc::ipc {

inline constexpr uint16_t kShmDest = 01000;    // SHM_DEST: removed, destroyed at the last detach
inline constexpr uint16_t kShmLocked = 02000;  // SHM_LOCKED

class ShmSeg {
 public:
  ShmSeg(const Perm& perm, uint64_t size, int32_t cpid, int64_t now);

  const Perm& perm() const { return perm_; }
  uint64_t size() const { return size_; }
  uint64_t nattch() const { return nattch_; }
  bool removed() const { return perm_.mode & kShmDest; }
  // Destroyed now: removed and nobody attached anywhere.
  bool gone() const { return removed() && nattch_ == 0; }

  // shmget on an existing key: shm_more_checks() (EINVAL) before ipcperms() (EACCES), as ipcget_public() does.
  int open_check(const Creds& c, uint64_t size, int flg) const;
  // shmat: read access, and write access unless SHM_RDONLY (EACCES).
  int attach_check(const Creds& c, int shmflg) const;
  void attached(int32_t pid, int64_t now);
  void detached(int32_t pid, int64_t now);
  // A one-way attach whose confirmation found the rights gone (docs/ARCHITECTURE.md, "One-way shmat"): counted
  // out again, as if it never happened.
  void unattached() {
    if (nattch_) --nattch_;
  }
  // ipc/shm_table.h kShmRowShared: sticky.
  bool shared() const { return shared_; }
  void set_shared() { shared_ = true; }
  int stat(const Creds& c, ShmStat& out) const;
  int set(uint32_t uid, uint32_t gid, uint16_t mode, const Creds& c, int64_t now);
  // IPC_RMID: owner, creator or CAP_SYS_ADMIN (EPERM). Marks SHM_DEST and makes the key private.
  int rmid(const Creds& c);
  // SHM_LOCK / SHM_UNLOCK: CAP_IPC_LOCK, or the owner or creator (EPERM).
  int lock(const Creds& c, bool on, int64_t now);

 private:
  Perm perm_;
  uint64_t size_;
  int32_t cpid_, lpid_ = 0;
  uint64_t nattch_ = 0;
  int64_t atime_ = 0, dtime_ = 0, ctime_;
  bool shared_ = false;
};

}  // namespace dipc::ipc
