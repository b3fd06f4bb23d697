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

// A worker is interrupted with this signal; its handler does nothing, so semtimedop() returns EINTR.
int cancel_signal() { return SIGRTMIN + 3; }
void on_cancel_signal(int) {}

#if defined(SYS_semtimedop) && defined(SYS_setresuid) && defined(SYS_setresgid) && !defined(__i386__)
constexpr bool kSupported = true;
constexpr long kSemtimedop = SYS_semtimedop;
#else
constexpr bool kSupported = false;
constexpr long kSemtimedop = -1;
#endif

// semget(IPC_PRIVATE) as the caller: the loop thread takes the caller's effective ids for the call only (the raw
// system calls change this thread's credentials alone, not the daemon's other threads').
int create_as(const Creds& c, int nsems, uint16_t mode) {
  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  if (getresuid(&ru, &eu, &su) != 0 || getresgid(&rg, &eg, &sg) != 0) return -1;
  bool switch_ids = eu != c.uid || eg != c.gid;
  if (switch_ids) {
    if (eu != 0) {
      errno = EPERM;
      return -1;
    }
    if (syscall(SYS_setresgid, -1, c.gid, -1) != 0) return -1;
    if (syscall(SYS_setresuid, -1, c.uid, -1) != 0) {
      int e = errno;
      (void)syscall(SYS_setresgid, -1, eg, -1);
      errno = e;
      return -1;
    }
  }
  int kid = semget(IPC_PRIVATE, nsems, IPC_CREAT | (mode & 0777));
  int e = errno;
  if (switch_ids) {
    // Back to root: the saved uid is still 0, so this cannot fail; if it ever did, the daemon must not go on.
    if (syscall(SYS_setresuid, -1, eu, -1) != 0 || syscall(SYS_setresgid, -1, eg, -1) != 0) {
      DIPC_LOG_ERROR("cannot restore the daemon's credentials after creating a kernel semaphore set: {}",
                     strerror(errno));
      abort();
    }
  }
  errno = e;
  return kid;
}

bool task_sleeps_in_semtimedop(pid_t tid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/syscall", static_cast<int>(tid));
  FILE* f = fopen(path, "re");
  if (!f) return false;
  long nr = -1;
  bool ok = fscanf(f, "%ld", &nr) == 1;  // "running" for a task that is not in a system call
  fclose(f);
  if (!ok || nr != kSemtimedop) return false;
  // In semtimedop() but maybe preempted before it queued itself: only asleep (S) is queued.
  snprintf(path, sizeof path, "/proc/self/task/%d/stat", static_cast<int>(tid));
  f = fopen(path, "re");
  if (!f) return false;
  char buf[512];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  const char* e = strrchr(buf, ')');
  return e && e[1] == ' ' && e[2] == 'S';
}

}  // namespace

struct KernelSemSet::Worker {
  uint64_t token = 0;
  std::vector<struct sembuf> sops;
  std::function<void()> registered;
  std::function<void(int)> done;
  std::atomic<pid_t> tid{0};
  std::atomic<bool> cancel{false};
  std::atomic<bool> finished{false};
  int result = 0;
  std::thread thread;
};

uint64_t KernelSemSet::ipc_namespace() {
  struct stat st;
  return ::stat("/proc/self/ns/ipc", &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
}

bool KernelSemSet::supported() {
  if (!kSupported) return false;
  static const bool ok = [] {
    int kid = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
    if (kid < 0) return false;
    std::atomic<pid_t> tid{0};
    std::thread t([&tid, kid] {
      tid = static_cast<pid_t>(syscall(SYS_gettid));
      struct sembuf b {};
      b.sem_op = -1;
      (void)syscall(kSemtimedop, kid, &b, 1, nullptr);  // until the set is removed
    });
    bool seen = false;
    for (auto end = std::chrono::steady_clock::now() + std::chrono::seconds(2);
         !seen && std::chrono::steady_clock::now() < end;) {
      pid_t t_id = tid;
      if (t_id && task_sleeps_in_semtimedop(t_id))
        seen = true;
      else
        std::this_thread::sleep_for(std::chrono::microseconds(200));  // polling a bounded probe
    }
    SemArg a{};
    semctl(kid, 0, IPC_RMID, a);
    t.join();
    return seen;
  }();
  return ok;
}

std::unique_ptr<KernelSemSet> KernelSemSet::create(EventLoop& loop, const Creds& c, int nsems, uint16_t mode) {
  if (!kSupported) {
    errno = ENOSYS;
    return nullptr;
  }
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = on_cancel_signal;  // no SA_RESTART: the worker's semtimedop() returns EINTR
    sigemptyset(&sa.sa_mask);
    sigaction(cancel_signal(), &sa, nullptr);
  });
  int kid = create_as(c, nsems, mode);
  if (kid < 0) return nullptr;
  return std::unique_ptr<KernelSemSet>(new KernelSemSet(loop, kid, nsems));
}

