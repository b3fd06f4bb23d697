// dipc-exec PROG [ARGS...]: runs PROG (typically a statically linked binary, which no LD_PRELOAD library reaches)
// with its SysV system calls carried by this process, which runs under libdipc.so.
//
// The child installs a seccomp filter that sends the twelve SysV system calls to a listener (SECCOMP_RET_USER_NOTIF)
// and execs PROG; this process receives each such call, and for a distributed id (or a *get, or a *_STAT/*_INFO
// table command) makes the call itself through the preload, copying the arguments from and the results to PROG's
// memory (process_vm_readv/writev); any other call continues in the kernel as PROG made it. Blocking calls run on
// a thread each. Exits with PROG's status (128 + signal). dipc-launch --seccomp uses it for static binaries.
//
// shmat/shmdt of a distributed segment (x86-64): this process is PROG's tracer (PTRACE_SEIZE, before exec); the
// preload makes the attach as for its own (dipc_shm_attach_for, preload/shm_target.h) and calls back here to map the
// view into PROG: the view's memfd goes in with SECCOMP_IOCTL_NOTIF_ADDFD, then the calling thread is stopped
// (PTRACE_INTERRUPT, which ends its notification wait) and made to run mmap, userfaultfd, close and, for shmdt,
// munmap (ptrace system call injection at its own `syscall` instruction); the userfaultfd comes here with
// pidfd_getfd; the thread's registers are then restored with the call's result. docs/ARCHITECTURE.md, "dipc-exec".
// Where ptrace is refused (Yama ptrace_scope 3, some containers) or on other architectures, shmat of a distributed
// segment fails with ENOSYS, said on stderr. PROG's children (fork) are not traced: a distributed attach they inherit
// is not kept coherent (README, "Raw system calls and static binaries").
// The daemon sees this process's pid (GETPID, sempid, msg_lspid, SEM_UNDO are this process's, which lives as long
// as PROG). A signal that interrupts a call PROG waits in may come after this process made the call.
#include <dlfcn.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common/fd_passing.h"
#include "dipc/dipc.h"
#include "preload/shm_target.h"

namespace {

constexpr long kSysV[] = {SYS_shmget, SYS_shmat,      SYS_shmdt,  SYS_shmctl, SYS_semget, SYS_semop,
                          SYS_semtimedop, SYS_semctl, SYS_msgget, SYS_msgsnd, SYS_msgrcv, SYS_msgctl};
constexpr size_t kMaxCopy = size_t{1} << 20;  // message text copied at most (the preload's bound)

bool is_dipc_id(long id) { return id > 0 && id <= INT32_MAX && (id & DIPC_ID_BIT) != 0; }

union semun {
  int val;
  struct semid_ds* buf;
  unsigned short* array;
  struct seminfo* info;
};

// ---- the child's side ----

int install_listener() {
  constexpr size_t kN = sizeof kSysV / sizeof kSysV[0];
  std::vector<sock_filter> p;
  p.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
#if defined(__x86_64__)
  p.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0));
#else
  p.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_AARCH64, 1, 0));
#endif
  p.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  p.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
  for (size_t k = 0; k < kN; ++k)
    p.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(kSysV[k]), static_cast<uint8_t>(kN - k), 0));
  p.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  p.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF));
  sock_fprog fp{static_cast<unsigned short>(p.size()), p.data()};
  unsigned flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_SPEC_ALLOW;
  int fd = static_cast<int>(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fp));
  if (fd < 0 && errno == EACCES && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0)
    fd = static_cast<int>(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fp));
  return fd;
}

// ---- the supervisor's side ----

struct Call {
  int listener;
  seccomp_notif req;
};

// PROG's memory.
bool peek(pid_t pid, uint64_t addr, void* out, size_t n) {
  if (n == 0) return true;
  iovec l{out, n}, r{reinterpret_cast<void*>(addr), n};
  return process_vm_readv(pid, &l, 1, &r, 1, 0) == static_cast<ssize_t>(n);
}
bool poke(pid_t pid, uint64_t addr, const void* in, size_t n) {
  if (n == 0) return true;
  iovec l{const_cast<void*>(in), n}, r{reinterpret_cast<void*>(addr), n};
  return process_vm_writev(pid, &l, 1, &r, 1, 0) == static_cast<ssize_t>(n);
}

