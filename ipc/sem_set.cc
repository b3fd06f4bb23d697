#include "ipc/sem_set.h"

#include <sys/ipc.h>
#include <sys/sem.h>

#include <algorithm>

namespace dipc::ipc {

SemSet::SemSet(const Perm& perm, int nsems, const Limits& lim, int64_t now)
    : perm_(perm), lim_(lim), sems_(static_cast<size_t>(nsems)), ctime_(now) {}

int SemSet::try_apply(const std::vector<SemBuf>& sops, const ProcKey& proc, size_t* blocking_sop) {
  // Like perform_atomic_semop(): check everything first, then apply.
  std::vector<int> vals(sems_.size());
  for (size_t i = 0; i < sems_.size(); ++i) vals[i] = sems_[i].val;
  auto uit = undo_.find(proc);
  std::vector<int> adj = uit != undo_.end() ? uit->second : std::vector<int>(sems_.size(), 0);
  bool any_undo = false;
  for (size_t i = 0; i < sops.size(); ++i) {
    const SemBuf& s = sops[i];
    int& v = vals[s.num];
    int result = v + s.op;
    if (s.op == 0 ? v != 0 : result < 0) {
      if (blocking_sop) *blocking_sop = i;
      return -1;
    }
    if (result > lim_.semvmx) return ERANGE;
    if (s.flg & SEM_UNDO) {
      int u = adj[s.num] - s.op;
      if (u < -lim_.semaem - 1 || u > lim_.semaem) return ERANGE;
      adj[s.num] = u;
      any_undo = true;
    }
    v = result;
  }
  for (size_t i = 0; i < sems_.size(); ++i) sems_[i].val = vals[i];
  for (const auto& s : sops) sems_[s.num].pid = proc.pid;
  if (any_undo) undo_[proc] = std::move(adj);
  return 0;
}

Outcome SemSet::semop(uint64_t token, const std::vector<SemBuf>& sops, const ProcKey& proc, const Creds& c,
                      int64_t now) {
  bool alter = false;
  for (const auto& s : sops) {
    if (s.num >= sems_.size()) return {Outcome::kError, EFBIG};
    if (s.op != 0) alter = true;
  }
  if (int e = ipc_check(perm_, c, alter ? 0222 : 0444)) return {Outcome::kError, e};
  size_t blocking = 0;
  int r = try_apply(sops, proc, &blocking);
  if (r == 0) {
    otime_ = now;
    if (alter) update_queue();
    return {Outcome::kDone, 0};
  }
  if (r > 0) return {Outcome::kError, r};
  if (sops[blocking].flg & IPC_NOWAIT) return {Outcome::kError, EAGAIN};
  waiters_.push_back(Waiter{token, sops, proc});
  return {Outcome::kBlocked, 0};
}

void SemSet::update_queue() {
  // Every completion may change values, so the scan restarts from the oldest waiter.
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    int r = try_apply(it->sops, it->proc, nullptr);
    if (r < 0) {
      ++it;
      continue;
    }
    completed_.push_back(Completion{it->token, r});
    waiters_.erase(it);
    it = waiters_.begin();
  }
}

std::vector<SemSet::Completion> SemSet::take_completed() {
  std::vector<Completion> out;
  out.swap(completed_);
  return out;
}

bool SemSet::cancel(uint64_t token) {
  for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
    if (it->token == token) {
      waiters_.erase(it);
      return true;
    }
  }
  return false;
}

std::vector<uint64_t> SemSet::remove_waiters() {
  std::vector<uint64_t> out;
  for (const auto& w : waiters_) out.push_back(w.token);
  waiters_.clear();
  return out;
}

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

// Like count_semcnt(): a waiter counts on the semaphore of the operation it is blocked on.
int SemSet::getncnt(int semnum, const Creds& c, int& out) const {
  if (int e = check_semnum(semnum, c, 0444)) return e;
  out = 0;
  for (const auto& w : waiters_) {
    for (const auto& s : w.sops) {
      int v = sems_[s.num].val;
      bool blocks = s.op == 0 ? v != 0 : v + s.op < 0;
      if (!blocks) continue;
      if (s.num == semnum && s.op < 0) ++out;
      break;
    }
  }
  return 0;
}

int SemSet::getzcnt(int semnum, const Creds& c, int& out) const {
  if (int e = check_semnum(semnum, c, 0444)) return e;
  out = 0;
  for (const auto& w : waiters_) {
    for (const auto& s : w.sops) {
      int v = sems_[s.num].val;
      bool blocks = s.op == 0 ? v != 0 : v + s.op < 0;
      if (!blocks) continue;
      if (s.num == semnum && s.op == 0) ++out;
      break;
    }
  }
  return 0;
}

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
  sems_[static_cast<size_t>(semnum)].val = val;
  sems_[static_cast<size_t>(semnum)].pid = pid;
  ctime_ = now;
  update_queue();
  return 0;
}

int SemSet::setall(const std::vector<uint16_t>& vals, const Creds& c, int32_t pid, int64_t now) {
  if (int e = ipc_check(perm_, c, 0222)) return e;
  if (vals.size() != sems_.size()) return EINVAL;
  for (uint16_t v : vals)
    if (v > lim_.semvmx) return ERANGE;
  clear_undo(-1);
  for (size_t i = 0; i < sems_.size(); ++i) {
    sems_[i].val = vals[i];
    sems_[i].pid = pid;
  }
  ctime_ = now;
  update_queue();
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

// Like exit_sem(): apply the adjustments, clamping to [0, semvmx], then wake waiters.
void SemSet::apply_undo(const ProcKey& proc, int64_t now) {
  auto it = undo_.find(proc);
  if (it == undo_.end()) return;
  for (size_t i = 0; i < sems_.size(); ++i) {
    if (it->second[i] == 0) continue;
    int v = sems_[i].val + it->second[i];
    sems_[i].val = std::clamp(v, 0, lim_.semvmx);
    sems_[i].pid = proc.pid;
  }
  undo_.erase(it);
  (void)now;
  update_queue();
}

}  // namespace dipc::ipc
