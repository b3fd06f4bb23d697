#include "ipc/sem_set.h"

#include <sys/ipc.h>
#include <sys/sem.h>

#include <algorithm>

namespace dipc::ipc {

SemSet::SemSet(const Perm& perm, int nsems, const Limits& lim, int64_t now)
    : perm_(perm), lim_(lim), sems_(static_cast<size_t>(nsems)), ctime_(now) {}

// perform_atomic_semop_slow(): apply the ops in order, then undo them all if one blocks or overflows. A blocking op
// with IPC_NOWAIT fails with EAGAIN, also when a queued operation is retried.
int SemSet::perform(const std::vector<SemBuf>& sops, const ProcKey& proc, size_t& blocking) {
  std::vector<int>* adj = nullptr;
  bool created = false;
  if (std::any_of(sops.begin(), sops.end(), [](const SemBuf& s) { return (s.flg & SEM_UNDO) != 0; })) {
    auto [it, inserted] = undo_.try_emplace(proc, sems_.size(), 0);
    adj = &it->second;
    created = inserted;
  }
  int r = 0;
  size_t i = 0;
  for (; i < sops.size(); ++i) {
    const SemBuf& s = sops[i];
    int& v = sems_[s.num].val;
    int result = v + s.op;
    if ((s.op == 0 && v != 0) || result < 0) {
      blocking = i;
      r = (s.flg & IPC_NOWAIT) ? EAGAIN : kWouldBlock;
      break;
    }
    if (result > lim_.semvmx) {
      r = ERANGE;
      break;
    }
    if (s.flg & SEM_UNDO) {
      int u = (*adj)[s.num] - s.op;
      if (u < -lim_.semaem - 1 || u > lim_.semaem) {
        r = ERANGE;
        break;
      }
      (*adj)[s.num] = u;
    }
    v = result;
  }
  if (r == 0) {
    for (const auto& s : sops) sems_[s.num].pid = proc.pid;
    return 0;
  }
  while (i-- > 0) {
    const SemBuf& s = sops[i];
    sems_[s.num].val -= s.op;
    if (s.flg & SEM_UNDO) (*adj)[s.num] += s.op;
  }
  if (created) undo_.erase(proc);
  return r;
}

Outcome SemSet::semop(uint64_t token, const std::vector<SemBuf>& sops, const ProcKey& proc, const Creds& c,
                      int64_t now) {
  // do_semtimedop(): EFBIG before EACCES; read access suffices when every op waits for zero.
  bool alter = false;
  for (const auto& s : sops) {
    if (s.num >= sems_.size()) return {Outcome::kError, EFBIG};
    if (s.op != 0) alter = true;
  }
  if (int e = ipc_check(perm_, c, alter ? 0222 : 0444)) return {Outcome::kError, e};
  size_t blocking = 0;
  int r = perform(sops, proc, blocking);
  if (r == kWouldBlock) {
    waiters_.push_back(Waiter{token, sops, proc, blocking});
    return {Outcome::kBlocked, 0};
  }
  if (r != 0) return {Outcome::kError, r};
  otime_ = now;
  if (alter) update_queue(now);
  return {Outcome::kDone, 0};
}

// update_queue(): a waiter that now fails (ERANGE, EAGAIN) completes with that error; one that altered values
// restarts the scan from the oldest waiter (check_restart()). A successful completion sets otime (do_smart_update()).
void SemSet::update_queue(int64_t now) {
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    int r = perform(it->sops, it->proc, it->blocking);
    if (r == kWouldBlock) {
      ++it;
      continue;
    }
    completed_.push_back(Completion{it->token, r});
    bool altered = r == 0 && std::any_of(it->sops.begin(), it->sops.end(), [](const SemBuf& s) { return s.op; });
    if (r == 0) otime_ = now;
    it = waiters_.erase(it);
    if (altered) it = waiters_.begin();
  }
}

std::vector<SemSet::Completion> SemSet::take_completed() {
  std::vector<Completion> out;
  out.swap(completed_);
  return out;
}

bool SemSet::cancel(uint64_t token) {
  auto it = std::find_if(waiters_.begin(), waiters_.end(), [&](const Waiter& w) { return w.token == token; });
  if (it == waiters_.end()) return false;
  waiters_.erase(it);
  return true;
}

std::vector<uint64_t> SemSet::remove_waiters() {
  std::vector<uint64_t> out;
  for (const auto& w : waiters_) out.push_back(w.token);
  waiters_.clear();
  return out;
}

