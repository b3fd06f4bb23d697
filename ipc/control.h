// The control page: a small shared page the daemon owns (a memfd) and every client maps read-only, so the preload
// decides "distributed or kernel" for a *get call with a memory read: dipc on/off and the key policy.
//
// One fixed layout in one byte order, big-endian like every dipc structure on the wire (common/wire.h), so a
// program of either byte order reads it: an s390x binary under qemu-user on an x86-64 node, an i386 program beside
// a 64-bit daemon. Fields are read and written through the accessors only. check() tells a page of another
// version or byte order (an old daemon's) from a good one; the preload treats such a page as an error, never as
// "no daemon" (which would send distributed keys to the local kernel).
#pragma once

#include <endian.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace dipc::ipc {

inline constexpr uint32_t kControlMagic = 0x44435450;  // 'DCTP', stored big-endian
inline constexpr uint32_t kControlVersion = 2;          // 1: host byte order (before the fixed layout)
inline constexpr uint32_t kControlMaxRanges = 32;
inline constexpr uint16_t kControlKeepPrivate = 1;

enum class ControlCheck { kOk, kBadMagic, kOtherByteOrder, kOtherVersion };

struct ControlPage {
  // All big-endian. Offsets are the same on 32- and 64-bit hosts (8-byte ranges start at offset 24).
  uint32_t magic_be;
  uint32_t version_be;
  std::atomic<uint32_t> enabled_be;     // 0 after `dipc off`: new *get calls go to the kernel
  std::atomic<uint32_t> distribute_be;  // common/config.h Distribute
  std::atomic<uint32_t> nranges_be;
  uint16_t node_be;
  uint16_t flags_be;  // kControlKeepPrivate: under "all", IPC_PRIVATE stays on the kernel ([policy] private = false)
  int64_t ranges_be[kControlMaxRanges][2];
  uint32_t shm_table_off_be;  // offset of the segment table (ipc/shm_table.h) in the memfd; 0: none (older daemon)
  uint32_t pad_be;

  // ---- the daemon ----
  void init(uint16_t node) {
    magic_be = htobe32(kControlMagic);
    version_be = htobe32(kControlVersion);
    node_be = htobe16(node);
    flags_be = 0;
    shm_table_off_be = 0;
  }
  void set_shm_table_off(uint32_t off) { shm_table_off_be = htobe32(off); }
  void set_enabled(bool on) { enabled_be.store(htobe32(on ? 1 : 0), std::memory_order_release); }
  void set_distribute(uint32_t d) { distribute_be.store(htobe32(d), std::memory_order_relaxed); }
  void set_range(uint32_t i, int64_t lo, int64_t hi) {
    ranges_be[i][0] = static_cast<int64_t>(htobe64(static_cast<uint64_t>(lo)));
    ranges_be[i][1] = static_cast<int64_t>(htobe64(static_cast<uint64_t>(hi)));
  }
  void set_flags(uint16_t f) { flags_be = htobe16(f); }
  void set_nranges(uint32_t n) { nranges_be.store(htobe32(n), std::memory_order_release); }

  // ---- readers ----
  ControlCheck check() const {
    uint32_t m = be32toh(magic_be);
    if (m == __builtin_bswap32(kControlMagic)) return ControlCheck::kOtherByteOrder;
    if (m != kControlMagic) return ControlCheck::kBadMagic;
    return be32toh(version_be) == kControlVersion ? ControlCheck::kOk : ControlCheck::kOtherVersion;
  }
  bool enabled() const { return be32toh(enabled_be.load(std::memory_order_acquire)) != 0; }
  uint32_t distribute() const { return be32toh(distribute_be.load(std::memory_order_relaxed)); }
  uint32_t nranges() const { return be32toh(nranges_be.load(std::memory_order_acquire)); }
  uint16_t node() const { return be16toh(node_be); }
  uint16_t flags() const { return be16toh(flags_be); }
  uint32_t shm_table_off() const { return be32toh(shm_table_off_be); }
  int64_t range_lo(uint32_t i) const { return static_cast<int64_t>(be64toh(static_cast<uint64_t>(ranges_be[i][0]))); }
  int64_t range_hi(uint32_t i) const { return static_cast<int64_t>(be64toh(static_cast<uint64_t>(ranges_be[i][1]))); }

  bool distributes(int32_t key, int flg, int ipc_dipc_flag) const {
    if (!enabled()) return false;
    if (flg & ipc_dipc_flag) return true;
    uint32_t d = distribute();
    if (key == 0) return d == 1 && !(flags() & kControlKeepPrivate);  // IPC_PRIVATE: under "all" only
    if (d == 1) return true;
    if (d == 2) {
      uint32_t n = nranges();
      for (uint32_t i = 0; i < n && i < kControlMaxRanges; ++i)
        if (key >= range_lo(i) && key <= range_hi(i)) return true;
    }
    return false;
  }
};

// The layout is part of the interface between a daemon and programs of any architecture on its node.
static_assert(sizeof(std::atomic<uint32_t>) == 4);
static_assert(offsetof(ControlPage, ranges_be) == 24 && sizeof(ControlPage) == 24 + kControlMaxRanges * 16 + 8);
// The segment table follows the control page at this offset in the same memfd.
inline constexpr uint32_t kShmTableOffset = 1024;
static_assert(sizeof(ControlPage) <= kShmTableOffset);

}  // namespace dipc::ipc
