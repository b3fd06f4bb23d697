// Copies between the program's buffers and the preload's own, so that a bad pointer is EFAULT as in the kernel
// (copy_from_user / copy_to_user), never SIGSEGV in the program: process_vm_readv / process_vm_writev on the process
// itself, which report an unmapped or inaccessible address instead of faulting.
#pragma once

#include <cstddef>

namespace dipc::preload {

// False (nothing or part copied) when [user, user + n) cannot be read / written by the process.
[[nodiscard]] bool copy_in(void* dst, const void* user, size_t n) noexcept;
[[nodiscard]] bool copy_out(void* user, const void* src, size_t n) noexcept;

// Current System V limits of this node's kernel (the home's are the same in a uniformly configured cluster), read
// when asked: only on an error path, to tell EINVAL / E2BIG from EFAULT in the kernel's order of checks.
size_t local_msgmax() noexcept;
size_t local_semopm() noexcept;

}  // namespace dipc::preload
