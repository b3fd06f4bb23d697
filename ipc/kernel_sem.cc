#include "ipc/kernel_sem.h"

#include <signal.h>
#include <sys/ipc.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "common/log.h"

namespace dipc::ipc {

namespace {

// semctl()'s fourth argument (glibc leaves union semun to the program).
union SemArg {
  int val;
  struct semid_ds* buf;
  unsigned short* array;
};

#if defined(SYS_semtimedop) && defined(SYS_setresuid) && defined(SYS_setresgid) && !defined(__i386__)
constexpr bool kSupported = true;
constexpr long kSemtimedop = SYS_semtimedop;
#else
constexpr bool kSupported = false;
constexpr long kSemtimedop = -1;
#endif

}  // namespace

bool KernelSemSet::supported() {
  if (!kSupported) return false;
  static const bool ok = [] {
    int kid = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
    if (kid < 0) return false;
    return kernel_sleep_visible(
        kSemtimedop,
        [kid] {
          struct sembuf b {};
          b.sem_op = -1;
          (void)syscall(kSemtimedop, kid, &b, 1, nullptr);  // until the set is removed
        },
        [kid] {
          SemArg a{};
          semctl(kid, 0, IPC_RMID, a);
        });
  }();
  return ok;
}

std::unique_ptr<KernelSemSet> KernelSemSet::create(EventLoop& loop, const Creds& c, int nsems, uint16_t mode) {
  if (!kSupported) {
    errno = ENOSYS;
    return nullptr;
  }
  int kid = kernel_create_as(c, [&] { return semget(IPC_PRIVATE, nsems, IPC_CREAT | (mode & 0777)); });
  if (kid < 0) return nullptr;
  return std::unique_ptr<KernelSemSet>(new KernelSemSet(loop, kid, nsems));
}

KernelSemSet::~KernelSemSet() {
  SemArg a{};
  semctl(kid_, 0, IPC_RMID, a);  // every waiter, the workers too, returns EIDRM; waits_ waits for them
}

int KernelSemSet::stat(struct semid_ds& out) const {
  SemArg a{};
  a.buf = &out;
  return semctl(kid_, 0, IPC_STAT, a) == 0 ? 0 : errno;
}

int KernelSemSet::set(uint32_t uid, uint32_t gid, uint16_t mode) {
  struct semid_ds ds {};
  if (int e = stat(ds)) return e;
  ds.sem_perm.uid = uid;
  ds.sem_perm.gid = gid;
  ds.sem_perm.mode = mode & 0777;
  SemArg a{};
  a.buf = &ds;
  return semctl(kid_, 0, IPC_SET, a) == 0 ? 0 : errno;
}

int KernelSemSet::ctl(int semnum, int cmd, int val) {
  SemArg a{};
  a.val = val;
  int r = semctl(kid_, semnum, cmd, a);
  return r < 0 ? -errno : r;
}

int KernelSemSet::getpid_of(int semnum) {
  int v = ctl(semnum, GETPID);
  if (v >= 0 && v == getpid()) return remote_pid_[static_cast<size_t>(semnum)].load();
  return v;
}

void KernelSemSet::set_remote_pid(const std::vector<struct sembuf>& sops, int32_t pid) {
  for (const auto& b : sops) remote_pid_[b.sem_num].store(pid);
}

void KernelSemSet::set_remote_pid_all(int32_t pid) {
  for (int i = 0; i < nsems_; ++i) remote_pid_[static_cast<size_t>(i)].store(pid);
}

int KernelSemSet::getall(std::vector<uint16_t>& out) {
  out.assign(static_cast<size_t>(nsems_), 0);
  SemArg a{};
  a.array = out.data();
  return semctl(kid_, 0, GETALL, a) == 0 ? 0 : errno;
}

int KernelSemSet::setall(const std::vector<uint16_t>& vals) {
  std::vector<uint16_t> v = vals;
  SemArg a{};
  a.array = v.data();
  return semctl(kid_, 0, SETALL, a) == 0 ? 0 : errno;
}

int KernelSemSet::try_op(const std::vector<struct sembuf>& sops) {
  std::vector<struct sembuf> ops = sops;
  for (auto& s : ops) s.sem_flg = static_cast<short>(s.sem_flg | IPC_NOWAIT);
  return semop(kid_, ops.data(), ops.size()) == 0 ? 0 : errno;
}

bool KernelSemSet::start_wait(uint64_t token, std::vector<struct sembuf> sops, int32_t pid,
                              std::function<void()> registered, std::function<void(int)> done) {
  int kid = kid_;
  std::atomic<int32_t>* pids = remote_pid_.get();  // lives until waits_ saw this call return
  auto call = [kid, pids, pid, sops = std::move(sops)]() mutable {
    if (syscall(kSemtimedop, kid, sops.data(), sops.size(), nullptr) == 0) {
      for (const auto& b : sops) pids[b.sem_num].store(pid);  // before anyone can read GETPID through dipcd
      return 0;
    }
    int r = errno;
    return r == EINVAL ? EIDRM : r;  // removed before this worker slept: the request came first
  };
  return waits_.start(token, kSemtimedop, std::move(call), std::move(registered), std::move(done));
}

int KernelSemSet::check_undo(const ProcKey& p, const std::vector<struct sembuf>& undo_ops, int semaem) const {
  std::vector<int> adj(static_cast<size_t>(nsems_), 0);
  if (auto it = undo_.find(p); it != undo_.end()) adj = it->second;
  for (const auto& s : undo_ops) {
    int u = adj[s.sem_num] - s.sem_op;
    if (u < -semaem - 1 || u > semaem) return ERANGE;
    adj[s.sem_num] = u;
  }
  return 0;
}

int KernelSemSet::first_failure(const ProcKey& p, const std::vector<struct sembuf>& sops, int semaem, int semvmx) {
  std::vector<uint16_t> vals;
  if (int e = getall(vals)) return e;
  std::vector<int> v(vals.begin(), vals.end());
  std::vector<int> adj(static_cast<size_t>(nsems_), 0);
  if (auto it = undo_.find(p); it != undo_.end()) adj = it->second;
  for (const auto& s : sops) {
    int& x = v[s.sem_num];
    int res = x + s.sem_op;
    if ((s.sem_op == 0 && x != 0) || res < 0) return EAGAIN;
    if (res > semvmx) return ERANGE;
    if (s.sem_flg & SEM_UNDO) {
      int u = adj[s.sem_num] - s.sem_op;
      if (u < -semaem - 1 || u > semaem) return ERANGE;
      adj[s.sem_num] = u;
    }
    x = res;
  }
  return 0;
}

void KernelSemSet::add_undo(const ProcKey& p, const std::vector<struct sembuf>& undo_ops) {
  if (undo_ops.empty()) return;
  auto [it, inserted] = undo_.try_emplace(p, static_cast<size_t>(nsems_), 0);
  for (const auto& s : undo_ops) it->second[s.sem_num] -= s.sem_op;
}

void KernelSemSet::clear_undo(int semnum) {
  for (auto& [p, adj] : undo_) {
    if (semnum < 0)
      std::fill(adj.begin(), adj.end(), 0);
    else if (semnum < nsems_)
      adj[static_cast<size_t>(semnum)] = 0;
  }
}

// exit_sem(): each adjustment added, the result clamped to [0, semvmx]. Local programs may change the value between
// the read and the operation: the nonblocking operation then fails and is recomputed (a few tries, never a wait).
void KernelSemSet::apply_undo(const ProcKey& p, int semvmx) {
  auto it = undo_.find(p);
  if (it == undo_.end()) return;
  std::vector<int> adj = std::move(it->second);
  undo_.erase(it);
  for (int i = 0; i < nsems_; ++i) {
    if (adj[static_cast<size_t>(i)] == 0) continue;
    for (int tries = 0; tries < 16; ++tries) {
      int val = ctl(i, GETVAL);
      if (val < 0) return;
      int target = std::clamp(val + adj[static_cast<size_t>(i)], 0, semvmx);
      if (target == val) break;
      struct sembuf b {};
      b.sem_num = static_cast<unsigned short>(i);
      b.sem_op = static_cast<short>(target - val);
      b.sem_flg = IPC_NOWAIT;
      if (semop(kid_, &b, 1) == 0) {
        remote_pid_[static_cast<size_t>(i)].store(p.pid);
        break;
      }
      if (errno != EAGAIN && errno != ERANGE) break;
    }
  }
}

}  // namespace dipc::ipc
