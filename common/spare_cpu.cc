#include "common/spare_cpu.h"

#include <fcntl.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace dipc {

namespace {

// The last answer and when it was read (CLOCK_MONOTONIC ns, 0: never). Polls ask every 16 rounds and a program on
// every call: reading /proc/loadavg each time cost 4 system calls and the kernel's formatting of the file (7% of
// dipcd's CPU time in a ping-pong, docs/PERFORMANCE.md "Wake-ups"); the runnable count it reads is itself a sample.
constexpr int64_t kFreshNs = 1'000'000;
std::atomic<int64_t> g_read_at{0};
std::atomic<bool> g_spare{false};

int64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

bool read_spare_cpu() {
  // Opened each time: the preload calls this too, and must not keep a descriptor the program may close or reuse.
  int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[128];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  // "0.52 0.58 0.59 2/187 12345": the fourth field is runnable/total scheduling entities.
  const char* p = buf;
  for (int field = 0; field < 3 && p; ++field) {
    p = strchr(p, ' ');
    if (p) ++p;
  }
  if (!p) return false;
  long running = strtol(p, nullptr, 10);
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return false;
  return running < CPU_COUNT(&set);
}

}  // namespace

bool spare_cpu() {
  int64_t now = mono_ns();
  int64_t at = g_read_at.load(std::memory_order_acquire);
  if (at != 0 && now - at < kFreshNs) return g_spare.load(std::memory_order_relaxed);
  bool spare = read_spare_cpu();
  g_spare.store(spare, std::memory_order_relaxed);
  g_read_at.store(now, std::memory_order_release);
  return spare;
}

}  // namespace dipc
