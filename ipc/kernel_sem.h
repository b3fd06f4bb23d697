// A distributed semaphore set homed on this node, backed by a real kernel set in the daemon's IPC namespace, which
// the node's programs share (dipc-sim runs a node's programs in its IPC namespace). Local programs operate on the
// kernel set directly (the preload learns its id with kSemCtlKernel), so a semop between two processes of the home
// node costs what the kernel's does; the kernel checks their permissions, because the set carries the distributed
// object's owner, creator and mode. Callers of other nodes are served by dipcd on the same kernel set: a nonblocking
// attempt on the loop thread, and a worker thread asleep in semtimedop() for an operation that must wait, so GETNCNT,
// GETZCNT, FIFO order and EIDRM on removal cover local and remote waiters alike. Their SEM_UNDO adjustments are kept
// here (the kernel's would belong to dipcd) and applied when their process or node goes away.
//
// Decisions (docs/ARCHITECTURE.md, "Semaphores homed here"): GETPID after an operation of another node shows the
// home dipcd's pid; the kernel sets show in /proc/sysvipc (ipcs) as private sets of their owner; the preload hides
// them from *_STAT scans and *_INFO counts. Sets of a previous daemon start are removed when the daemon starts
// (their ids are kept in the state directory), so a stale kernel id never names a live object.
#pragma once

#include <sys/sem.h>
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
#include "ipc/kernel_object.h"
#include "ipc/types.h"

namespace dipc::ipc {

class KernelSemSet {
 public:
  // The kernel set is created with the caller's effective uid and gid (so its cuid/cgid/uid/gid are the distributed
  // object's) and mode. nullptr (errno set) when this daemon cannot: not root and not that user, semtimedop() not a
  // system call of its own on this architecture, or the kernel's limits.
  static std::unique_ptr<KernelSemSet> create(EventLoop& loop, const Creds& c, int nsems, uint16_t mode);
  // Whether this daemon can tell a worker asleep in semtimedop() (/proc/self/task/TID/syscall): tried once with a
  // scratch set; false under qemu-user (it shows the host's system call numbers) or without that file.
  static bool supported();
  // The daemon's IPC namespace (st_ino of /proc/self/ns/ipc); 0 if unknown.
  static uint64_t ipc_namespace() { return kernel_ipc_namespace(); }
  // Removes the kernel set (every waiter, local or remote, gets EIDRM) and waits for the workers.
  ~KernelSemSet();
  KernelSemSet(const KernelSemSet&) = delete;
  KernelSemSet& operator=(const KernelSemSet&) = delete;

  int kid() const { return kid_; }
  int nsems() const { return nsems_; }

  // IPC_STAT on the kernel set: 0, or EINVAL/EIDRM when it was removed behind dipcd's back (by its owner).
  int stat(struct semid_ds& out) const;
  int set(uint32_t uid, uint32_t gid, uint16_t mode);
  // semctl() on the kernel set for GETVAL, GETPID, GETNCNT, GETZCNT, SETVAL: the value, or -errno.
  int ctl(int semnum, int cmd, int val = 0);
  // GETPID as the caller expects it: the kernel's sempid, or, where that is dipcd itself (an operation, SETVAL or
  // undo dipcd made for a process of another node), that process's pid on its node.
  int getpid_of(int semnum);
  // The semaphores `sops` names were last changed by dipcd for `pid` (of another node).
  void set_remote_pid(const std::vector<struct sembuf>& sops, int32_t pid);
  void set_remote_pid_all(int32_t pid);
  int getall(std::vector<uint16_t>& out);
  int setall(const std::vector<uint16_t>& vals);

  // A remote caller's operation (SEM_UNDO already taken out). try_op: one nonblocking attempt (every op gets
  // IPC_NOWAIT): 0, EAGAIN, or the kernel's error.
  int try_op(const std::vector<struct sembuf>& sops);
  static constexpr size_t kMaxWorkers = KernelWaits::kMaxWorkers;
  // Starts a worker that sleeps in semtimedop() with the caller's flags. `registered` runs (loop thread) once the
  // worker sleeps in the kernel, `done` with 0 or the errno when it returns (ECANCELED after cancel()). false: too
  // many workers busy.
  bool start_wait(uint64_t token, std::vector<struct sembuf> sops, int32_t pid, std::function<void()> registered,
                  std::function<void(int)> done);
  // Interrupts the worker of `token` (repeating the signal until it returns); false if there is none.
  bool cancel(uint64_t token) { return waits_.cancel(token); }

  // SEM_UNDO of processes of other nodes, as the kernel keeps semadj: check (ERANGE past semaem), record, clear
  // (SETVAL, SETALL: -1 = all), apply at exit (clamped to [0, semvmx], as exit_sem()).
  int check_undo(const ProcKey& p, const std::vector<struct sembuf>& undo_ops, int semaem) const;
  // perform_atomic_semop()'s order for one caller over the current values (sops with their SEM_UNDO flags): EAGAIN
  // when an op blocks before any ERANGE (overflow or adjustment range), ERANGE, or 0.
  int first_failure(const ProcKey& p, const std::vector<struct sembuf>& sops, int semaem, int semvmx);
  void add_undo(const ProcKey& p, const std::vector<struct sembuf>& undo_ops);
  void clear_undo(int semnum);
  void apply_undo(const ProcKey& p, int semvmx);
  bool has_undo(const ProcKey& p) const { return undo_.count(p) != 0; }

 private:
  KernelSemSet(EventLoop& loop, int kid, int nsems)
      : kid_(kid), nsems_(nsems), remote_pid_(new std::atomic<int32_t>[static_cast<size_t>(nsems)]()), waits_(loop) {}

  int kid_;
  int nsems_;
  std::unique_ptr<std::atomic<int32_t>[]> remote_pid_;  // per semaphore; written by workers too
  std::map<ProcKey, std::vector<int>> undo_;
  KernelWaits waits_;  // last: destroyed (every call of its workers returned) before remote_pid_
};

// The kernel ids of the sets a daemon made (kernel_object.h).
using KernelSemRegistry = KernelIdRegistry;

}  // namespace dipc::ipc
