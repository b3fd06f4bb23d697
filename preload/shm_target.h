// Attaching a distributed segment into another process: dipc-exec carries the shmat/shmdt of a static program
// (which no LD_PRELOAD library reaches) through the preload loaded into dipc-exec itself, and maps the memory into
// the program by injecting its system calls (tools/exec.cc). The preload does everything else as for its own
// attaches: the round trips with dipcd, the rights, the userfaultfd handshake and registration, shm_nattch.
// libdipc.so exports these two functions (libdipc.map); dipc-exec finds them with dlsym.
#pragma once

#include <stddef.h>
#include <stdint.h>

extern "C" {

// The process an attach lands in, as callbacks on dipc-exec's side. Each returns -1 (MAP_FAILED) with errno.
struct dipc_shm_target {
  void* ctx;
  // Maps `fd` (a descriptor of the caller) into the target as mmap(addr, len, prot, flags, fd, 0) would.
  void* (*map)(void* ctx, void* addr, size_t len, int prot, int flags, int fd);
  int (*unmap)(void* ctx, void* addr, size_t len);
  // userfaultfd(flags) made by the target (its memory), as a descriptor of the caller.
  int (*userfaultfd)(void* ctx, int flags);
  // The target's attaches through a connection dipcd closed are no longer coherent (`n` of them).
  void (*lost)(void* ctx, size_t n);
};

// shmat(id, addr, flg) into `t`: the address in the target, or (void*)-1 with errno; errno ENOTSUP (nothing done)
// when `id` is not a segment dipcd knows (the kernel answers).
void* dipc_shm_attach_for(const dipc_shm_target* t, int id, const void* addr, int flg);

// shmdt(addr) in `t`: 0; -1 with errno ENOTSUP (nothing done) when `addr` is not the start of an attach made with
// dipc_shm_attach_for(t...) (the kernel answers).
int dipc_shm_detach_for(const dipc_shm_target* t, const void* addr);
}