// A buffer argument: nullptr stays nullptr (the call's own EFAULT order); else a local copy read from PROG if `in`.
template <typename T>
struct Arg {
  T local{};
  uint64_t addr;
  bool ok = true;
  Arg(pid_t pid, uint64_t a, bool in) : addr(a) {
    if (a && in) ok = peek(pid, a, &local, sizeof local);
  }
  T* ptr() { return addr ? &local : nullptr; }
  bool out(pid_t pid) { return !addr || poke(pid, addr, &local, sizeof local); }
};

void answer(int listener, uint64_t id, long val, int err, bool cont = false) {
  seccomp_notif_resp r{};
  r.id = id;
  if (cont) {
    r.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
  } else if (err) {
    r.error = -err;
  } else {
    r.val = val;
  }
  (void)ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &r);
}

// Runs one call; returns false when it should continue in the kernel as PROG made it.
bool carry(const seccomp_notif& q, long& val, int& err) {
  const pid_t pid = static_cast<pid_t>(q.pid);
  const __u64* a = q.data.args;
  auto i = [&](int n) { return static_cast<int>(a[n]); };
  errno = 0;
  val = 0;
  switch (q.data.nr) {
    case SYS_semget: val = semget(static_cast<key_t>(i(0)), i(1), i(2)); break;
    case SYS_msgget: val = msgget(static_cast<key_t>(i(0)), i(1)); break;
    case SYS_shmget: val = shmget(static_cast<key_t>(i(0)), static_cast<size_t>(a[1]), i(2)); break;
    case SYS_semop:
    case SYS_semtimedop: {
      if (!is_dipc_id(i(0))) return false;
      size_t n = static_cast<size_t>(a[2]);
      std::vector<sembuf> sops(n <= 32768 ? n : 0);
      if (!sops.empty() && !peek(pid, a[1], sops.data(), n * sizeof(sembuf))) return err = EFAULT, true;
      // n > 32768 is E2BIG before the array is read: any non-null pointer does.
      sembuf* sp = n == 0 ? nullptr : sops.empty() ? reinterpret_cast<sembuf*>(1) : sops.data();
      if (q.data.nr == SYS_semop) {
        val = semop(i(0), sp, n);
      } else {
        Arg<timespec> t(pid, a[3], true);
        if (!t.ok) return err = EFAULT, true;
        val = semtimedop(i(0), sp, n, t.ptr());
      }
      break;
    }
    case SYS_semctl: {
      int cmd = i(2);
      bool table = cmd == IPC_INFO || cmd == SEM_INFO || cmd == SEM_STAT || cmd == SEM_STAT_ANY;
      if (!table && !is_dipc_id(i(0))) return false;
      semun u{};
      switch (cmd) {
        case IPC_STAT: case SEM_STAT: case SEM_STAT_ANY: case IPC_SET: {
          Arg<semid_ds> b(pid, a[3], cmd == IPC_SET);
          if (!b.ok) return err = EFAULT, true;
          u.buf = b.ptr();
          val = semctl(i(0), i(1), cmd, u);
          if (val >= 0 && cmd != IPC_SET && !b.out(pid)) return err = EFAULT, true;
          break;
        }
        case IPC_INFO: case SEM_INFO: {
          Arg<seminfo> b(pid, a[3], false);
          u.info = b.ptr();
          val = semctl(i(0), i(1), cmd, u);
          if (val >= 0 && !b.out(pid)) return err = EFAULT, true;
          break;
        }
        case GETALL: case SETALL: {
          semid_ds ds{};
          semun s{};
          s.buf = &ds;
          if (semctl(i(0), 0, IPC_STAT, s) < 0) break;  // its errno is the call's
          std::vector<unsigned short> v(ds.sem_nsems);
          size_t bytes = v.size() * sizeof(unsigned short);
          if (cmd == SETALL && a[3] && !peek(pid, a[3], v.data(), bytes)) return err = EFAULT, true;
          u.array = a[3] ? v.data() : nullptr;
          val = semctl(i(0), i(1), cmd, u);
          if (val >= 0 && cmd == GETALL && !poke(pid, a[3], v.data(), bytes)) return err = EFAULT, true;
          break;
        }
        default:
          u.val = static_cast<int>(a[3]);
          val = semctl(i(0), i(1), cmd, u);
      }
      break;
    }
    case SYS_msgsnd: {
      if (!is_dipc_id(i(0))) return false;
      size_t n = static_cast<size_t>(a[2]);
      std::vector<char> m(sizeof(long) + (n <= kMaxCopy ? n : 0));
      if (a[1] && !peek(pid, a[1], m.data(), m.size())) return err = EFAULT, true;
      val = msgsnd(i(0), a[1] ? m.data() : nullptr, n, i(3));
      break;
    }
    case SYS_msgrcv: {
      if (!is_dipc_id(i(0))) return false;
      size_t n = static_cast<size_t>(a[2]);
      // A negative size is the call's EINVAL; a larger one than any message is as good as kMaxCopy.
      size_t take = static_cast<ssize_t>(n) < 0 ? n : std::min(n, kMaxCopy);
      std::vector<char> m(sizeof(long) + std::min(n, kMaxCopy));
      val = msgrcv(i(0), a[1] ? m.data() : nullptr, take, static_cast<long>(a[3]), i(4));
      if (val >= 0 && !poke(pid, a[1], m.data(), sizeof(long) + static_cast<size_t>(val))) return err = EFAULT, true;
      break;
    }
    case SYS_msgctl: {
      int cmd = i(1);
      bool table = cmd == IPC_INFO || cmd == MSG_INFO || cmd == MSG_STAT || cmd == MSG_STAT_ANY;
      if (!table && !is_dipc_id(i(0))) return false;
      if (cmd == IPC_INFO || cmd == MSG_INFO) {
        Arg<msginfo> b(pid, a[2], false);
        val = msgctl(i(0), cmd, reinterpret_cast<msqid_ds*>(b.ptr()));
        if (val >= 0 && !b.out(pid)) return err = EFAULT, true;
      } else {
        Arg<msqid_ds> b(pid, a[2], cmd == IPC_SET);
        if (!b.ok) return err = EFAULT, true;
        val = msgctl(i(0), cmd, b.ptr());
        if (val >= 0 && cmd != IPC_SET && cmd != IPC_RMID && !b.out(pid)) return err = EFAULT, true;
      }
      break;
    }
    case SYS_shmctl: {
      int cmd = i(1);
      bool table = cmd == IPC_INFO || cmd == SHM_INFO || cmd == SHM_STAT || cmd == SHM_STAT_ANY;
      if (!table && !is_dipc_id(i(0))) return false;
      if (cmd == IPC_INFO || cmd == SHM_INFO) {
        Arg<shm_info> b(pid, a[2], false);  // the larger of shminfo and shm_info
        val = shmctl(i(0), cmd, reinterpret_cast<shmid_ds*>(b.ptr()));
        size_t size = cmd == IPC_INFO ? sizeof(shminfo) : sizeof(shm_info);
        if (val >= 0 && a[2] && !poke(pid, a[2], &b.local, size)) return err = EFAULT, true;
      } else {
        Arg<shmid_ds> b(pid, a[2], cmd == IPC_SET);
        if (!b.ok) return err = EFAULT, true;
        val = shmctl(i(0), cmd, b.ptr());
        if (val >= 0 && (cmd == IPC_STAT || cmd == SHM_STAT || cmd == SHM_STAT_ANY) && !b.out(pid))
          return err = EFAULT, true;
      }
      break;
    }
    default:
      return false;  // shmat, shmdt: serve_shm()
  }
  if (val < 0) err = errno ? errno : EIO;
  return true;
}

