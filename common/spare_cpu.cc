#include "common/spare_cpu.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace dipc {

bool spare_cpu() {
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

}  // namespace dipc
