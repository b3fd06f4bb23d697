#include "preload/seccomp.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace dipc::preload {

namespace {

bool g_active = false;

// The SysV system calls of this architecture.
constexpr long kSysV[] = {SYS_shmget, SYS_shmat,  SYS_shmdt,  SYS_shmctl, SYS_semget, SYS_semop,
                          SYS_semtimedop, SYS_semctl, SYS_msgget, SYS_msgsnd, SYS_msgrcv, SYS_msgctl};

constexpr long kSysVMin = *std::min_element(std::begin(kSysV), std::end(kSysV));
constexpr long kSysVMax = *std::max_element(std::begin(kSysV), std::end(kSysV));

#if defined(__x86_64__)
constexpr uint32_t kArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr uint32_t kArch = AUDIT_ARCH_AARCH64;
#endif

void warn(const char* msg) {
  ssize_t n = write(STDERR_FILENO, msg, strlen(msg));
  (void)n;
}

#if defined(__x86_64__) || defined(__aarch64__)
// Every system call is allowed, except a SysV one whose 6th argument is not kKernelMagic: that one traps (SIGSYS).
bool install_filter() {
  constexpr size_t kN = sizeof kSysV / sizeof kSysV[0];
  sock_filter prog[15 + kN];
  size_t i = 0;
  auto stmt = [&](uint16_t code, uint32_t k) { prog[i++] = BPF_STMT(code, k); };
  auto jump = [&](uint16_t code, uint32_t k, uint8_t jt, uint8_t jf) { prog[i++] = BPF_JUMP(code, k, jt, jf); };
  const auto magic = static_cast<uint64_t>(kKernelMagic);
  stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch));
  jump(BPF_JMP | BPF_JEQ | BPF_K, kArch, 1, 0);
  stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);  // 2
  stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr));
  // Most system calls are not SysV: outside [lowest, highest] SysV number they are let through after one test.
  jump(BPF_JMP | BPF_JGT | BPF_K, static_cast<uint32_t>(kSysVMax), 0, 1);
  stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  jump(BPF_JMP | BPF_JGE | BPF_K, static_cast<uint32_t>(kSysVMin), 1, 0);
  stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  // One test per SysV number: a match jumps to the argument check after the list, no match falls to ALLOW.
  for (size_t k = 0; k < kN; ++k) jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(kSysV[k]), uint8_t(kN - k), 0);
  stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args) + 5 * 8);  // low half of arg 6 (little-endian)
  jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(magic), 0, 2);
  stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args) + 5 * 8 + 4);
  jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(magic >> 32), 1, 0);
  stmt(BPF_RET | BPF_K, SECCOMP_RET_TRAP);
  stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  sock_fprog fp{static_cast<unsigned short>(i), prog};
  // This filter is no sandbox: SPEC_ALLOW keeps the kernel from turning on its speculative store bypass mitigation
  // for the process, which would slow every instruction of the program down, not only its system calls.
  unsigned flags = SECCOMP_FILTER_FLAG_SPEC_ALLOW;
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fp) == 0) return true;
  if (errno == EINVAL) {  // a kernel older than the flag
    flags = 0;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fp) == 0) return true;
  }
  if (errno != EACCES) return false;
  // Without CAP_SYS_ADMIN the kernel wants no_new_privs: set-uid programs started later gain no privileges.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
  return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &fp) == 0;
}
#else
bool install_filter() {
  errno = ENOSYS;
  return false;
}
#endif

#if defined(__x86_64__)
#define DIPC_ARG(uc, n) (uc)->uc_mcontext.gregs[(int[]){REG_RDI, REG_RSI, REG_RDX, REG_R10, REG_R8, REG_R9}[n]]
#define DIPC_RET(uc) (uc)->uc_mcontext.gregs[REG_RAX]
#elif defined(__aarch64__)
#define DIPC_ARG(uc, n) (uc)->uc_mcontext.regs[n]
#define DIPC_RET(uc) (uc)->uc_mcontext.regs[0]
#endif

