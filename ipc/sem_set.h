// One System V semaphore set, as Linux ipc/sem.c implements it: pure state, no I/O, time passed in.
// Pending operations wait in one FIFO; after every change the queue is rescanned from the oldest waiter until nothing
// more can proceed (the kernel's update_queue()), so wake-ups happen in arrival order.
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
  int16_t flg = 0;
};

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

  Outcome semop(uint64_t token, const std::vector<SemBuf>& sops, const ProcKey& proc, const Creds& c, int64_t now);
  struct Completion {
    uint64_t token;
    int err;
  };
  std::vector<Completion> take_completed();
  bool cancel(uint64_t token);
  std::vector<uint64_t> remove_waiters();

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

  void apply_undo(const ProcKey& proc, int64_t now);
  bool has_undo(const ProcKey& proc) const { return undo_.count(proc) != 0; }

 private:
  struct Sem {
    int val = 0;
    int32_t pid = 0;
  };
  struct Waiter {
    uint64_t token;
    std::vector<SemBuf> sops;
    ProcKey proc;
  };
  // Tries the whole set: 0 = applied, -1 = would block (blocking_sop set), else errno. Applies nothing unless 0.
  int try_apply(const std::vector<SemBuf>& sops, const ProcKey& proc, size_t* blocking_sop);
  void update_queue();
  int check_semnum(int semnum, const Creds& c, int flag) const;
  void clear_undo(int semnum);  // -1: all

  Perm perm_;
  Limits lim_;
  std::vector<Sem> sems_;
  int64_t otime_ = 0, ctime_ = 0;
  std::list<Waiter> waiters_;
  std::vector<Completion> completed_;
  std::map<ProcKey, std::vector<int>> undo_;  // per process: adjustment per semaphore
};

}  // namespace dipc::ipc
