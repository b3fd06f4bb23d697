// dipc-exec PROG [ARGS...]: runs PROG (typically a statically linked binary, which no LD_PRELOAD library reaches)
// with its SysV system calls carried by this process, which runs under libdipc.so.
//
// The child installs a seccomp filter that sends the twelve SysV system calls to a listener (SECCOMP_RET_USER_NOTIF)
// and execs PROG; this process receives each such call, and for a distributed id (or a *get, or a *_STAT/*_INFO
// table command) makes the call itself through the preload, copying the arguments from and the results to PROG's
// memory (process_vm_readv/writev); any other call continues in the kernel as PROG made it. Blocking calls run on
// a thread each. Exits with PROG's status (128 + signal). dipc-launch --seccomp uses it for static binaries.
//
// Not carried: shmat of a distributed segment (it would have to map memory into PROG): ENOSYS, said on stderr.
// The daemon sees this process's pid (GETPID, sempid, msg_lspid, SEM_UNDO are this process's, which lives as long
// as PROG). A signal that interrupts a call PROG waits in may come after this process made the call.
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "common/fd_passing.h"
#include "dipc/dipc.h"

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
    case SYS_shmat:
      if (!is_dipc_id(i(0))) return false;
      fprintf(stderr, "dipc-exec: shmat of a distributed segment is not supported in a static binary\n");
      return err = ENOSYS, true;
    default:
      return false;  // shmdt: PROG's own mappings, the kernel's
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
  pid_t child = fork();
  if (child < 0) return perror("dipc-exec: fork"), 1;
  if (child == 0) {
    close(sv[0]);
    int fd = install_listener();
    if (fd < 0) {
      perror("dipc-exec: seccomp");
      _exit(127);
    }
    char byte = 0;
    (void)dipc::send_with_fd(sv[1], &byte, 1, fd);
    close(fd);
    close(sv[1]);
    execvp(argv[1], argv + 1);
    perror("dipc-exec: exec");
    _exit(127);
  }
  close(sv[1]);
  int listener = -1;
  char byte;
  (void)dipc::recv_with_fds(sv[0], &byte, 1, 0, [&](int fd) {
    if (listener < 0) listener = fd;
    else close(fd);
  });
  close(sv[0]);
  if (listener >= 0) {
    for (;;) {
      pollfd p{listener, POLLIN, 0};
      if (poll(&p, 1, -1) < 0 && errno == EINTR) continue;
      if (p.revents & (POLLHUP | POLLERR)) break;  // PROG and everything it started under the filter are gone
      seccomp_notif req{};
      if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req) != 0) {
        if (errno == EINTR || errno == ENOENT) continue;
        break;
      }
      bool may_block = false;
      if (!ours(req, may_block))
        answer(listener, req.id, 0, 0, /*cont=*/true);
      else if (may_block)
        std::thread(serve, Call{listener, req}).detach();
      else
        serve(Call{listener, req});
    }
  }
  int st = 0;
  while (waitpid(child, &st, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