#if defined(DIPC_ARG)
// A trapped SysV system call: run it through the exported wrappers (the dipc path, or the kernel with the magic),
// and put the result where the system call returns it (-errno on failure). The program's errno is left alone: its
// syscall() wrapper sets it from the return value.
void on_sigsys(int, siginfo_t* si, void* ctx) {
  auto* uc = static_cast<ucontext_t*>(ctx);
  int saved = errno;
  auto a = [&](int n) { return static_cast<long>(DIPC_ARG(uc, n)); };
  long r;
  errno = 0;
  switch (si->si_syscall) {
    case SYS_semget: r = semget(static_cast<key_t>(a(0)), static_cast<int>(a(1)), static_cast<int>(a(2))); break;
    case SYS_semop: r = semop(static_cast<int>(a(0)), reinterpret_cast<sembuf*>(a(1)), static_cast<size_t>(a(2))); break;
    case SYS_semtimedop:
      r = semtimedop(static_cast<int>(a(0)), reinterpret_cast<sembuf*>(a(1)), static_cast<size_t>(a(2)),
                     reinterpret_cast<const timespec*>(a(3)));
      break;
    case SYS_semctl: r = semctl(static_cast<int>(a(0)), static_cast<int>(a(1)), static_cast<int>(a(2)), a(3)); break;
    case SYS_msgget: r = msgget(static_cast<key_t>(a(0)), static_cast<int>(a(1))); break;
    case SYS_msgsnd:
      r = msgsnd(static_cast<int>(a(0)), reinterpret_cast<const void*>(a(1)), static_cast<size_t>(a(2)),
                 static_cast<int>(a(3)));
      break;
    case SYS_msgrcv:
      r = msgrcv(static_cast<int>(a(0)), reinterpret_cast<void*>(a(1)), static_cast<size_t>(a(2)), a(3),
                 static_cast<int>(a(4)));
      break;
    case SYS_msgctl: r = msgctl(static_cast<int>(a(0)), static_cast<int>(a(1)), reinterpret_cast<msqid_ds*>(a(2))); break;
    case SYS_shmget: r = shmget(static_cast<key_t>(a(0)), static_cast<size_t>(a(1)), static_cast<int>(a(2))); break;
    case SYS_shmat:
      r = reinterpret_cast<long>(shmat(static_cast<int>(a(0)), reinterpret_cast<const void*>(a(1)), static_cast<int>(a(2))));
      break;
    case SYS_shmdt: r = shmdt(reinterpret_cast<const void*>(a(0))); break;
    case SYS_shmctl: r = shmctl(static_cast<int>(a(0)), static_cast<int>(a(1)), reinterpret_cast<shmid_ds*>(a(2))); break;
    default: r = -1; errno = ENOSYS;
  }
  // shmat's error value is (void*)-1 == -1 as well.
  DIPC_RET(uc) = r == -1 && errno ? -errno : r;
  errno = saved;
}
#endif

// Installs the filter and the handler when DIPC_SECCOMP=1, before main() and before anything can fork.
__attribute__((constructor)) void seccomp_init() {
  const char* e = getenv("DIPC_SECCOMP");
  if (!e || strcmp(e, "1") != 0) return;
#if defined(DIPC_ARG)
  struct sigaction sa {};
  sa.sa_sigaction = on_sigsys;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSYS, &sa, nullptr) != 0) return warn("dipc: DIPC_SECCOMP: cannot install the SIGSYS handler\n");
  // An inherited filter (from a parent that had the preload) already traps: the handler is all this process needs.
  if (const char* inh = getenv("DIPC_SECCOMP_INSTALLED"); inh && strcmp(inh, "1") == 0) {
    g_active = true;
    return;
  }
  if (!install_filter()) return warn("dipc: DIPC_SECCOMP: cannot install the seccomp filter; raw SysV system calls "
                                     "go to the kernel\n");
  setenv("DIPC_SECCOMP_INSTALLED", "1", 1);
  g_active = true;
#else
  warn("dipc: DIPC_SECCOMP: not supported on this architecture\n");
#endif
}

}  // namespace

bool seccomp_active() { return g_active; }

long kernel_syscall(long nr, long a1, long a2, long a3, long a4, long a5) {
  return syscall(nr, a1, a2, a3, a4, a5, kKernelMagic);
}

}  // namespace dipc::preload
