// A distributed message queue homed on this node, backed by a real kernel queue in the daemon's IPC namespace, which
// the node's programs share (as the semaphore sets, kernel_sem.h). Local programs call msgsnd/msgrcv on the kernel
// queue directly (the preload learns its id with kMsgCtlKernel), so a message between two processes of the home node
// costs what the kernel's does; the kernel checks their rights, because the queue carries the distributed queue's
// owner, creator and mode. Callers of other nodes are served by dipcd on the same kernel queue: a nonblocking
// attempt on the loop thread after dipcd checked their rights, and, for a call that must wait, a worker thread that
// takes the caller's effective uid, gid and groups and sleeps in msgsnd()/msgrcv(), in the kernel's own queues with
// the local waiters, so the kernel re-checks the caller's rights on every wake-up as it would its own process's,
// and an IPC_RMID gives local and remote waiters EIDRM alike.
//
// Decisions (docs/ARCHITECTURE.md, "Message queues homed here"): msg_lspid/msg_lrpid after an operation of another
// node are that process's pid on its node (dipcd remembers it); the kernel queues show in /proc/sysvipc/msg (ipcs) as
// private queues of their owner, and the preload hides them from MSG_STAT scans and MSG_INFO counts. Queues of a
// previous daemon start are removed when the daemon starts (their ids are kept in the state directory).
#pragma once

#include <sys/msg.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "common/event_loop.h"
#include "common/wire.h"
#include "ipc/kernel_object.h"
#include "ipc/msg_queue.h"
#include "ipc/types.h"

namespace dipc::ipc {

class KernelMsgQueue {
 public:
  // The kernel queue is created with the caller's effective uid and gid and mode (kernel_create_as). nullptr (errno
  // set) when this daemon cannot, or the kernel's limits (msgmni) say no.
  static std::unique_ptr<KernelMsgQueue> create(EventLoop& loop, const Creds& c, uint16_t mode);
  // Whether this daemon can tell a worker asleep in msgrcv() (kernel_sleep_visible): tried once with a scratch queue.
  static bool supported();
  // Removes the kernel queue (every waiter, local or remote, gets EIDRM) and waits for the workers.
  ~KernelMsgQueue();
  KernelMsgQueue(const KernelMsgQueue&) = delete;
  KernelMsgQueue& operator=(const KernelMsgQueue&) = delete;

  int kid() const { return kid_; }
  // IPC_STAT on the kernel queue, with msg_lspid/msg_lrpid as callers expect them: where the kernel shows dipcd
  // itself (an operation it made for a process of another node), that process's pid on its node. 0, or EINVAL/EIDRM
  // when it was removed behind dipcd's back (by its owner).
  int stat(struct msqid_ds& out) const;
  // IPC_SET on the kernel queue (the caller's rights were checked by dipcd): 0 or the kernel's errno.
  int set(uint32_t uid, uint32_t gid, uint16_t mode, uint64_t qbytes);

  // A remote caller's msgsnd / msgrcv (rights checked), tried once with IPC_NOWAIT on the loop thread: 0, EAGAIN /
  // ENOMSG, or the kernel's error. `maxsize`: what the receiver can take (at most the protocol's kMaxMsgText).
  int try_send(int64_t mtype, const Bytes& text, int flg, int32_t pid);
  int try_recv(size_t maxsize, int64_t msgtyp, int flg, int32_t pid, Message& out);
  static constexpr size_t kMaxWorkers = KernelWaits::kMaxWorkers;
  // The same, by a worker that sleeps in the kernel as the caller `c` (its flags as given). `registered` runs (loop
  // thread) once it sleeps, `done` with 0 or the errno when it returns (ECANCELED after cancel()). false: too many
  // workers busy.
  bool start_send(uint64_t token, const Creds& c, int64_t mtype, Bytes text, int flg, std::function<void()> registered,
                  std::function<void(int)> done);
  bool start_recv(uint64_t token, const Creds& c, size_t maxsize, int64_t msgtyp, int flg,
                  std::function<void()> registered, std::function<void(int, Message)> done);
  bool cancel(uint64_t token) { return waits_.cancel(token); }

 private:
  KernelMsgQueue(EventLoop& loop, int kid) : kid_(kid), waits_(loop) {}

  int kid_;
  // The pid (on its node) of the last sender / receiver dipcd acted for, and the thread id of the last worker that
  // received; written by workers too.
  std::unique_ptr<std::atomic<int32_t>[]> remote_pid_{new std::atomic<int32_t>[3]()};
  KernelWaits waits_;  // last: destroyed (every call of its workers returned) before remote_pid_
};

// The kernel ids of the queues a daemon made (kernel_object.h).
using KernelMsgRegistry = KernelIdRegistry;

}  // namespace dipc::ipc
