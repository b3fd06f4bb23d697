// The second interception path: a seccomp filter that traps the System V system calls themselves (SECCOMP_RET_TRAP)
// and a SIGSYS handler that runs them through the preload's wrappers, for programs that make raw system calls
// (syscall(__NR_semtimedop, ...), Go, hand-written assembly) instead of calling libc's wrappers.
//
// Switched on with DIPC_SECCOMP=1 (dipc-launch --seccomp). The preload's own kernel calls carry kKernelMagic in
// the 6th system call argument, which no SysV call uses, and the filter lets exactly those through. The filter is
// inherited by children and across exec: every program started below must have the preload too (LD_PRELOAD is
// inherited), or its SysV system calls kill it with SIGSYS. See README, "Raw system calls".
#pragma once

namespace dipc::preload {

// Marks a SysV system call the preload makes for the kernel to answer (the 6th argument).
inline constexpr long kKernelMagic = 0x44495043'4b524e4cL;  // "DIPCKRNL"

// True once this process runs under the filter (installed here, or inherited and the handler installed).
bool seccomp_active();

// The raw system call, let through by the filter.
long kernel_syscall(long nr, long a1, long a2 = 0, long a3 = 0, long a4 = 0, long a5 = 0);

}  // namespace dipc::preload