// Whether a call is ours to carry (a distributed id, a *get, a *_STAT at a distributed index, a *_INFO), and
// whether it may block (it then runs on a thread of its own). Everything else continues in the kernel at once.
constexpr long kStatIndexBase = 32768;  // ipc/protocol.h: distributed objects' *_STAT indices start here
bool ours(const seccomp_notif& q, bool& may_block) {
  const auto* a = q.data.args;
  long id = static_cast<int>(a[0]);
  may_block = false;
  auto table = [&](int cmd, int info, int stat, int stat_any) {
    if (cmd == IPC_INFO || cmd == info) return true;
    if (cmd == stat || cmd == stat_any) return id >= kStatIndexBase;
    return is_dipc_id(id);
  };
  switch (q.data.nr) {
    case SYS_semget: case SYS_msgget: case SYS_shmget: return true;
    case SYS_semop: case SYS_semtimedop: may_block = true; return is_dipc_id(id);
    case SYS_msgsnd: may_block = !(a[3] & IPC_NOWAIT); return is_dipc_id(id);
    case SYS_msgrcv: may_block = !(a[4] & IPC_NOWAIT); return is_dipc_id(id);
    case SYS_semctl:  // SEM_STAT at every index: the preload hides the kernel sets behind distributed ones
      if (static_cast<int>(a[2]) == SEM_STAT || static_cast<int>(a[2]) == SEM_STAT_ANY) return true;
      return table(static_cast<int>(a[2]), SEM_INFO, SEM_STAT, SEM_STAT_ANY);
    case SYS_msgctl:  // MSG_STAT at every index: the same for the kernel queues behind distributed queues
      if (static_cast<int>(a[1]) == MSG_STAT || static_cast<int>(a[1]) == MSG_STAT_ANY) return true;
      return table(static_cast<int>(a[1]), MSG_INFO, MSG_STAT, MSG_STAT_ANY);
    case SYS_shmctl: return table(static_cast<int>(a[1]), SHM_INFO, SHM_STAT, SHM_STAT_ANY);
    case SYS_shmat: return is_dipc_id(id);
    default: return false;
  }
}

