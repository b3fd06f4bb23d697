#include "preload/user_memory.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "preload/shm.h"

namespace dipc::preload {

namespace {

bool vm_copy(void* local, void* remote, size_t n, bool write) {
  if (n == 0) return true;
  iovec l{local, n}, r{remote, n};
  int saved = errno;
  ssize_t got = write ? process_vm_writev(getpid(), &l, 1, &r, 1, 0) : process_vm_readv(getpid(), &l, 1, &r, 1, 0);
  bool ok = got == static_cast<ssize_t>(n);
  if (!ok && got < 0 && errno != EFAULT) {
    // Not allowed here (seccomp, or an old kernel): fall back to a plain copy, as before.
    std::memcpy(write ? remote : local, write ? local : remote, n);
    ok = true;
  }
  if (!ok && shm_contains(remote, n)) {
    // A distributed segment's page that a user-mode-only userfaultfd cannot bring in for the kernel: a copy in
    // user mode faults it in through dipcd.
    std::memcpy(write ? remote : local, write ? local : remote, n);
    ok = true;
  }
  errno = saved;
  return ok;
}

size_t read_proc_number(const char* path, int field) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return SIZE_MAX;
  char buf[128];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return SIZE_MAX;
  buf[n] = '\0';
  char* p = buf;
  unsigned long v = 0;
  for (int i = 0; i <= field; ++i) {
    char* end = nullptr;
    v = strtoul(p, &end, 10);
    if (end == p) return SIZE_MAX;
    p = end;
  }
  return v;
}

}  // namespace

bool copy_in(void* dst, const void* user, size_t n) noexcept {
  return vm_copy(dst, const_cast<void*>(user), n, false);
}

bool copy_out(void* user, const void* src, size_t n) noexcept {
  return vm_copy(const_cast<void*>(src), user, n, true);
}

size_t local_msgmax() noexcept {
  int saved = errno;
  size_t v = read_proc_number("/proc/sys/kernel/msgmax", 0);
  errno = saved;
  return v;
}

size_t local_semopm() noexcept {
  int saved = errno;
  size_t v = read_proc_number("/proc/sys/kernel/sem", 2);  // semmsl semmns semopm semmni
  errno = saved;
  return v;
}

}  // namespace dipc::preload
