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
#include <thread>
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

KernelWorkerPool::KernelWorkerPool(size_t max_threads)
    : max_threads_(max_threads), euid_(geteuid()), egid_(getegid()) {
  int n = getgroups(0, nullptr);
  if (n > 0) {
    groups_.resize(static_cast<size_t>(n));
    n = getgroups(n, groups_.data());
    groups_.resize(n > 0 ? static_cast<size_t>(n) : 0);
  }
}

KernelWorkerPool::~KernelWorkerPool() {
  std::unique_lock<std::mutex> g(mu_);
  stopping_ = true;
  cv_.notify_all();
  gone_cv_.wait(g, [this] { return threads_ == 0; });
}

KernelWorkerPool& KernelWorkerPool::instance() {
  static KernelWorkerPool* pool = new KernelWorkerPool();  // never destroyed: its threads may outlive main()
  return *pool;
}

size_t KernelWorkerPool::threads() const {
  std::lock_guard<std::mutex> g(mu_);
  return threads_;
}

size_t KernelWorkerPool::busy() const {
  std::lock_guard<std::mutex> g(mu_);
  return busy_;
}

size_t KernelWorkerPool::parked() const {
  std::lock_guard<std::mutex> g(mu_);
  return parked_;
}

bool KernelWorkerPool::submit(std::shared_ptr<Job> job) {
  std::unique_lock<std::mutex> g(mu_);
  if (busy_ >= max_threads_) return false;
  bool spawn = threads_ <= busy_;  // every thread has a call already: one more
  if (spawn) {
    try {
      std::thread([this] { serve(); }).detach();
    } catch (const std::system_error&) {
      return false;
    }
    ++threads_;
  }
  ++busy_;
  queue_.push_back(std::move(job));
  g.unlock();
  if (!spawn) cv_.notify_one();
  return true;
}

void KernelWorkerPool::serve() {
  pid_t self = static_cast<pid_t>(syscall(SYS_gettid));
  std::unique_lock<std::mutex> g(mu_);
  for (;;) {
    ++parked_;
    cv_.wait(g, [this] { return !queue_.empty() || stopping_; });  // a late cancel signal only wakes the futex
    --parked_;
    if (queue_.empty()) {  // stopping
      if (--threads_ == 0) gone_cv_.notify_all();
      return;
    }
    std::shared_ptr<Job> job = std::move(queue_.front());
    queue_.pop_front();
    g.unlock();
    job->tid = self;
    job->run(*job);
    job->run = nullptr;  // what it held (its KernelWaits' worker, which holds the job) goes now
    job->tid = 0;
    restore_credentials();  // before the next call: it must not run with the last caller's ids
    job.reset();
    g.lock();
    --busy_;
    if (threads_ - busy_ > kMaxIdle) {  // enough parked already
      if (--threads_ == 0) gone_cv_.notify_all();
      return;
    }
  }
}

// The raw system calls change this thread's ids alone (glibc's wrappers would change every thread's), and only
// what a call changed is put back (a daemon in a user namespace that denies setgroups never calls it). uid first:
// a thread that became another user regains root's capabilities with it (its saved uid is still 0), which the gid
// and groups need. If that ever failed the thread would serve the next caller with the last one's rights: abort.
void KernelWorkerPool::restore_credentials() {
#if defined(SYS_setresuid) && defined(SYS_setresgid) && defined(SYS_setgroups) && defined(SYS_geteuid) && \
    defined(SYS_getegid) && defined(SYS_getgroups)
  if (euid_ != 0) return;  // a daemon that is not root never changes a worker's ids
  bool ok = true;
  if (static_cast<uid_t>(syscall(SYS_geteuid)) != euid_) ok = syscall(SYS_setresuid, -1, euid_, -1) == 0;
  if (ok && static_cast<gid_t>(syscall(SYS_getegid)) != egid_) ok = syscall(SYS_setresgid, -1, egid_, -1) == 0;
  if (ok) {
    gid_t now[64];
    long n = syscall(SYS_getgroups, 64, now);  // this thread's (credentials are per thread in the kernel)
    if (n < 0 || static_cast<size_t>(n) != groups_.size() || !std::equal(groups_.begin(), groups_.end(), now))
      ok = syscall(SYS_setgroups, groups_.size(), groups_.data()) == 0;
  }
  if (!ok) {
    DIPC_LOG_ERROR("a kernel worker cannot take back the daemon's credentials: {}", strerror(errno));
    abort();
  }
#endif
}