void serve(Call c) {
  long val = 0;
  int err = 0;
  bool mine = carry(c.req, val, err);
  answer(c.listener, c.req.id, val, err, !mine);
}

// ---- shmat/shmdt: the main thread is PROG's tracer (ptrace requests are a thread's) ----

pid_t g_child = -1;
[[maybe_unused]] int g_pidfd = -1;       // PROG's (x86-64)
[[maybe_unused]] int g_trace_err = 0;  // why PROG is not traced (0: it is)
bool g_exited = false;
int g_status = 0;  // PROG's wait status once g_exited

void forget_attaches();

// A tracee event outside an injection: everything passes through as if PROG were not traced.
void on_event(pid_t tid, int st) {
  if (WIFEXITED(st) || WIFSIGNALED(st)) {
    if (tid == g_child) g_exited = true, g_status = st;
    return;
  }
  if (!WIFSTOPPED(st)) return;
  int sig = WSTOPSIG(st);
  int event = st >> 16;
  if (event == PTRACE_EVENT_STOP) {  // a group-stop stays one (PTRACE_LISTEN); an interrupt or a new thread runs on
    bool group = sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
    (void)ptrace(group ? PTRACE_LISTEN : PTRACE_CONT, tid, nullptr, nullptr);
  } else if (event != 0 || sig == (SIGTRAP | 0x80)) {
    if (event == PTRACE_EVENT_EXEC) forget_attaches();  // the new image has none of the old one's
    (void)ptrace(PTRACE_CONT, tid, nullptr, nullptr);   // clone, exec, or a syscall stop left by an injection
  } else {
    (void)ptrace(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(static_cast<uintptr_t>(sig)));  // delivered
  }
}

void reap() {
  int st = 0;
  for (pid_t w; (w = waitpid(-1, &st, WNOHANG | __WALL)) > 0;) on_event(w, st);
}

#if defined(__x86_64__)
// One shmat/shmdt being served: the calling thread, stopped once the first system call must run in it.
struct Inject {
  int listener;
  seccomp_notif req;
  pid_t tid;
  bool stopped = false;
  bool dead = false;
  user_regs_struct saved{};
  std::vector<int> signals;  // arrived during the injection: sent again after it
};
Inject* g_cur = nullptr;  // the call the preload's callbacks are for (the main thread's only)

// Waits for the thread's next stop; false when it is gone.
bool wait_tid(Inject& in, int& st) {
  for (;;) {
    pid_t w = waitpid(in.tid, &st, __WALL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 || WIFEXITED(st) || WIFSIGNALED(st)) {
      if (w == g_child && w > 0) g_exited = true, g_status = st;
      in.dead = true;
      return false;
    }
    if (WIFSTOPPED(st) && (st >> 16) == 0 && WSTOPSIG(st) != (SIGTRAP | 0x80))
      in.signals.push_back(WSTOPSIG(st));  // a signal-delivery-stop: delivered after the injection
    return true;
  }
}

