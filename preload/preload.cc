// libdipc.so: interposes the libc System V semaphore, message queue and shared memory calls. *get calls on distributed keys (the
// daemon's control page decides) and calls on distributed ids (bit 30) go to the node's dipcd; everything else goes
// straight to the kernel. Nothing throws out of here: errors are errno and -1, as the kernel's.
#include <dlfcn.h>
#include <sys/syscall.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <cerrno>
#include <cstdarg>
#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>
#include <optional>
#include <vector>

#include "dipc/dipc.h"
#include "ipc/ids.h"
#include "ipc/protocol.h"
#include "preload/client.h"
#include "preload/seccomp.h"
#include "preload/shm.h"
#include "preload/user_memory.h"

namespace ipc = dipc::ipc;
using dipc::ByteView;
using dipc::preload::Reply;
using dipc::preload::Wait;

namespace {

union semun {  // glibc leaves its definition to the program
  int val;
  struct semid_ds* buf;
  unsigned short* array;
  struct seminfo* info;
};

// The real functions, looked up once.
struct Real {
  int (*semget)(key_t, int, int);
  int (*semop)(int, struct sembuf*, size_t);
  int (*semtimedop)(int, struct sembuf*, size_t, const struct timespec*);
  int (*semctl)(int, int, int, ...);
  int (*msgget)(key_t, int);
  int (*msgsnd)(int, const void*, size_t, int);
  ssize_t (*msgrcv)(int, void*, size_t, long, int);
  int (*msgctl)(int, int, struct msqid_ds*);
  int (*shmget)(key_t, size_t, int);
  void* (*shmat)(int, const void*, int);
  int (*shmdt)(const void*);
  int (*shmctl)(int, int, struct shmid_ds*);
};

template <typename F>
void lookup(F& f, const char* name) {
  f = reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

// Under the seccomp filter (seccomp.h) the kernel is asked with raw system calls the filter lets through; libc's
// wrappers would trap back into the preload.
#if defined(__x86_64__) || defined(__aarch64__)  // the architectures of preload/seccomp.cc
#define DIPC_RAW_SYSV 1
namespace raw {
using dipc::preload::kernel_syscall;
int semget(key_t k, int n, int f) { return static_cast<int>(kernel_syscall(SYS_semget, k, n, f)); }
int semop(int id, struct sembuf* s, size_t n) {
  return static_cast<int>(kernel_syscall(SYS_semop, id, reinterpret_cast<long>(s), static_cast<long>(n)));
}
int semtimedop(int id, struct sembuf* s, size_t n, const struct timespec* t) {
  return static_cast<int>(kernel_syscall(SYS_semtimedop, id, reinterpret_cast<long>(s), static_cast<long>(n),
                                         reinterpret_cast<long>(t)));
}
int semctl(int id, int num, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  unsigned long arg = va_arg(ap, unsigned long);  // union semun travels as one register
  va_end(ap);
  return static_cast<int>(kernel_syscall(SYS_semctl, id, num, cmd, static_cast<long>(arg)));
}
int msgget(key_t k, int f) { return static_cast<int>(kernel_syscall(SYS_msgget, k, f)); }
int msgsnd(int id, const void* p, size_t n, int f) {
  return static_cast<int>(kernel_syscall(SYS_msgsnd, id, reinterpret_cast<long>(p), static_cast<long>(n), f));
}
ssize_t msgrcv(int id, void* p, size_t n, long t, int f) {
  return kernel_syscall(SYS_msgrcv, id, reinterpret_cast<long>(p), static_cast<long>(n), t, f);
}
int msgctl(int id, int cmd, struct msqid_ds* b) {
  return static_cast<int>(kernel_syscall(SYS_msgctl, id, cmd, reinterpret_cast<long>(b)));
}
int shmget(key_t k, size_t n, int f) {
  return static_cast<int>(kernel_syscall(SYS_shmget, k, static_cast<long>(n), f));
}
void* shmat(int id, const void* a, int f) {
  return reinterpret_cast<void*>(kernel_syscall(SYS_shmat, id, reinterpret_cast<long>(a), f));
}
int shmdt(const void* a) { return static_cast<int>(kernel_syscall(SYS_shmdt, reinterpret_cast<long>(a))); }
int shmctl(int id, int cmd, struct shmid_ds* b) {
  return static_cast<int>(kernel_syscall(SYS_shmctl, id, cmd, reinterpret_cast<long>(b)));
}
}  // namespace raw
#endif

const Real& real() {
  static const Real r = [] {
#ifdef DIPC_RAW_SYSV
    if (dipc::preload::seccomp_active())
      return Real{raw::semget, raw::semop,   raw::semtimedop, raw::semctl, raw::msgget, raw::msgsnd,
                  raw::msgrcv, raw::msgctl, raw::shmget,     raw::shmat,  raw::shmdt,  raw::shmctl};
#endif
    Real t{};
    lookup(t.semget, "semget");
    lookup(t.semop, "semop");
    lookup(t.semtimedop, "semtimedop");
    lookup(t.semctl, "semctl");
    lookup(t.msgget, "msgget");
    lookup(t.msgsnd, "msgsnd");
    lookup(t.msgrcv, "msgrcv");
    lookup(t.msgctl, "msgctl");
    lookup(t.shmget, "shmget");
    lookup(t.shmat, "shmat");
    lookup(t.shmdt, "shmdt");
    lookup(t.shmctl, "shmctl");
    return t;
  }();
  return r;
}

int fail(int e) {
  errno = e;
  return -1;
}

// Calls the kernel through the real libc function.
template <typename Fn, typename... Args>
auto kernel(Fn Real::*fn, Args... args) {
  Fn f = real().*fn;
  return f ? f(args...) : fail(ENOSYS);
}

// Runs a wrapper body; nothing escapes to the C caller.
template <typename F>
auto guarded(F&& body) noexcept -> decltype(body()) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail(ENOMEM);
  } catch (...) {
    return fail(EIO);
  }
}

