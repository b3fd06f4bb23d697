#include "ipc/kernel_object.h"

#include <signal.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <system_error>

#include "common/log.h"

namespace dipc::ipc {

namespace {

// A worker is interrupted with this signal; its handler does nothing, so the system call returns EINTR.
int cancel_signal() { return SIGRTMIN + 3; }
void on_cancel_signal(int) {}

#if defined(SYS_semtimedop) && defined(SYS_setresuid) && defined(SYS_setresgid) && !defined(__i386__)
constexpr bool kPossible = true;
#else
constexpr bool kPossible = false;
#endif

}  // namespace

uint64_t kernel_ipc_namespace() {
  struct stat st;
  return ::stat("/proc/self/ns/ipc", &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
}

bool kernel_workers_possible() { return kPossible; }

int kernel_create_as(const Creds& c, const std::function<int()>& make) {
#if defined(SYS_setresuid) && defined(SYS_setresgid)
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
  int kid = make();
  int e = errno;
  if (switch_ids) {
    // Back to root: the saved uid is still 0, so this cannot fail; if it ever did, the daemon must not go on.
    if (syscall(SYS_setresuid, -1, eu, -1) != 0 || syscall(SYS_setresgid, -1, eg, -1) != 0) {
      DIPC_LOG_ERROR("cannot restore the daemon's credentials after creating a kernel object: {}", strerror(errno));
      abort();
    }
  }
  errno = e;
  return kid;
#else
  (void)c;
  (void)make;
  errno = ENOSYS;
  return -1;
#endif
}

bool task_sleeps_in(pid_t tid, long nr) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/syscall", static_cast<int>(tid));
  FILE* f = fopen(path, "re");
  if (!f) return false;
  long seen = -1;
  bool ok = fscanf(f, "%ld", &seen) == 1;  // "running" for a task that is not in a system call
  fclose(f);
  if (!ok || seen != nr) return false;
  // In the system call but maybe preempted before it queued itself: only asleep (S) is queued.
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

bool kernel_sleep_visible(long nr, const std::function<void()>& sleep, const std::function<void()>& wake) {
  std::atomic<pid_t> tid{0};
  std::thread t([&tid, &sleep] {
    tid = static_cast<pid_t>(syscall(SYS_gettid));
    sleep();
  });
  bool seen = false;
  for (auto end = std::chrono::steady_clock::now() + std::chrono::seconds(2);
       !seen && std::chrono::steady_clock::now() < end;) {
    pid_t t_id = tid;
    if (t_id && task_sleeps_in(t_id, nr))
      seen = true;
    else
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // polling a bounded probe
  }
  wake();
  t.join();
  return seen;
}

// ---------------------------------------------------------------------------------------------------------------

struct KernelWaits::Worker {
  uint64_t token = 0;
  long nr = -1;
  std::function<int()> call;
  std::function<void()> registered;
  std::function<void(int)> done;
  std::atomic<pid_t> tid{0};
  std::atomic<bool> cancel{false};
  std::atomic<bool> finished{false};
  int result = 0;
  std::thread thread;
};

KernelWaits::KernelWaits(EventLoop& loop) : loop_(loop) {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = on_cancel_signal;  // no SA_RESTART: the worker's system call returns EINTR
    sigemptyset(&sa.sa_mask);
    sigaction(cancel_signal(), &sa, nullptr);
  });
}

KernelWaits::~KernelWaits() { stop_all(); }

void KernelWaits::stop_all() {
  *alive_ = nullptr;
  for (auto& [token, w] : workers_) {
    w->cancel = true;
    // A worker that had not yet gone to sleep finds the object gone or the flag set.
    while (!w->finished) {
      if (pid_t t = w->tid) syscall(SYS_tgkill, getpid(), t, cancel_signal());
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // bounded by the worker's next check
    }
    w->thread.join();
  }
  workers_.clear();
  // Completions already posted still run: they answer their caller only.
}