// Stops the thread in its interrupted shmat/shmdt (the notification is then gone: the call's result goes back in
// its registers). After PTRACE_INTERRUPT it stops on the way back to user space, its registers those of the call:
// rax -ERESTARTSYS, orig_rax the call's number, rip past its `syscall` instruction.
bool stop(Inject& in) {
  if (in.stopped) return true;
  if (in.dead || ptrace(PTRACE_INTERRUPT, in.tid, nullptr, nullptr) != 0) return errno = ESRCH, false;
  int st = 0;
  if (!wait_tid(in, st)) return errno = ESRCH, false;
  in.stopped = true;
  uint8_t insn[2] = {};
  if (ptrace(PTRACE_GETREGS, in.tid, nullptr, &in.saved) != 0 || !peek(g_child, in.saved.rip - 2, insn, 2) ||
      insn[0] != 0x0f || insn[1] != 0x05 || static_cast<long>(in.saved.orig_rax) != static_cast<long>(in.req.data.nr)) {
    fprintf(stderr, "dipc-exec: thread %d is not in its system call; cannot map into it\n", in.tid);
    return errno = EIO, false;
  }
  return true;
}

// Runs syscall nr(args) in the stopped thread; its return value (-errno on failure).
long inject(Inject& in, long nr, uint64_t a0 = 0, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0, uint64_t a4 = 0,
            uint64_t a5 = 0) {
  if (!stop(in)) return -errno;
  user_regs_struct r = in.saved;
  r.rip = in.saved.rip - 2;
  r.rax = static_cast<uint64_t>(nr);
  r.orig_rax = static_cast<uint64_t>(-1);  // no restart of the interrupted call on the way out of this stop
  r.rdi = a0, r.rsi = a1, r.rdx = a2, r.r10 = a3, r.r8 = a4, r.r9 = a5;
  if (ptrace(PTRACE_SETREGS, in.tid, nullptr, &r) != 0) return -ESRCH;
  for (int syscall_stops = 0; syscall_stops < 2;) {  // its entry, then its exit
    if (ptrace(PTRACE_SYSCALL, in.tid, nullptr, nullptr) != 0) return -ESRCH;
    int st = 0;
    if (!wait_tid(in, st)) return -ESRCH;
    if (WIFSTOPPED(st) && WSTOPSIG(st) == (SIGTRAP | 0x80)) ++syscall_stops;
  }
  if (ptrace(PTRACE_GETREGS, in.tid, nullptr, &r) != 0) return -ESRCH;
  return static_cast<long>(r.rax);
}

// The call returns `ret` in PROG (the thread resumes past its `syscall` instruction).
void finish(Inject& in, long ret) {
  if (in.dead) return;
  user_regs_struct r = in.saved;
  r.rax = static_cast<uint64_t>(ret);
  r.orig_rax = static_cast<uint64_t>(-1);
  (void)ptrace(PTRACE_SETREGS, in.tid, nullptr, &r);
  (void)ptrace(PTRACE_CONT, in.tid, nullptr, nullptr);
  for (int sig : in.signals) (void)syscall(SYS_tgkill, g_child, in.tid, sig);
}

long failed_with(long r) {
  errno = static_cast<int>(-r);
  return -1;
}

void* t_map(void*, void* addr, size_t len, int prot, int flags, int fd) {
  Inject& in = *g_cur;
  if (in.stopped) return errno = EIO, MAP_FAILED;  // the notification is gone: no descriptor can go in any more
  seccomp_notif_addfd add{};
  add.id = in.req.id;
  add.srcfd = static_cast<__u32>(fd);
  add.newfd_flags = O_CLOEXEC;
  int rfd = ioctl(in.listener, SECCOMP_IOCTL_NOTIF_ADDFD, &add);
  if (rfd < 0) return MAP_FAILED;
  long p = inject(in, SYS_mmap, reinterpret_cast<uint64_t>(addr), len, static_cast<uint64_t>(prot),
                  static_cast<uint64_t>(flags), static_cast<uint64_t>(rfd), 0);
  (void)inject(in, SYS_close, static_cast<uint64_t>(rfd));
  if (p < 0 && p > -4096) return failed_with(p), MAP_FAILED;
  // PROG's children are not traced: a fork()ed child must not inherit a mapping nobody keeps coherent for it (its
  // access faults instead; README).
  if (long m = inject(in, SYS_madvise, static_cast<uint64_t>(p), len, MADV_DONTFORK); m != 0) {
    (void)inject(in, SYS_munmap, static_cast<uint64_t>(p), len);
    return failed_with(m < 0 ? m : -EIO), MAP_FAILED;
  }
  return reinterpret_cast<void*>(p);
}

int t_unmap(void*, void* addr, size_t len) {
  if (!g_cur) return 0;  // PROG's memory is gone (exec): nothing to unmap
  long r = inject(*g_cur, SYS_munmap, reinterpret_cast<uint64_t>(addr), len);
  return r < 0 ? static_cast<int>(failed_with(r)) : 0;
}

