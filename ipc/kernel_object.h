// What the kernel-backed semaphore sets (kernel_sem.h) and message queues (kernel_msg.h) homed here share: making
// the kernel object under the caller's ids, pooled worker threads asleep in a blocking system call for callers of
// other nodes (registered once the kernel shows them asleep, cancelled with a signal), the daemon's IPC namespace, and the
// state-directory list of kernel ids a crashed daemon leaves behind.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/event_loop.h"
#include "ipc/ids.h"
#include "ipc/types.h"

namespace dipc::ipc {

// The daemon's IPC namespace (st_ino of /proc/self/ns/ipc); 0 if unknown.
uint64_t kernel_ipc_namespace();

// Runs `make` (a semget/msgget(IPC_PRIVATE)) under the caller's effective uid and gid, so the object's cuid, cgid,
// uid and gid are the distributed object's: the raw setresuid/setresgid system calls change the calling thread
// alone, for this call only. -1 with errno EPERM when this daemon is neither root nor that user.
int kernel_create_as(const Creds& c, const std::function<int()>& make);

// Whether the raw system calls a worker needs exist on this architecture (SYS_setresuid, a semtimedop of its own).
bool kernel_workers_possible();

// Whether task `tid` of this process sleeps (state S) in system call `nr` (/proc/self/task/TID/syscall).
bool task_sleeps_in(pid_t tid, long nr);

// Whether this system shows a thread asleep in a system call (false under qemu-user, which shows the host's
// numbers, or without /proc/self/task/TID/syscall): a thread runs `sleep` (system call `nr` on a scratch object,
// until `wake` removes it), seen asleep within 2 s or not.
bool kernel_sleep_visible(long nr, const std::function<void()>& sleep, const std::function<void()>& wake);

// The threads that sleep in the kernel for callers of other nodes: one process-wide pool of parked workers (they
// wait on a condition variable, a futex), each taking one call, running it, answering through the caller's loop and
// parking again, with dipcd's own credentials restored before it takes the next call (a message worker takes the
// caller's ids, kernel_msg.cc). Bound (decision, docs/ARCHITECTURE.md "Semaphores homed here"): a call always gets a
// thread of its own while it sleeps, because a queued call would wait behind calls that may never return (a post
// on another set would not reach it): the pool grows on demand to kMaxThreads calls at once, then refuses a call
// (ENOMEM to the caller, as KernelWaits' per-object kMaxWorkers), and keeps at most kMaxIdle threads parked.
class KernelWorkerPool {
 public:
  static constexpr size_t kMaxThreads = 1024;
  static constexpr size_t kMaxIdle = 8;
  // One call: `run` on a pool thread (it sees `tid` and `cancel`/`gone` of the caller's own Job).
  struct Job {
    std::function<void(Job&)> run;
    std::atomic<pid_t> tid{0};  // the pool thread running it, 0 before and after
  };
  // dipcd's pool (KernelWaits uses it).
  static KernelWorkerPool& instance();
  // A pool of its own (tests): at most `max_threads` busy threads. Its destructor ends the parked threads; every
  // job must have returned by then.
  explicit KernelWorkerPool(size_t max_threads = kMaxThreads);
  ~KernelWorkerPool();
  KernelWorkerPool(const KernelWorkerPool&) = delete;
  KernelWorkerPool& operator=(const KernelWorkerPool&) = delete;
  // Hands `job` to a parked thread, or to a new one while fewer than kMaxThreads are busy. false: the bound, or no
  // thread could be made.
  bool submit(std::shared_ptr<Job> job);
  // Threads that exist, calls taken and not yet returned, threads parked (asleep, waiting for a call).
  size_t threads() const;
  size_t busy() const;
  size_t parked() const;

 private:
  void serve();
  void restore_credentials();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable gone_cv_;  // the destructor waits on it for the last thread
  bool stopping_ = false;
  size_t max_threads_;
  std::deque<std::shared_ptr<Job>> queue_;
  size_t threads_ = 0;
  size_t busy_ = 0;
  size_t parked_ = 0;
  // dipcd's effective ids and supplementary groups, as at the pool's start.
  uid_t euid_;
  gid_t egid_;
  std::vector<gid_t> groups_;
};

// The blocking calls of one kernel object, each asleep in one system call on a pool thread for a caller of another
// node.
class KernelWaits {
 public:
  static constexpr size_t kMaxWorkers = 256;
  explicit KernelWaits(EventLoop& loop);
  // Waits for every call: the owner removed the kernel object first, so each returns (EIDRM), or, not yet started,
  // ends with EIDRM without a system call.
  ~KernelWaits();
  KernelWaits(const KernelWaits&) = delete;
  KernelWaits& operator=(const KernelWaits&) = delete;

  // Runs `call` on a pool thread (one system call, number `nr`, returning 0 or its errno; run again after EINTR
  // unless cancelled, then ECANCELED). `registered` runs on the loop thread once the worker sleeps in that call,
  // `done` with the result when it returns. false: kMaxWorkers busy, or no thread.
  bool start(uint64_t token, long nr, std::function<int()> call, std::function<void()> registered,
             std::function<void(int)> done);
  // Interrupts the call of `token` (repeating the signal until it returns); false if there is none. The signal goes
  // to the thread running it; should that thread have moved on to another call, that call's system call returns
  // EINTR and is made again (its own flags are clear): a late signal is harmless.
  bool cancel(uint64_t token);

 private:
  struct Worker;
  void watch(uint64_t token, int64_t backoff_us);
  void finish(uint64_t token);
  void stop_all();

  EventLoop& loop_;
  std::shared_ptr<KernelWaits*> alive_ = std::make_shared<KernelWaits*>(this);  // null once destroyed
  std::map<uint64_t, std::shared_ptr<Worker>> workers_;
};

// The kernel ids of the objects of one type a daemon made, kept in its state directory, one "namespace-inode kid" per
// line, so the next start removes those of a crashed incarnation before anything can use them.
class KernelIdRegistry {
 public:
  explicit KernelIdRegistry(std::string path = {}, ObjType type = ObjType::kSem)
      : path_(std::move(path)), type_(type) {}
  // Removes the objects listed by a previous start that still exist in this IPC namespace as private objects;
  // clears the list. Returns how many were removed.
  int remove_stale();
  void add(int kid);
  void remove(int kid);

 private:
  void write();
  std::string path_;
  ObjType type_;
  std::vector<int> kids_;
};

}  // namespace dipc::ipc
