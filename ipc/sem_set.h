// One System V semaphore set, as Linux ipc/sem.c implements it: pure state, no I/O, no threads, time passed in.
// Pending operations wait in one FIFO; after every change the queue is scanned from the oldest waiter, restarting
// after each waiter that altered values, until nothing more can proceed (the kernel's update_queue()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <vector>

#include "ipc/types.h"

namespace dipc::ipc {

struct SemBuf {
  uint16_t num = 0;
  int16_t op = 0;
  int16_t flg = 0;  // IPC_NOWAIT, SEM_UNDO
};

// Outcome of an operation that may block.
struct Outcome {
  enum Kind { kDone, kBlocked, kError } kind = kDone;
  int err = 0;
};

struct SemStat {
  Perm perm;
  int64_t otime = 0, ctime = 0;
  uint32_t nsems = 0;
};

class SemSet {
 public:
  SemSet(const Perm& perm, int nsems, const Limits& lim, int64_t now);

  const Perm& perm() const { return perm_; }
  int nsems() const { return static_cast<int>(sems_.size()); }

  // semop()/semtimedop(); nsops limits are checked by the caller. kBlocked: `token` is queued until it shows up in
  // take_completed(), cancel() or remove_waiters().
  Outcome semop(uint64_t token, const std::vector<SemBuf>& sops, const ProcKey& proc, const Creds& c, int64_t now);
  struct Completion {
    uint64_t token;
    int err;  // 0, or the error the queued operation failed with (ERANGE, EAGAIN)
  };
  std::vector<Completion> take_completed();  // in completion order; drains
  bool cancel(uint64_t token);               // false if not pending
  std::vector<uint64_t> remove_waiters();    // IPC_RMID: the caller answers EIDRM

  int getval(int semnum, const Creds& c, int& out) const;
  int getpid(int semnum, const Creds& c, int& out) const;
  int getncnt(int semnum, const Creds& c, int& out) const;
  int getzcnt(int semnum, const Creds& c, int& out) const;
  int getall(const Creds& c, std::vector<uint16_t>& out) const;
  int setval(int semnum, int val, const Creds& c, int32_t pid, int64_t now);
  int setall(const std::vector<uint16_t>& vals, const Creds& c, int32_t pid, int64_t now);
  int stat(const Creds& c, SemStat& out) const;
  int set(uint32_t uid, uint32_t gid, uint16_t mode, const Creds& c, int64_t now);
  int check_rmid(const Creds& c) const;
  // A set backed by a kernel set (kernel_sem.h): the kernel's owner, mode and times are the truth.
  void sync(uint32_t uid, uint32_t gid, uint16_t mode, int64_t otime, int64_t ctime) {
    perm_.uid = uid;
    perm_.gid = gid;
    perm_.mode = static_cast<uint16_t>((perm_.mode & ~0777) | (mode & 0777));
    otime_ = otime;
    ctime_ = ctime;
  }

  // exit_sem(): applies and forgets proc's SEM_UNDO adjustments.
  void apply_undo(const ProcKey& proc, int64_t now);
  bool has_undo(const ProcKey& proc) const { return undo_.count(proc) != 0; }
  size_t pending() const { return waiters_.size(); }

 private:
  static constexpr int kWouldBlock = -1;
  struct Sem {
    int val = 0;
    int32_t pid = 0;
  };
  struct Waiter {
    uint64_t token;
    std::vector<SemBuf> sops;
    ProcKey proc;
    size_t blocking;  // index of the first op that could not proceed at the last attempt (the kernel's q->blocking)
  };
  // perform_atomic_semop(): 0 = applied; kWouldBlock (blocking set); or errno, with nothing changed.
  int perform(const std::vector<SemBuf>& sops, const ProcKey& proc, size_t& blocking);
  void update_queue(int64_t now);
  int count_waiting(int semnum, const Creds& c, bool zero, int& out) const;
  int check_semnum(int semnum, const Creds& c, int flag) const;
  void clear_undo(int semnum);  // -1: all semaphores

  Perm perm_;
  Limits lim_;
  std::vector<Sem> sems_;
  int64_t otime_ = 0, ctime_ = 0;
  std::list<Waiter> waiters_;
  std::vector<Completion> completed_;
  std::map<ProcKey, std::vector<int>> undo_;  // semadj per process, one entry per semaphore
};

}  // namespace dipc::ipc