int t_userfaultfd(void*, int flags) {
  Inject& in = *g_cur;
  long rfd = inject(in, SYS_userfaultfd, static_cast<uint64_t>(flags));
  if (rfd < 0) return static_cast<int>(failed_with(rfd));
  int fd = static_cast<int>(syscall(SYS_pidfd_getfd, g_pidfd, static_cast<int>(rfd), 0));
  int e = errno;
  (void)inject(in, SYS_close, static_cast<uint64_t>(rfd));
  errno = e;
  return fd;
}

// dipcd closed the connection that carries PROG's attaches: nobody keeps them coherent, and they cannot be
// replaced from the watcher thread (not the tracer). PROG must not compute on them: it is killed.
void t_lost(void*, size_t n) {
  fprintf(stderr,
          "dipc-exec: dipcd closed the connection: %zu shared memory attaches of the program are no longer "
          "coherent; killing it\n",
          n);
  kill(g_child, SIGKILL);
}

const dipc_shm_target g_target{nullptr, t_map, t_unmap, t_userfaultfd, t_lost};
std::vector<uint64_t> g_attached;  // PROG's distributed attaches (some may be gone already: SHM_REMAP)
#endif

// PROG exec'd: its attaches went with its memory; dipcd hears of it (shm_nattch) and no later shmdt of the same
// address in the new image is taken for one of them.
void forget_attaches() {
#if defined(__x86_64__)
  auto detach_for = reinterpret_cast<decltype(&dipc_shm_detach_for)>(dlsym(RTLD_DEFAULT, "dipc_shm_detach_for"));
  for (uint64_t a : g_attached)
    if (detach_for) (void)detach_for(&g_target, reinterpret_cast<void*>(a));  // g_cur null: nothing is unmapped
  g_attached.clear();
#endif
}

// shmat of a distributed id, and every shmdt: served here, in the tracer thread. Returns false when the call
// should continue in the kernel (a shmdt of an address this process did not attach, an id dipcd does not know).
bool serve_shm(int listener, const seccomp_notif& q) {
  const __u64* a = q.data.args;
  if (q.data.nr == SYS_shmat && !is_dipc_id(static_cast<int>(a[0]))) return false;
#if defined(__x86_64__)
  static auto attach_for = reinterpret_cast<decltype(&dipc_shm_attach_for)>(dlsym(RTLD_DEFAULT, "dipc_shm_attach_for"));
  static auto detach_for = reinterpret_cast<decltype(&dipc_shm_detach_for)>(dlsym(RTLD_DEFAULT, "dipc_shm_detach_for"));
  // A process PROG started is not traced (only PROG's threads are): its shmdt is the kernel's, its shmat ENOSYS.
  std::string task = "/proc/" + std::to_string(g_child) + "/task/" + std::to_string(q.pid);
  bool prog_thread = access(task.c_str(), F_OK) == 0;
  if (!prog_thread && q.data.nr == SYS_shmdt) return false;
  if (!prog_thread) {
    fprintf(stderr,
            "dipc-exec: shmat of a distributed segment in a process the program started (%d) is not "
            "supported: ENOSYS\n",
            static_cast<int>(q.pid));
    answer(listener, q.id, 0, ENOSYS);
    return true;
  }
  if (g_trace_err == 0 && g_pidfd >= 0 && attach_for && detach_for) {
    Inject in{listener, q, static_cast<pid_t>(q.pid), false, false, {}, {}};
    g_cur = &in;
    long ret;
    if (q.data.nr == SYS_shmat) {
      void* p = attach_for(&g_target, static_cast<int>(a[0]), reinterpret_cast<void*>(a[1]), static_cast<int>(a[2]));
      if (p == MAP_FAILED && errno == ENOTSUP && !in.stopped) return false;
      ret = p == MAP_FAILED ? -errno : reinterpret_cast<long>(p);
      if (p != MAP_FAILED) g_attached.push_back(reinterpret_cast<uint64_t>(p));
    } else {
      int r = detach_for(&g_target, reinterpret_cast<void*>(a[0]));
      if (r < 0 && errno == ENOTSUP && !in.stopped) return false;
      ret = r < 0 ? -errno : 0;
      if (r == 0) std::erase(g_attached, a[0]);
    }
    g_cur = nullptr;
    if (in.stopped)
      finish(in, ret);
    else if (!in.dead)
      answer(listener, q.id, ret, ret < 0 && ret > -4096 ? static_cast<int>(-ret) : 0);
    return true;
  }
#endif
  if (q.data.nr == SYS_shmdt) return false;  // no attach of ours can exist
  static bool told = false;
  if (!told) {
    told = true;
#if defined(__x86_64__)
    fprintf(stderr, "dipc-exec: shmat of a distributed segment needs ptrace of the program, which %s: ENOSYS\n",
            g_trace_err ? strerror(g_trace_err) : "libdipc.so does not offer (run under LD_PRELOAD=libdipc.so)");
#else
    fprintf(stderr,
            "dipc-exec: shmat of a distributed segment in a static binary is supported on x86-64 only: "
            "ENOSYS\n");
#endif
  }
  answer(listener, q.id, 0, ENOSYS);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: dipc-exec PROG [ARGS...]   (under LD_PRELOAD=libdipc.so)\n");
    return 2;
  }
  if (const char* e = getenv("DIPC_SECCOMP_INSTALLED"); e && !strcmp(e, "1")) {
    // The preload's trapping filter (DIPC_SECCOMP=1) is already on this process and would win over the listener.
    fprintf(stderr, "dipc-exec: run without DIPC_SECCOMP=1 (dipc-exec intercepts the system calls itself)\n");
    return 2;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return perror("dipc-exec: socketpair"), 1;
  // PROG's stops and exits come as SIGCHLD, read with a signalfd next to the listener (blocked in every thread).
  sigset_t chld, old_mask;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &chld, &old_mask);
  pid_t child = fork();
  if (child < 0) return perror("dipc-exec: fork"), 1;
  if (child == 0) {
    close(sv[0]);
    pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    int fd = install_listener();
    if (fd < 0) {
      perror("dipc-exec: seccomp");
      _exit(127);
    }
    char byte = 0;
    (void)dipc::send_with_fd(sv[1], &byte, 1, fd);
    close(fd);
    while (read(sv[1], &byte, 1) < 0 && errno == EINTR) {  // the parent traces this process before it execs
    }
    close(sv[1]);
    execvp(argv[1], argv + 1);
    perror("dipc-exec: exec");
    _exit(127);
  }
  g_child = child;
  int listener = -1;
  char byte;
  (void)dipc::recv_with_fds(sv[0], &byte, 1, 0, [&](int fd) {
    if (listener < 0) listener = fd;
    else close(fd);
  });
