// The cost of dipc's seccomp path (DIPC_SECCOMP=1, preload/seccomp.h), measured by bench/run_seccomp.sh as ratios of
// runs with and without the filter, interleaved:
//   - a system call that is not SysV (getppid): what every program under the filter pays on every other call;
//   - a SysV call on a kernel object through libc (the preload's wrapper, then the kernel with the marker);
//   - the same call as a raw system call (trapped: SIGSYS, the handler, the wrapper, the kernel);
//   - a call on a distributed semaphore set (homed on this node) through libc and as a raw system call.
// Runs under libdipc.so on a node of a simulated cluster.
#include <benchmark/benchmark.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "dipc/dipc.h"

namespace {

int kernel_set() {
  static int id = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
  return id;
}
int dipc_set() {
  static int id = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600 | IPC_DIPC);
  return id;
}

void BM_Getppid(benchmark::State& st) {
  for (auto _ : st) benchmark::DoNotOptimize(syscall(SYS_getppid));
}
BENCHMARK(BM_Getppid);

void BM_KernelSemLibc(benchmark::State& st) {
  int id = kernel_set();
  for (auto _ : st) benchmark::DoNotOptimize(semctl(id, 0, GETVAL));
}
BENCHMARK(BM_KernelSemLibc);

void BM_KernelSemRaw(benchmark::State& st) {
  int id = kernel_set();
  for (auto _ : st) benchmark::DoNotOptimize(syscall(SYS_semctl, id, 0, GETVAL, 0));
}
BENCHMARK(BM_KernelSemRaw);

void BM_DipcSemLibc(benchmark::State& st) {
  int id = dipc_set();
  if (id < 0) return st.SkipWithError("no dipc semaphore set (no daemon?)");
  for (auto _ : st) benchmark::DoNotOptimize(semctl(id, 0, GETVAL));
}
BENCHMARK(BM_DipcSemLibc);

void BM_DipcSemRaw(benchmark::State& st) {
  int id = dipc_set();
  if (id < 0) return st.SkipWithError("no dipc semaphore set (no daemon?)");
  // Without the filter the kernel answers EINVAL for a dipc id: the baseline is the bare failed system call.
  for (auto _ : st) benchmark::DoNotOptimize(syscall(SYS_semctl, id, 0, GETVAL, 0));
}
BENCHMARK(BM_DipcSemRaw);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (kernel_set() >= 0) semctl(kernel_set(), 0, IPC_RMID);
  if (dipc_set() >= 0) semctl(dipc_set(), 0, IPC_RMID);
  return 0;
}
