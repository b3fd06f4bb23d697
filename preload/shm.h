// shmat/shmdt of distributed segments: the process maps the node's view of the segment (a memfd from dipcd) and
// hands dipcd a userfaultfd registered on the mapping, so that dipcd resolves its faults (MISSING, and WP for
// writable attaches). The traffic that carries descriptors goes over one connection per process (per credentials),
// kept open while it has attaches: dipcd detaches everything attached through a connection when it closes (exit,
// kill -9, exec). A fork()ed child re-registers the attaches it inherited before fork() returns in it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace dipc::preload {

// shmat on a distributed id. nullopt: the kernel answers (no daemon, or an id the daemon does not know); else the
// address, or (void*)-1 with errno. Never throws.
std::optional<void*> shm_attach(int id, const void* addr, int flg) noexcept;

// shmget of an existing key of a segment homed on this node, answered from dipcd's segment table (ipc/shm_table.h)
// with the kernel's checks: the id, or -EEXIST / -EINVAL. nullopt: dipcd decides (no table, the key is not in it,
// the table changed while read, or ipcperms() refuses: dipcd knows the caller's CAP_IPC_OWNER). Never throws.
std::optional<int> shm_get_local(int key, uint64_t size, int flg) noexcept;

// shmdt. nullopt: `addr` is not the start of a distributed attach (the kernel answers); else 0. Never throws.
std::optional<int> shm_detach(const void* addr) noexcept;

// Whether [p, p + n) lies inside one distributed attach of this process. Never throws.
bool shm_contains(const void* p, size_t n) noexcept;

}  // namespace dipc::preload