// A call on a distributed id. nullopt: the kernel answers instead (an id the daemon does not know: a kernel id past
// bit 30). No daemon is EIO, never the kernel.
std::optional<Reply> daemon_call(uint16_t op, const dipc::Bytes& body, const Wait& w = {},
                                 const dipc::preload::Accept& accept = {}) {
  Reply r;
  dipc::preload::call(op, body, r, w, accept);
  if (r.unknown_id()) return std::nullopt;
  return r;
}

template <typename T>
bool decodes(ByteView b, T& v) {
  return ipc::decode_body(b, v);
}

std::optional<int> dipc_get(uint16_t op, key_t key, int nsems, int flg, uint64_t size = 0) {
  // With no daemon reached yet, the policy is unknown: an IPC_DIPC key is distributed under every policy (it fails
  // with EIO below), any other key goes to the kernel. A daemon that died leaves its control page mapped, so its
  // policy still decides.
  const ipc::ControlPage* cp = dipc::preload::control();
  if (!cp) {
    // A daemon this program cannot use (another byte order or version) is an error, never a reason to create or
    // find the key in the local kernel instead.
    if (int e = dipc::preload::daemon_incompatible()) return fail(e);
    if (!(flg & IPC_DIPC)) return std::nullopt;  // no daemon reached yet: only IPC_DIPC is known to be distributed
  } else if (!cp->distributes(key, flg, IPC_DIPC)) {
    return std::nullopt;
  }
  if (op == ipc::kShmGet && cp)
    if (auto local = dipc::preload::shm_get_local(key, size, flg)) return *local < 0 ? fail(-*local) : *local;
  ipc::IdResp id;
  auto r = daemon_call(op, ipc::encode_body(ipc::GetReq{key, nsems, flg, size}), {},
                       [&](ByteView b) { return decodes(b, id) && ipc::is_dipc_id(id.id); });
  if (!r) return std::nullopt;
  return r->status ? fail(r->status) : id.id;
}

void put_perm(struct ipc_perm& out, const ipc::Perm& p) {
  out.__key = p.key;
  out.uid = p.uid;
  out.gid = p.gid;
  out.cuid = p.cuid;
  out.cgid = p.cgid;
  out.mode = p.mode;
  out.__seq = p.seq;
}

// IPC_STAT buffers, zeroed first: nothing uninitialised reaches the program.
void put_stat(struct semid_ds& out, const ipc::SemStat& st) {
  std::memset(&out, 0, sizeof out);
  put_perm(out.sem_perm, st.perm);
  out.sem_otime = st.otime;
  out.sem_ctime = st.ctime;
  out.sem_nsems = st.nsems;
}

void put_stat(struct msqid_ds& out, const ipc::MsgStat& st) {
  std::memset(&out, 0, sizeof out);
  put_perm(out.msg_perm, st.perm);
  out.msg_stime = st.stime;
  out.msg_rtime = st.rtime;
  out.msg_ctime = st.ctime;
  out.__msg_cbytes = st.cbytes;
  out.msg_qnum = st.qnum;
  out.msg_qbytes = st.qbytes;
  out.msg_lspid = st.lspid;
  out.msg_lrpid = st.lrpid;
}

void put_stat(struct shmid_ds& out, const ipc::ShmStat& st) {
  std::memset(&out, 0, sizeof out);
  put_perm(out.shm_perm, st.perm);
  out.shm_segsz = st.segsz;
  out.shm_atime = st.atime;
  out.shm_dtime = st.dtime;
  out.shm_ctime = st.ctime;
  out.shm_cpid = st.cpid;
  out.shm_lpid = st.lpid;
  out.shm_nattch = st.nattch;
}

// ---- *_STAT, *_STAT_ANY and *_INFO: the kernel's tables and the cluster's distributed objects ----
// Indices below ipc::kStatIndexBase are the kernel's; distributed objects have theirs above (protocol.h). *_INFO
// asks the kernel, then adds the cluster's objects to the counts and to the highest index.

std::optional<ipc::IpcInfoResp> dipc_info(ipc::ObjType t) {
  ipc::IpcInfoResp r;
  Reply rep;
  dipc::preload::call(ipc::kIpcInfo, ipc::encode_body(ipc::IpcInfoReq{t}), rep, {},
                      [&](ByteView b) { return decodes(b, r); });
  if (rep.status) return std::nullopt;
  return r;
}