struct KernelWaits::Worker {
  uint64_t token = 0;
  long nr = -1;
  std::function<int()> call;
  std::function<void()> registered;
  std::function<void(int)> done;
  std::shared_ptr<KernelWorkerPool::Job> job;
  std::atomic<bool> cancel{false};  // cancel(): ECANCELED unless the call returned first
  std::atomic<bool> gone{false};    // the object was removed: EIDRM without a system call, if not started
  std::atomic<bool> finished{false};
  bool is_registered = false;  // loop thread
  int result = 0;
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
    w->gone = true;
    // The kernel object is removed: a worker asleep in it returned EIDRM; one about to call finds the flag, or the
    // object gone (EINVAL, taken as EIDRM). The signal only hurries one between the two.
    while (!w->finished) {
      if (pid_t t = w->job->tid) syscall(SYS_tgkill, getpid(), t, cancel_signal());
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // bounded by the worker's next check
    }
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
  w->job = std::make_shared<KernelWorkerPool::Job>();
  EventLoop* loop = &loop_;
  auto cell = alive_;
  // The job holds the worker; the worker holds the job only for its thread id (the job is dropped by the pool once
  // run, so the cycle ends when the worker leaves workers_).
  w->job->run = [w, loop, cell](KernelWorkerPool::Job&) {
    int r = 0;
    bool first = true;
    for (;;) {
      if (w->gone) {
        r = EIDRM;  // removed before this call reached the kernel: the request came first
        break;
      }
      if (w->cancel) {
        r = ECANCELED;
        break;
      }
      if (first) {
        first = false;
        // The loop looks whether it sleeps yet once it runs this: by then it usually does.
        loop->post([w, cell] {
          if (*cell) (*cell)->watch(w->token, 0);
        });
      }
      r = w->call();
      if (r != EINTR) break;  // EINTR: the flags decide
    }
    w->result = r;
    loop->post([w, cell] {
      if (*cell) (*cell)->finish(w->token);
      w->done(w->result);
    });
    w->finished = true;  // last: the owner may go, and its loop with it, once it sees this
  };
  if (!KernelWorkerPool::instance().submit(w->job)) {
    w->job->run = nullptr;  // it held the worker
    return false;
  }
  workers_.emplace(token, w);
  return true;
}

// "Blocked means registered": the caller is told it waits only once the worker sleeps in its system call, so the
// kernel counts it and an IPC_RMID that follows gives it EIDRM. First looked at when the worker is about to make
// the call (it posts this), then, if it does not sleep yet, after 10, 20, 40, 50, 50 ... us.
void KernelWaits::watch(uint64_t token, int64_t backoff_us) {
  auto it = workers_.find(token);
  if (it == workers_.end() || it->second->finished || it->second->is_registered) return;
  Worker& w = *it->second;
  if (pid_t t = w.job->tid; t && task_sleeps_in(t, w.nr)) {
    w.is_registered = true;
    if (w.registered) w.registered();
    return;
  }
  int64_t next = std::min<int64_t>(backoff_us ? backoff_us * 2 : 10, 50);
  auto cell = alive_;
  loop_.add_timer_us(next, [cell, token, next] {
    if (*cell) (*cell)->watch(token, next);
  });
}

bool KernelWaits::cancel(uint64_t token) {
  auto it = workers_.find(token);
  if (it == workers_.end()) return false;
  Worker& w = *it->second;
  w.cancel = true;
  if (pid_t t = w.job->tid) syscall(SYS_tgkill, getpid(), t, cancel_signal());
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