bool KernelWaits::start(uint64_t token, long nr, std::function<int()> call, std::function<void()> registered,
                        std::function<void(int)> done) {
  if (workers_.size() >= kMaxWorkers || workers_.count(token)) return false;
  auto w = std::make_shared<Worker>();
  w->token = token;
  w->nr = nr;
  w->call = std::move(call);
  w->registered = std::move(registered);
  w->done = std::move(done);
  EventLoop* loop = &loop_;
  auto cell = alive_;
  try {
    w->thread = std::thread([w, loop, cell] {
      w->tid = static_cast<pid_t>(syscall(SYS_gettid));
      int r = 0;
      for (;;) {
        if (w->cancel) {
          r = ECANCELED;
          break;
        }
        r = w->call();
        if (r != EINTR) break;  // EINTR: the flag decides
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

// "Blocked means registered": the caller is told it waits only once the worker sleeps in its system call, so the
// kernel counts it and an IPC_RMID that follows gives it EIDRM. Polled from the loop while the worker starts.
void KernelWaits::watch(uint64_t token) {
  auto it = workers_.find(token);
  if (it == workers_.end() || it->second->finished) return;
  Worker& w = *it->second;
  if (pid_t t = w.tid; t && task_sleeps_in(t, w.nr)) {
    if (w.registered) w.registered();
    return;
  }
  auto cell = alive_;
  loop_.add_timer_us(50, [cell, token] {
    if (*cell) (*cell)->watch(token);
  });
}

bool KernelWaits::cancel(uint64_t token) {
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

void KernelWaits::finish(uint64_t token) {
  auto it = workers_.find(token);
  if (it == workers_.end()) return;
  it->second->thread.join();  // it posted this as its last step
  workers_.erase(it);
}

// ---------------------------------------------------------------------------------------------------------------

namespace {
union SemArg {
  int val;
  struct semid_ds* buf;
  unsigned short* array;
};

// Whether kernel object `kid` of `type` exists as a private object (a backing object's key is IPC_PRIVATE), and
// removes it then.
bool remove_private(ObjType type, int kid) {
  if (type == ObjType::kMsg) {
    struct msqid_ds ds {};
    if (msgctl(kid, IPC_STAT, &ds) != 0 || ds.msg_perm.__key != IPC_PRIVATE) return false;
    return msgctl(kid, IPC_RMID, nullptr) == 0;
  }
  struct semid_ds ds {};
  SemArg a{};
  a.buf = &ds;
  if (semctl(kid, 0, IPC_STAT, a) != 0 || ds.sem_perm.__key != IPC_PRIVATE) return false;
  SemArg none{};
  return semctl(kid, 0, IPC_RMID, none) == 0;
}
}  // namespace

int KernelIdRegistry::remove_stale() {
  if (path_.empty()) return 0;
  uint64_t ns = kernel_ipc_namespace();
  int removed = 0;
  if (FILE* f = fopen(path_.c_str(), "re")) {
    unsigned long long file_ns = 0;
    int kid = 0;
    while (fscanf(f, "%llu %d", &file_ns, &kid) == 2)
      if (file_ns == ns && remove_private(type_, kid)) ++removed;  // only in the namespace it was made in
    fclose(f);
  }
  kids_.clear();
  write();
  return removed;
}

void KernelIdRegistry::add(int kid) {
  kids_.push_back(kid);
  write();
}

void KernelIdRegistry::remove(int kid) {
  std::erase(kids_, kid);
  write();
}

void KernelIdRegistry::write() {
  if (path_.empty()) return;
  std::string tmp = path_ + ".tmp";
  FILE* f = fopen(tmp.c_str(), "we");
  if (!f) return;
  auto ns = static_cast<unsigned long long>(kernel_ipc_namespace());
  bool ok = true;
  for (int k : kids_) ok = fprintf(f, "%llu %d\n", ns, k) > 0 && ok;
  ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp.c_str(), path_.c_str()) != 0) {
    DIPC_LOG_WARN("cannot record kernel objects in {}: {}", path_, strerror(errno));
    unlink(tmp.c_str());
  }
}

}  // namespace dipc::ipc