// *_STAT on a distributed index: the object's id, its stat in `out`.
template <typename Resp, typename Buf>
std::optional<int> dipc_stat(ipc::ObjType t, int index, bool any, Buf* out) {
  Resp resp;
  int32_t id = 0;
  Reply rep;
  auto accept = [&](ByteView b) {
    dipc::Decoder d(b);
    id = d.i32();
    return resp.decode(d) && d.done() && ipc::is_dipc_id(id);
  };
  dipc::preload::call(ipc::kIpcStat, ipc::encode_body(ipc::IpcStatReq{t, index, any}), rep, {}, accept);
  if (rep.status) return fail(rep.status);  // no daemon: EIO, a distributed index never goes to the kernel
  Buf st;
  put_stat(st, resp.stat);
  if (!dipc::preload::copy_out(out, &st, sizeof st)) return fail(EFAULT);
  return id;
}

// IPC_INFO / *_INFO: the kernel's answer first (an error is the call's), then the cluster's objects, added to the
// counts by add(IpcInfoResp) and to the highest index.
template <typename Kernel, typename Add>
int table_info(ipc::ObjType t, Kernel call_kernel, Add add) {
  int k = call_kernel();
  if (k < 0) return k;
  return guarded([&] {
    auto d = dipc_info(t);
    if (!d) return k;
    add(*d);
    return std::max(k, d->max_index);
  });
}

// *_STAT / *_STAT_ANY at an index: the kernel's below kStatIndexBase, the cluster's from there on.
template <typename Resp, typename Buf, typename Kernel>
int table_stat(ipc::ObjType t, int index, bool any, Buf* buf, Kernel call_kernel) {
  if (index < ipc::kStatIndexBase) return call_kernel();
  return guarded([&] {
    auto r = dipc_stat<Resp>(t, index, any, buf);
    return r ? *r : call_kernel();
  });
}

// ---- semaphores ----