#if defined(__x86_64__)
  // Its threads are traced too; its children (fork, vfork) are not.
  constexpr uintptr_t kOptions = PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESYSGOOD;
  if (ptrace(PTRACE_SEIZE, child, nullptr, reinterpret_cast<void*>(kOptions)) != 0) g_trace_err = errno;
  g_pidfd = static_cast<int>(syscall(SYS_pidfd_open, child, 0));
#endif
  (void)!write(sv[0], &byte, 1);
  close(sv[0]);
  close(sv[1]);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (listener >= 0) {
    for (;;) {
      pollfd p[2] = {{listener, POLLIN, 0}, {sfd, POLLIN, 0}};
      if (poll(p, sfd >= 0 ? 2 : 1, -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (p[1].revents & POLLIN) {
        signalfd_siginfo si;
        while (read(sfd, &si, sizeof si) > 0) {
        }
        reap();
      }
      if (p[0].revents & (POLLHUP | POLLERR)) break;  // PROG and everything it started under the filter are gone
      if (!(p[0].revents & POLLIN)) continue;
      seccomp_notif req{};
      if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req) != 0) {
        if (errno == EINTR || errno == ENOENT) continue;
        break;
      }
      bool may_block = false;
      if (req.data.nr == SYS_shmat || req.data.nr == SYS_shmdt) {
        if (!serve_shm(listener, req)) answer(listener, req.id, 0, 0, /*cont=*/true);
      } else if (!ours(req, may_block)) {
        answer(listener, req.id, 0, 0, /*cont=*/true);
      } else if (may_block) {
        std::thread(serve, Call{listener, req}).detach();
      } else {
        serve(Call{listener, req});
      }
    }
  }
  // PROG may still run (its filter gone with an exec of a set-uid program...) or be a zombie: its stops still pass.
  while (!g_exited) {
    int st = 0;
    pid_t w = waitpid(-1, &st, __WALL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) break;
    on_event(w, st);
  }
  int st = g_status;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
