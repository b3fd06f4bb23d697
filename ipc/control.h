// The control page: a small shared page the daemon owns (a memfd) and every client maps read-only, so the preload
// decides "distributed or kernel" for a *get call with a memory read: dipc on/off and the key policy.
#pragma once

#include <atomic>
#include <cstdint>

namespace dipc::ipc {

inline constexpr uint32_t kControlMagic = 0x44435450;  // 'DCTP'
inline constexpr uint32_t kControlMaxRanges = 32;
inline constexpr uint16_t kControlKeepPrivate = 1;

struct ControlPage {
  uint32_t magic;
  uint32_t version;
  std::atomic<uint32_t> enabled;     // 0 after `dipc off`: new *get calls go to the kernel
  std::atomic<uint32_t> distribute;  // common/config.h Distribute
  std::atomic<uint32_t> nranges;
  uint16_t node;
  uint16_t flags;  // kControlKeepPrivate: under "all", IPC_PRIVATE stays on the kernel ([policy] private = false)
  int64_t ranges[kControlMaxRanges][2];

  bool distributes(int32_t key, int flg, int ipc_dipc_flag) const {
    if (!enabled.load(std::memory_order_acquire)) return false;
    if (flg & ipc_dipc_flag) return true;
    uint32_t d = distribute.load(std::memory_order_relaxed);
    if (key == 0) return d == 1 && !(flags & kControlKeepPrivate);  // IPC_PRIVATE: under "all" only
    if (d == 1) return true;
    if (d == 2) {
      uint32_t n = nranges.load(std::memory_order_relaxed);
      for (uint32_t i = 0; i < n && i < kControlMaxRanges; ++i)
        if (key >= ranges[i][0] && key <= ranges[i][1]) return true;
    }
    return false;
  }
};

}  // namespace dipc::ipc