// A set (queue) homed on this node is backed by a kernel set (queue) in its dipcd's IPC namespace
// (ipc/kernel_sem.h, ipc/kernel_msg.h): when this program shares that namespace, its semop/semtimedop and its
// GETVAL/GETALL/GETNCNT/GETZCNT/GETPID/SETVAL/SETALL (its msgsnd/msgrcv) go to the kernel object directly, at the
// kernel's speed, and the kernel checks its permissions. The kernel id is asked once per object (kSemCtlKernel,
// kMsgCtlKernel) and kept in a small lock-free table (the seccomp SIGSYS path runs here too); it is used for nothing
// but the kernel call. IPC_STAT, IPC_SET and IPC_RMID stay with dipcd, which keeps both in step.
uint64_t own_namespace() {
  static const uint64_t ns = [] {
    struct stat st;
    return ::stat("/proc/self/ns/ipc", &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
  }();
  return ns;
}

// `Req`: the type's ctl request (SemCtlReq, MsgCtlReq), sent as `op` with the pseudo-command `cmd`.
template <typename Req, uint16_t op, int32_t cmd>
class KernelIds {
 public:
  static constexpr int kInterrupted = -2;
  std::atomic<int> daemon_pid{0};  // dipcd's pid as the kernel records it (sempid, msg_lspid, msg_lrpid)

  // The kernel id if this process already knows it (nothing asked): true and *kid (-1: none).
  bool cached(int id, int* kid) {
    uint64_t e = slot(id).load(std::memory_order_acquire);
    if (e == 0 || static_cast<uint32_t>(e >> 32) != static_cast<uint32_t>(id)) return false;
    *kid = static_cast<int>(static_cast<uint32_t>(e)) - 1;
    return true;
  }

  // The kernel id behind a distributed object; -1: call dipcd; kInterrupted (only with `interruptible`): a signal
  // handler ran while the id was asked, so the call must act as if interrupted before it slept.
  int kernel_id(int id, bool interruptible = false) {
    if (int kid; cached(id, &kid)) return kid;
    Req q;
    q.id = id;
    q.cmd = cmd;
    ipc::KernelIdResp resp;
    Reply r;
    // Asked from inside semop/msgsnd/msgrcv: like the operation itself, it polls rather than sleeps for the answer,
    // so a process seen sleeping in one is a registered waiter (issue 9 item 3), never one still asking for the id.
    Wait w;
    w.interruptible = interruptible;
    dipc::preload::call(op, ipc::encode_body(q), r, w, [&](ByteView b) { return decodes(b, resp); });
    if (r.interrupted) return kInterrupted;
    if (r.status || r.unknown_id()) return -1;  // the normal path gives the answer
    int kid = resp.kid >= 0 && resp.ns_ino != 0 && resp.ns_ino == own_namespace() ? resp.kid : -1;
    if (kid >= 0) daemon_pid.store(resp.daemon_pid, std::memory_order_relaxed);
    slot(id).store((static_cast<uint64_t>(static_cast<uint32_t>(id)) << 32) | static_cast<uint32_t>(kid + 1),
                   std::memory_order_release);
    return kid;
  }

  void forget(int id) {
    uint64_t e = slot(id).load(std::memory_order_acquire);
    if (static_cast<uint32_t>(e >> 32) == static_cast<uint32_t>(id)) slot(id).compare_exchange_strong(e, 0);
  }

 private:
  static constexpr size_t kEntries = 1024;
  std::atomic<uint64_t>& slot(int id) { return table_[static_cast<uint32_t>(id) % kEntries]; }
  std::atomic<uint64_t> table_[kEntries] = {};  // (dipc id << 32) | (kernel id + 1); kernel id + 1 == 0: none
};

KernelIds<ipc::SemCtlReq, ipc::kSemCtl, ipc::kSemCtlKernel> ksem;
KernelIds<ipc::MsgCtlReq, ipc::kMsgCtl, ipc::kMsgCtlKernel> kmsg;

// Whether a private kernel object of type `t` found by a *_STAT scan backs a distributed one homed here (dipcd hides
// those).
bool hidden(ipc::ObjType t, int kid, int32_t key) {
  if (key != IPC_PRIVATE) return false;
  auto d = dipc_info(t);
  return d && d->ns_ino == own_namespace() && std::find(d->hidden.begin(), d->hidden.end(), kid) != d->hidden.end();
}

// The kernel's *_STAT at an index of its own (`call_kernel`), with the kernel objects behind distributed ones homed
// here left out (EINVAL, as an unused index); `key_of` reads the key from the buffer the kernel filled.
template <typename Ds, typename Kernel, typename Key>
int visible_stat(ipc::ObjType t, const Ds* buf, Kernel call_kernel, Key key_of) {
  int r = call_kernel();
  if (r < 0) return r;
  return guarded([&] {
    Ds ds;
    if (!dipc::preload::copy_in(&ds, buf, sizeof ds)) return r;
    return hidden(t, r, key_of(ds)) ? fail(EINVAL) : r;
  });
}

// A call on a distributed object backed by a kernel object (`ids`): an object whose kernel id this process knows
// goes straight to the kernel. Else the kernel id is asked first, and the asking and the operation are one call to
// the program: signals stay blocked across both (CallGate), so a signal that arrives between them interrupts the
// operation (EINTR where it would sleep) instead of running its handler and leaving the operation asleep.
// `kernel_call(id)`: the kernel's call; `via_daemon(interrupted)`: the call through dipcd (nullopt: the kernel's),
// with `interrupted`: tried without waiting, EINTR where it would have to wait.
template <class Ids, class KernelCall, class DaemonCall>
auto kernel_first(Ids& ids, int id, KernelCall kernel_call, DaemonCall via_daemon) -> decltype(kernel_call(0)) {
  if (int kid; ids.cached(id, &kid)) {
    if (kid >= 0) return kernel_call(kid);
    auto r = via_daemon(false);  // no kernel object here: the call through dipcd alone, as before
    return r ? *r : kernel_call(id);
  }
  dipc::preload::CallGate gate;
  int kid = ids.kernel_id(id, true);
  bool interrupted = kid == Ids::kInterrupted || gate.signal_pending();
  if (kid >= 0 && !interrupted) {
    gate.release();
    return kernel_call(kid);
  }
  auto r = via_daemon(interrupted);
  gate.release();
  return r ? *r : kernel_call(id);
}

// interrupted: a signal handler already ran in this call (KernelIds::kInterrupted): the operation is tried without
// waiting, and where it would have to wait the call fails with EINTR, as the kernel's check for a pending signal
// before it sleeps.
std::optional<int> dipc_semop(int id, struct sembuf* user_sops, size_t nsops, const struct timespec* user_timeout,
                              bool interrupted = false) {
  // The kernel's order of checks (do_semtimedop): nsops (EINVAL, E2BIG past semopm), the sops (EFAULT), the timeout
  // (EFAULT, EINVAL), then the set. semopm is the home's: a copy that fails is E2BIG only past the node's semopm.
  if (nsops < 1) return fail(EINVAL);
  if (nsops > ipc::kMaxSops) return fail(E2BIG);
  std::vector<struct sembuf> sops(nsops);
  if (!dipc::preload::copy_in(sops.data(), user_sops, nsops * sizeof(struct sembuf)))
    return fail(nsops > dipc::preload::local_semopm() ? E2BIG : EFAULT);
  Wait w;
  if (user_timeout) {
    struct timespec timeout;
    if (!dipc::preload::copy_in(&timeout, user_timeout, sizeof timeout)) return fail(EFAULT);
    if (timeout.tv_sec < 0 || timeout.tv_nsec < 0 || timeout.tv_nsec >= 1'000'000'000L) return fail(EINVAL);
    constexpr int64_t kFar = int64_t{1} << 61;  // beyond any wait
    int64_t ns = timeout.tv_sec >= kFar / 1'000'000'000 ? kFar : timeout.tv_sec * 1'000'000'000 + timeout.tv_nsec;
    w.deadline_ns = dipc::preload::now_ns() + ns;
  }
  ipc::SemOpReq q;
  q.id = id;
  q.sops.reserve(nsops);
  bool may_block = false;
  for (const struct sembuf& op : sops) {
    // Only a decrement or a wait-for-zero can sleep (semop(2)); a call of increments is answered at once, so it
    // sleeps for its answer at once, with no registration to poll for (and, as in the kernel, no EINTR).
    if (op.sem_op <= 0 && !(op.sem_flg & IPC_NOWAIT)) may_block = true;
    q.sops.push_back(ipc::SemBuf{op.sem_num, op.sem_op,
                                 static_cast<int16_t>(interrupted ? op.sem_flg | IPC_NOWAIT : op.sem_flg)});
  }
  if (interrupted && may_block) {
    auto r = daemon_call(ipc::kSemOp, ipc::encode_body(q), {}, [](ByteView b) { return b.empty(); });
    if (!r) return std::nullopt;
    return r->status == EAGAIN ? fail(EINTR) : r->status ? fail(r->status) : 0;
  }
  w.interruptible = may_block;
  if (!may_block) w.deadline_ns = -1;
  auto r = daemon_call(ipc::kSemOp, ipc::encode_body(q), w, [](ByteView b) { return b.empty(); });
  if (!r) return std::nullopt;
  return r->status ? fail(r->status) : 0;
}

// semop/semtimedop on a distributed set (kernel_first). `kernel_call(id)`: the kernel's semop.
template <class KernelCall>
int dipc_semop_call(int semid, struct sembuf* sops, size_t nsops, const struct timespec* timeout,
                    KernelCall kernel_call) {
  return kernel_first(ksem, semid, kernel_call,
                      [&](bool interrupted) { return dipc_semop(semid, sops, nsops, timeout, interrupted); });
}

// nsems of a distributed set, for SETALL. nullopt: the kernel answers; else 0 or -1 with errno.
std::optional<int> dipc_nsems(int id, uint32_t& n) {
  ipc::SemCtlReq q;
  q.id = id;
  q.cmd = ipc::kSemCtlNsems;
  ipc::SemCtlResp resp;
  auto r = daemon_call(ipc::kSemCtl, ipc::encode_body(q), {}, [&](ByteView b) {
    return decodes(b, resp) && resp.ret >= 0 && static_cast<uint32_t>(resp.ret) <= ipc::kMaxSems;
  });
  if (!r) return std::nullopt;
  n = static_cast<uint32_t>(resp.ret);
  return r->status ? fail(r->status) : 0;
}

std::optional<int> dipc_semctl(int id, int semnum, int cmd, semun arg) {
  ipc::SemCtlReq q;
  q.id = id;
  q.semnum = semnum;
  q.cmd = cmd;
  switch (cmd) {
    case SETVAL:
      q.val = arg.val;
      break;
    case IPC_STAT:
    case GETALL:
      break;  // Linux looks the set up (EINVAL, EIDRM, EACCES) before it writes the buffer (EFAULT): see below
    case IPC_SET: {  // read before the lookup
      struct semid_ds ds;
      if (!dipc::preload::copy_in(&ds, arg.buf, sizeof ds)) return fail(EFAULT);
      q.uid = ds.sem_perm.uid;
      q.gid = ds.sem_perm.gid;
      q.mode = static_cast<uint16_t>(ds.sem_perm.mode);
      break;
    }
    case SETALL: {  // read after the lookup (EINVAL, EIDRM first)
      uint32_t n = 0;
      auto st = dipc_nsems(id, n);
      if (!st || *st) return st;
      q.vals.resize(n);
      if (!dipc::preload::copy_in(q.vals.data(), arg.array, n * sizeof(unsigned short))) return fail(EFAULT);
      break;
    }
    default:
      break;
  }
  // Commands that return data need the full body; the others may carry one or not.
  bool needs_body = cmd == IPC_STAT || cmd == GETALL || cmd == GETVAL || cmd == GETPID || cmd == GETNCNT ||
                    cmd == GETZCNT;
  ipc::SemCtlResp resp;
  auto r = daemon_call(ipc::kSemCtl, ipc::encode_body(q), {}, [&](ByteView b) {
    if (b.empty()) return !needs_body;
    return decodes(b, resp) && resp.ret >= 0 && (cmd != GETALL || !resp.vals.empty());
  });
  if (!r) return std::nullopt;
  if (r->status) return fail(r->status);
  switch (cmd) {
    case IPC_STAT: {
      struct semid_ds ds;
      put_stat(ds, resp.stat);
      return dipc::preload::copy_out(arg.buf, &ds, sizeof ds) ? 0 : fail(EFAULT);
    }
    case GETALL:
      return dipc::preload::copy_out(arg.array, resp.vals.data(), resp.vals.size() * sizeof(unsigned short))
                 ? 0
                 : fail(EFAULT);
    case GETVAL:
    case GETPID:
    case GETNCNT:
    case GETZCNT:
      return resp.ret;
    default:
      return 0;
  }
}

// ---- message queues ----

std::optional<int> dipc_msgsnd(int id, const void* msgp, size_t msgsz, int flg) {
  // The kernel's order (ksys_msgsnd, do_msgsnd): mtype read (EFAULT), msgsz past msgmax (EINVAL), mtype < 1
  // (EINVAL), the text read (EFAULT), then the queue. msgmax is the home's: a text that cannot be read is EINVAL
  // only past the node's msgmax.
  long mtype;
  if (!dipc::preload::copy_in(&mtype, msgp, sizeof mtype)) return fail(EFAULT);
  if (static_cast<ssize_t>(msgsz) < 0 || msgsz > ipc::kMaxMsgText) return fail(EINVAL);
  if (mtype < 1) return fail(EINVAL);
  ipc::MsgSndReq q;
  q.id = id;
  q.mtype = mtype;
  q.text.resize(msgsz);
  if (!dipc::preload::copy_in(q.text.data(), static_cast<const uint8_t*>(msgp) + sizeof(long), msgsz))
    return fail(msgsz > dipc::preload::local_msgmax() ? EINVAL : EFAULT);
  q.flg = flg;
  Wait w;
  w.interruptible = !(flg & IPC_NOWAIT);
  auto r = daemon_call(ipc::kMsgSnd, ipc::encode_body(q), w, [](ByteView b) { return b.empty(); });
  if (!r) return std::nullopt;
  return r->status ? fail(r->status) : 0;
}

std::optional<ssize_t> dipc_msgrcv(int id, void* msgp, size_t msgsz, long msgtyp, int flg) {
  if (static_cast<ssize_t>(msgsz) < 0) return fail(EINVAL);
  // MSG_COPY: never waits, never MSG_EXCEPT; checked before the buffer and the queue, as do_msgrcv() does.
  if ((flg & MSG_COPY) && ((flg & MSG_EXCEPT) || !(flg & IPC_NOWAIT))) return fail(EINVAL);
  Wait w;
  w.interruptible = !(flg & IPC_NOWAIT);
  ipc::MsgRcvResp m;
  auto r = daemon_call(ipc::kMsgRcv, ipc::encode_body(ipc::MsgRcvReq{id, msgsz, msgtyp, flg}), w,
                       [&](ByteView b) { return decodes(b, m) && m.mtype >= 1 && m.text.size() <= msgsz; });
  if (!r) return std::nullopt;
  if (r->status) return fail(r->status);
  // As in the kernel, a message that cannot be stored is gone all the same (EFAULT).
  long mtype = static_cast<long>(m.mtype);
  if (!dipc::preload::copy_out(msgp, &mtype, sizeof mtype) ||
      !dipc::preload::copy_out(static_cast<uint8_t*>(msgp) + sizeof(long), m.text.data(), m.text.size()))
    return fail(EFAULT);
  return static_cast<ssize_t>(m.text.size());
}

std::optional<int> dipc_msgctl(int id, int cmd, struct msqid_ds* buf) {
  // IPC_SET's buffer is read before the lookup, IPC_STAT's written after it (EINVAL, EIDRM, EACCES first).
  ipc::MsgCtlReq q;
  q.id = id;
  q.cmd = cmd;
  if (cmd == IPC_SET) {
    struct msqid_ds ds;
    if (!dipc::preload::copy_in(&ds, buf, sizeof ds)) return fail(EFAULT);
    q.uid = ds.msg_perm.uid;
    q.gid = ds.msg_perm.gid;
    q.mode = static_cast<uint16_t>(ds.msg_perm.mode);
    q.qbytes = ds.msg_qbytes;
  }
  ipc::MsgCtlResp resp;
  auto r = daemon_call(ipc::kMsgCtl, ipc::encode_body(q), {},
                       [&](ByteView b) { return b.empty() ? cmd != IPC_STAT : decodes(b, resp); });
  if (!r) return std::nullopt;
  if (r->status) return fail(r->status);
  if (cmd == IPC_STAT) {
    struct msqid_ds ds;
    put_stat(ds, resp.stat);
    if (!dipc::preload::copy_out(buf, &ds, sizeof ds)) return fail(EFAULT);
  }
  return 0;
}

// ---- shared memory (shmat and shmdt: shm.cc) ----

std::optional<int> dipc_shmctl(int id, int cmd, struct shmid_ds* buf) {
  // Linux (ksys_shmctl) reads IPC_SET's buffer before it looks the segment up, but writes IPC_STAT's after: a NULL
  // IPC_STAT buffer is EFAULT only for a segment that exists and may be read (EINVAL, EACCES first).
  switch (cmd) {
    case IPC_SET:
    case IPC_STAT:
    case IPC_RMID:
    case SHM_LOCK:
    case SHM_UNLOCK:
      break;
    default:
      return fail(EINVAL);
  }
  ipc::ShmCtlReq q;
  q.id = id;
  q.cmd = cmd;
  if (cmd == IPC_SET) {
    struct shmid_ds ds;
    if (!dipc::preload::copy_in(&ds, buf, sizeof ds)) return fail(EFAULT);
    q.uid = ds.shm_perm.uid;
    q.gid = ds.shm_perm.gid;
    q.mode = static_cast<uint16_t>(ds.shm_perm.mode);
  }
  ipc::ShmCtlResp resp;
  auto r = daemon_call(ipc::kShmCtl, ipc::encode_body(q), {},
                       [&](ByteView b) { return b.empty() ? cmd != IPC_STAT : decodes(b, resp); });
  if (!r) return std::nullopt;
  if (r->status) return fail(r->status);
  if (cmd == IPC_STAT) {
    struct shmid_ds ds;
    put_stat(ds, resp.stat);
    if (!dipc::preload::copy_out(buf, &ds, sizeof ds)) return fail(EFAULT);
  }
  return 0;
}

}  // namespace

extern "C" {

int semget(key_t key, int nsems, int semflg) {
  return guarded([&] {
    auto r = dipc_get(ipc::kSemGet, key, nsems, semflg);
    return r ? *r : kernel(&Real::semget, key, nsems, semflg);
  });
}

int semtimedop(int semid, struct sembuf* sops, size_t nsops, const struct timespec* timeout) {
  if (!ipc::is_dipc_id(semid)) return kernel(&Real::semtimedop, semid, sops, nsops, timeout);
  return guarded([&] {
    return dipc_semop_call(semid, sops, nsops, timeout, [&](int id) { return kernel(&Real::semtimedop, id, sops, nsops, timeout); });
  });
}

int semop(int semid, struct sembuf* sops, size_t nsops) {
  if (!ipc::is_dipc_id(semid)) return kernel(&Real::semop, semid, sops, nsops);
  return guarded([&] {
    return dipc_semop_call(semid, sops, nsops, nullptr, [&](int id) { return kernel(&Real::semop, id, sops, nsops); });
  });
}

int semctl(int semid, int semnum, int cmd, ...) {
  semun arg{};
  switch (cmd) {  // only these commands pass the fourth argument
    case SETVAL:
    case IPC_STAT:
    case IPC_SET:
    case GETALL:
    case SETALL:
    case IPC_INFO:
    case SEM_INFO:
    case SEM_STAT:
    case SEM_STAT_ANY: {
      va_list ap;
      va_start(ap, cmd);
      arg = va_arg(ap, semun);
      va_end(ap);
      break;
    }
    default:
      break;
  }
  // IPC_INFO, SEM_INFO, SEM_STAT and SEM_STAT_ANY are about the tables: the kernel's and the cluster's.
  auto k = [&] { return kernel(&Real::semctl, semid, semnum, cmd, arg); };
  if (cmd == IPC_INFO || cmd == SEM_INFO)
    return table_info(ipc::ObjType::kSem, k, [&](const ipc::IpcInfoResp& d) {
      if (cmd != SEM_INFO) return;
      arg.info->semusz += static_cast<int>(d.count);
      arg.info->semaem += static_cast<int>(d.a);
      if (d.ns_ino == own_namespace()) {  // the kernel's counts include the sets behind ours
        arg.info->semusz -= static_cast<int>(d.hidden.size());
        arg.info->semaem -= static_cast<int>(d.hidden_a);
      }
    });
  if (cmd == SEM_STAT || cmd == SEM_STAT_ANY) {
    auto k_visible = [&] {
      return visible_stat(ipc::ObjType::kSem, arg.buf, k, [](const semid_ds& ds) { return ds.sem_perm.__key; });
    };
    return table_stat<ipc::SemCtlResp>(ipc::ObjType::kSem, semid, cmd == SEM_STAT_ANY, arg.buf, k_visible);
  }
  if (!ipc::is_dipc_id(semid)) return k();
  return guarded([&] {
    switch (cmd) {
      case GETVAL:
      case GETPID:
      case GETNCNT:
      case GETZCNT:
      case GETALL:
      case SETVAL:
      case SETALL:
        if (int kid = ksem.kernel_id(semid); kid >= 0) {
          int r = kernel(&Real::semctl, kid, semnum, cmd, arg);
          // dipcd made the last change for a process of another node: it knows that process's pid.
          if (cmd == GETPID && r > 0 && r == ksem.daemon_pid.load(std::memory_order_relaxed)) break;
          if (r == 0 && (cmd == SETVAL || cmd == SETALL)) {
            // dipcd forgets the SEM_UNDO adjustments of other nodes' processes, as the kernel did for local ones.
            int saved = errno;
            ipc::SemCtlReq q;
            q.id = semid;
            q.semnum = cmd == SETVAL ? semnum : -1;
            q.cmd = ipc::kSemCtlUndoClear;
            Reply rep;
            dipc::preload::call(ipc::kSemCtl, ipc::encode_body(q), rep, {}, [](ByteView) { return true; });
            errno = saved;
          }
          return r;
        }
        break;
      default:
        break;
    }
    auto r = dipc_semctl(semid, semnum, cmd, arg);
    if (cmd == IPC_RMID && r && *r == 0) ksem.forget(semid);
    return r ? *r : k();
  });
}

int msgget(key_t key, int msgflg) {
  return guarded([&] {
    auto r = dipc_get(ipc::kMsgGet, key, 0, msgflg);
    return r ? *r : kernel(&Real::msgget, key, msgflg);
  });
}

int msgsnd(int msqid, const void* msgp, size_t msgsz, int msgflg) {
  if (!ipc::is_dipc_id(msqid)) return kernel(&Real::msgsnd, msqid, msgp, msgsz, msgflg);
  return guarded([&] {
    return kernel_first(
        kmsg, msqid, [&](int id) { return kernel(&Real::msgsnd, id, msgp, msgsz, msgflg); },
        [&](bool interrupted) -> std::optional<int> {
          if (!interrupted || (msgflg & IPC_NOWAIT)) return dipc_msgsnd(msqid, msgp, msgsz, msgflg);
          // Interrupted before it could sleep: sent if there is room, else EINTR.
          auto r = dipc_msgsnd(msqid, msgp, msgsz, msgflg | IPC_NOWAIT);
          return r && *r < 0 && errno == EAGAIN ? fail(EINTR) : r;
        });
  });
}

ssize_t msgrcv(int msqid, void* msgp, size_t msgsz, long msgtyp, int msgflg) {
  if (!ipc::is_dipc_id(msqid)) return kernel(&Real::msgrcv, msqid, msgp, msgsz, msgtyp, msgflg);
  return guarded([&] {
    return kernel_first(
        kmsg, msqid, [&](int id) { return kernel(&Real::msgrcv, id, msgp, msgsz, msgtyp, msgflg); },
        [&](bool interrupted) -> std::optional<ssize_t> {
          // MSG_COPY never waits (without IPC_NOWAIT it is EINVAL, which must stay so).
          if (!interrupted || (msgflg & (IPC_NOWAIT | MSG_COPY))) return dipc_msgrcv(msqid, msgp, msgsz, msgtyp, msgflg);
          // Interrupted before it could sleep: a message if there is one, else EINTR.
          auto r = dipc_msgrcv(msqid, msgp, msgsz, msgtyp, msgflg | IPC_NOWAIT);
          return r && *r < 0 && errno == ENOMSG ? fail(EINTR) : r;
        });
  });
}

int msgctl(int msqid, int cmd, struct msqid_ds* buf) {
  // IPC_INFO, MSG_INFO, MSG_STAT and MSG_STAT_ANY are about the tables: the kernel's and the cluster's.
  auto k = [&] { return kernel(&Real::msgctl, msqid, cmd, buf); };
  if (cmd == IPC_INFO || cmd == MSG_INFO)
    return table_info(ipc::ObjType::kMsg, k, [&](const ipc::IpcInfoResp& d) {
      if (cmd != MSG_INFO) return;
      auto* info = reinterpret_cast<struct msginfo*>(buf);
      info->msgpool += static_cast<int>(d.count);
      info->msgmap += static_cast<int>(d.a);
      info->msgtql += static_cast<int>(d.b);
      if (d.ns_ino == own_namespace()) {  // the kernel's counts include the queues behind ours
        info->msgpool -= static_cast<int>(d.hidden.size());
        info->msgmap -= static_cast<int>(d.hidden_a);
        info->msgtql -= static_cast<int>(d.hidden_b);
      }
    });
  if (cmd == MSG_STAT || cmd == MSG_STAT_ANY) {
    auto k_visible = [&] {
      return visible_stat(ipc::ObjType::kMsg, buf, k, [](const msqid_ds& ds) { return ds.msg_perm.__key; });
    };
    return table_stat<ipc::MsgCtlResp>(ipc::ObjType::kMsg, msqid, cmd == MSG_STAT_ANY, buf, k_visible);
  }
  if (!ipc::is_dipc_id(msqid)) return k();
  return guarded([&] {
    auto r = dipc_msgctl(msqid, cmd, buf);
    if (cmd == IPC_RMID && r && *r == 0) kmsg.forget(msqid);
    return r ? *r : k();
  });
}

int shmget(key_t key, size_t size, int shmflg) {
  return guarded([&] {
    auto r = dipc_get(ipc::kShmGet, key, 0, shmflg, size);
    return r ? *r : kernel(&Real::shmget, key, size, shmflg);
  });
}

void* shmat(int shmid, const void* shmaddr, int shmflg) {
  if (ipc::is_dipc_id(shmid))
    if (auto r = dipc::preload::shm_attach(shmid, shmaddr, shmflg)) return *r;  // never throws
  if (!real().shmat) {
    errno = ENOSYS;
    return reinterpret_cast<void*>(intptr_t{-1});  // shmat's error value
  }
  return real().shmat(shmid, shmaddr, shmflg);
}

int shmdt(const void* shmaddr) {
  if (auto r = dipc::preload::shm_detach(shmaddr)) return *r;  // never throws
  return kernel(&Real::shmdt, shmaddr);
}

int shmctl(int shmid, int cmd, struct shmid_ds* buf) {
  // IPC_INFO, SHM_INFO, SHM_STAT and SHM_STAT_ANY are about the tables: the kernel's and the cluster's.
  auto k = [&] { return kernel(&Real::shmctl, shmid, cmd, buf); };
  if (cmd == IPC_INFO || cmd == SHM_INFO)
    return table_info(ipc::ObjType::kShm, k, [&](const ipc::IpcInfoResp& d) {
      if (cmd != SHM_INFO) return;
      auto* info = reinterpret_cast<struct shm_info*>(buf);
      info->used_ids += static_cast<int>(d.count);
      info->shm_tot += d.a;
    });
  if (cmd == SHM_STAT || cmd == SHM_STAT_ANY)
    return table_stat<ipc::ShmCtlResp>(ipc::ObjType::kShm, shmid, cmd == SHM_STAT_ANY, buf, k);
  if (!ipc::is_dipc_id(shmid)) return k();
  return guarded([&] {
    auto r = dipc_shmctl(shmid, cmd, buf);
    return r ? *r : k();
  });
}

}  // extern "C"