// semctl_main(): permission first, then the index.
int SemSet::check_semnum(int semnum, const Creds& c, int flag) const {
  if (int e = ipc_check(perm_, c, flag)) return e;
  if (semnum < 0 || semnum >= nsems()) return EINVAL;
  return 0;
}

int SemSet::getval(int semnum, const Creds& c, int& out) const {
  if (int e = check_semnum(semnum, c, 0444)) return e;
  out = sems_[static_cast<size_t>(semnum)].val;
  return 0;
}

int SemSet::getpid(int semnum, const Creds& c, int& out) const {
  if (int e = check_semnum(semnum, c, 0444)) return e;
  out = sems_[static_cast<size_t>(semnum)].pid;
  return 0;
}

// count_semcnt()/check_qop(): a waiter counts only on the semaphore of the op it blocked on (SUS, Linux >= 3.16).
int SemSet::count_waiting(int semnum, const Creds& c, bool zero, int& out) const {
  if (int e = check_semnum(semnum, c, 0444)) return e;
  out = 0;
  for (const auto& w : waiters_) {
    const SemBuf& s = w.sops[w.blocking];
    if (s.num == semnum && (zero ? s.op == 0 : s.op < 0)) ++out;
  }
  return 0;
}

int SemSet::getncnt(int semnum, const Creds& c, int& out) const { return count_waiting(semnum, c, false, out); }
int SemSet::getzcnt(int semnum, const Creds& c, int& out) const { return count_waiting(semnum, c, true, out); }

int SemSet::getall(const Creds& c, std::vector<uint16_t>& out) const {
  if (int e = ipc_check(perm_, c, 0444)) return e;
  out.clear();
  for (const auto& s : sems_) out.push_back(static_cast<uint16_t>(s.val));
  return 0;
}

void SemSet::clear_undo(int semnum) {
  for (auto& [proc, adj] : undo_) {
    if (semnum < 0)
      std::fill(adj.begin(), adj.end(), 0);
    else
      adj[static_cast<size_t>(semnum)] = 0;
  }
}

int SemSet::setval(int semnum, int val, const Creds& c, int32_t pid, int64_t now) {
  // semctl_setval()'s order: range, index, permission.
  if (val > lim_.semvmx || val < 0) return ERANGE;
  if (semnum < 0 || semnum >= nsems()) return EINVAL;
  if (int e = ipc_check(perm_, c, 0222)) return e;
  clear_undo(semnum);
  sems_[static_cast<size_t>(semnum)] = Sem{val, pid};
  ctime_ = now;
  update_queue(now);
  return 0;
}

int SemSet::setall(const std::vector<uint16_t>& vals, const Creds& c, int32_t pid, int64_t now) {
  if (int e = ipc_check(perm_, c, 0222)) return e;
  if (vals.size() != sems_.size()) return EINVAL;
  for (uint16_t v : vals)
    if (v > lim_.semvmx) return ERANGE;
  clear_undo(-1);
  for (size_t i = 0; i < sems_.size(); ++i) sems_[i] = Sem{vals[i], pid};
  ctime_ = now;
  update_queue(now);
  return 0;
}

int SemSet::stat(const Creds& c, SemStat& out) const {
  if (int e = ipc_check(perm_, c, 0444)) return e;
  out.perm = perm_;
  out.otime = otime_;
  out.ctime = ctime_;
  out.nsems = static_cast<uint32_t>(sems_.size());
  return 0;
}

int SemSet::set(uint32_t uid, uint32_t gid, uint16_t mode, const Creds& c, int64_t now) {
  if (int e = ipc_owner_check(perm_, c)) return e;
  perm_.uid = uid;
  perm_.gid = gid;
  perm_.mode = static_cast<uint16_t>((perm_.mode & ~0777) | (mode & 0777));
  ctime_ = now;
  return 0;
}

int SemSet::check_rmid(const Creds& c) const { return ipc_owner_check(perm_, c); }

// exit_sem(): each nonzero adjustment is added and the result clamped to [0, semvmx]; then do_smart_update() with
// otime forced, so otime is set even if nobody was waiting.
void SemSet::apply_undo(const ProcKey& proc, int64_t now) {
  auto it = undo_.find(proc);
  if (it == undo_.end()) return;
  for (size_t i = 0; i < sems_.size(); ++i) {
    if (it->second[i] == 0) continue;
    sems_[i].val = std::clamp(sems_[i].val + it->second[i], 0, lim_.semvmx);
    sems_[i].pid = proc.pid;
  }
  undo_.erase(it);
  otime_ = now;
  update_queue(now);
}

}  // namespace dipc::ipc
