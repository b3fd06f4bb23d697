// What the kernel-backed semaphore sets (kernel_sem.h) and message queues (kernel_msg.h) homed here share: making
// the kernel object under the caller's ids, worker threads asleep in a blocking system call for callers of other
// nodes (registered once the kernel shows them asleep, cancelled with a signal), the daemon's IPC namespace, and the
// state-directory list of kernel ids a crashed daemon leaves behind.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
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

// Worker threads of one kernel object, each asleep in one blocking system call for a caller of another node.
class KernelWaits {
 public:
  static constexpr size_t kMaxWorkers = 256;
  explicit KernelWaits(EventLoop& loop);
  // Joins every worker: the owner removed the kernel object first, so each returns (EIDRM) or is cancelled.
  ~KernelWaits();
  KernelWaits(const KernelWaits&) = delete;
  KernelWaits& operator=(const KernelWaits&) = delete;

  // Starts a thread that runs `call` (one system call, number `nr`, returning 0 or its errno; run again after EINTR
  // unless cancelled, then ECANCELED). `registered` runs on the loop thread once the worker sleeps in that call,
  // `done` with the result when it returns. false: kMaxWorkers busy, or no thread.
  bool start(uint64_t token, long nr, std::function<int()> call, std::function<void()> registered,
             std::function<void(int)> done);
  // Interrupts the worker of `token` (repeating the signal until it returns); false if there is none.
  bool cancel(uint64_t token);

 private:
  struct Worker;
  void watch(uint64_t token);
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