KernelSemSet::~KernelSemSet() {
  *alive_ = nullptr;
  SemArg a{};
  semctl(kid_, 0, IPC_RMID, a);  // every waiter, the workers too, returns EIDRM
  for (auto& [token, w] : workers_) {
    w->cancel = true;
    // A worker that had not yet gone to sleep finds the set gone (EINVAL -> EIDRM) or the flag set.
    while (!w->finished) {
      if (pid_t t = w->tid) syscall(SYS_tgkill, getpid(), t, cancel_signal());
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // bounded by the worker's next check
    }
    w->thread.join();
  }
  // Completions already posted still run: they find the set gone and answer their caller only.
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
                              std::function<void()> registered,
                              std::function<void(int)> done) {
  if (workers_.size() >= kMaxWorkers) return false;
  auto w = std::make_shared<Worker>();
  w->token = token;
  w->sops = std::move(sops);
  w->registered = std::move(registered);
  w->done = std::move(done);
  int kid = kid_;
  EventLoop* loop = &loop_;
  auto cell = alive_;
  std::atomic<int32_t>* pids = remote_pid_.get();  // lives until the destructor joined this worker
  try {
    w->thread = std::thread([w, kid, loop, cell, pids, pid] {
      w->tid = static_cast<pid_t>(syscall(SYS_gettid));
      int r = 0;
      for (;;) {
        if (w->cancel) {
          r = ECANCELED;
          break;
        }
        if (syscall(kSemtimedop, kid, w->sops.data(), w->sops.size(), nullptr) == 0) {
          for (const auto& b : w->sops) pids[b.sem_num].store(pid);  // before anyone can read GETPID through dipcd
          r = 0;
          break;
        }
        r = errno;
        if (r == EINTR) continue;  // the flag decides
        if (r == EINVAL) r = EIDRM;  // removed before this worker slept: the request came first
        break;
      }
      w->result = r;
      w->finished = true;
      loop->post([w, cell] {
        if (*cell) (*cell)->finish(w->token);
        w->done(w->result);
      });
    });
  } catch (const std::system_error&) {
    return false;
  }
  workers_.emplace(token, w);
  watch(token);
  return true;
}

// "Blocked means registered": the caller is told it waits only once the worker sleeps in semtimedop(), so GETNCNT
// counts it and an IPC_RMID that follows gives it EIDRM. Polled from the loop while the worker starts.
void KernelSemSet::watch(uint64_t token) {
  auto it = workers_.find(token);
  if (it == workers_.end() || it->second->finished) return;
  Worker& w = *it->second;
  if (pid_t t = w.tid; t && task_sleeps_in_semtimedop(t)) {
    if (w.registered) w.registered();
    return;
  }
  auto cell = alive_;
  loop_.add_timer_us(50, [cell, token] {
    if (*cell) (*cell)->watch(token);
  });
}

bool KernelSemSet::cancel(uint64_t token) {
  auto it = workers_.find(token);
  if (it == workers_.end()) return false;
  Worker& w = *it->second;
  w.cancel = true;
  if (pid_t t = w.tid) syscall(SYS_tgkill, getpid(), t, cancel_signal());
  // The signal may land before the worker enters the kernel: repeat until it returns.
  auto cell = alive_;
  loop_.add_timer(1, [cell, token] {
    if (*cell) (*cell)->cancel(token);
  });
  return true;
}

void KernelSemSet::finish(uint64_t token) {
  auto it = workers_.find(token);
  if (it == workers_.end()) return;
  it->second->thread.join();  // it posted this as its last step
  workers_.erase(it);
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

// ---------------------------------------------------------------------------------------------------------------

int KernelSemRegistry::remove_stale() {
  if (path_.empty()) return 0;
  uint64_t ns = KernelSemSet::ipc_namespace();
  int removed = 0;
  if (FILE* f = fopen(path_.c_str(), "re")) {
    unsigned long long file_ns = 0;
    int kid = 0;
    while (fscanf(f, "%llu %d", &file_ns, &kid) == 2) {
      struct semid_ds ds {};
      SemArg a{};
      a.buf = &ds;
      // Only in the namespace it was made in, and only a private set (a backing set's key is IPC_PRIVATE).
      if (file_ns != ns || semctl(kid, 0, IPC_STAT, a) != 0 || ds.sem_perm.__key != IPC_PRIVATE) continue;
      SemArg none{};
      if (semctl(kid, 0, IPC_RMID, none) == 0) ++removed;
    }
    fclose(f);
  }
  kids_.clear();
  write();
  return removed;
}

void KernelSemRegistry::add(int kid) {
  kids_.push_back(kid);
  write();
}

void KernelSemRegistry::remove(int kid) {
  std::erase(kids_, kid);
  write();
}

void KernelSemRegistry::write() {
  if (path_.empty()) return;
  std::string tmp = path_ + ".tmp";
  FILE* f = fopen(tmp.c_str(), "we");
  if (!f) return;
  auto ns = static_cast<unsigned long long>(KernelSemSet::ipc_namespace());
  bool ok = true;
  for (int k : kids_) ok = fprintf(f, "%llu %d\n", ns, k) > 0 && ok;
  ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp.c_str(), path_.c_str()) != 0) {
    DIPC_LOG_WARN("cannot record kernel semaphore sets in {}: {}", path_, strerror(errno));
    unlink(tmp.c_str());
  }
}

}  // namespace dipc::ipc
