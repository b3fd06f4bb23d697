// The shared memory segments homed on this node, published by dipcd to its programs in the control memfd (after the
// control page, read-only for them, sealed like it), so that shmget of an existing key is answered in the program
// without a round trip to dipcd (docs/ARCHITECTURE.md, "shmget from the segment table").
//
// Only segments homed here are listed, with a key (not IPC_PRIVATE) and not removed: the home applies every
// create, IPC_SET and IPC_RMID itself, so it rewrites the table before it answers the call that changed it, and
// anything causally after that call reads the new table. The table is rewritten whole under a sequence lock
// (`seq`, odd while dipcd writes); a reader that sees it change, or odd, asks dipcd instead. A key that is not in
// the table is asked of dipcd too (absent, or more segments than slots): the table only ever answers for a segment
// that exists.
//
// Big-endian like the control page (ipc/control.h), so programs of either byte order read it. Open addressing by
// key (linear probing); a slot with id 0 ends a probe.
#pragma once

#include <endian.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace dipc::ipc {

inline constexpr uint32_t kShmTableMagic = 0x44535442;  // 'DSTB'
inline constexpr uint32_t kShmTableSlots = 1024;

// One segment, as shmget of its key checks it (ipcget_public: EEXIST, shm_more_checks, ipcperms).
struct ShmTableRow {
  int32_t key = 0;
  int32_t id = 0;
  uint32_t mode = 0;  // permission bits
  uint32_t uid = 0, gid = 0, cuid = 0, cgid = 0;
  uint64_t size = 0;  // shm_segsz
  uint32_t flags = 0;  // kShmRowShared
  bool same(const ShmTableRow& o) const {
    return key == o.key && id == o.id && mode == o.mode && uid == o.uid && gid == o.gid && cuid == o.cuid &&
           cgid == o.cgid && size == o.size && flags == o.flags;
  }
};
// Some block of the segment has been held in this node's view without being writable here (read-only here, because
// another node or a local reader holds a copy), so a mapping dipcd does not know of yet could write where it must
// not: a program's one-way attach is confirmed by a round trip (docs/ARCHITECTURE.md, "One-way shmat"). Set before
// the first such block, with a full fence and a drain of the notes after it; never cleared while the segment lives.
inline constexpr uint32_t kShmRowShared = 1;

struct ShmTable {
  struct Slot {
    std::atomic<uint32_t> key_be, id_be, mode_be, uid_be, gid_be, cuid_be, cgid_be, size_hi_be, size_lo_be, flags_be;
  };
  uint32_t magic_be;
  std::atomic<uint32_t> seq_be;  // sequence lock: odd while dipcd rewrites the table
  std::atomic<uint32_t> count_be;
  uint32_t slots_be;
  Slot slots[kShmTableSlots];

  static uint32_t home_slot(int32_t key) { return (static_cast<uint32_t>(key) * 2654435761u) % kShmTableSlots; }

  // ---- the daemon (one writer: its loop thread) ----
  void init() {
    magic_be = htobe32(kShmTableMagic);
    slots_be = htobe32(kShmTableSlots);
  }
  // Replaces the whole table with `rows` (those beyond the slots are left out: their shmget asks dipcd).
  template <typename Rows>
  void publish(const Rows& rows) {
    auto rel = std::memory_order_relaxed;
    uint32_t s = be32toh(seq_be.load(rel)) | 1u;
    seq_be.store(htobe32(s), rel);  // odd: readers give up
    std::atomic_thread_fence(std::memory_order_release);
    for (Slot& x : slots) x.id_be.store(0, rel);
    uint32_t n = 0;
    for (const ShmTableRow& r : rows) {
      if (n == kShmTableSlots - 1) break;  // one slot stays free: every probe ends
      uint32_t i = home_slot(r.key);
      while (slots[i].id_be.load(rel) != 0) i = (i + 1) % kShmTableSlots;
      Slot& x = slots[i];
      x.key_be.store(htobe32(static_cast<uint32_t>(r.key)), rel);
      x.mode_be.store(htobe32(r.mode), rel);
      x.uid_be.store(htobe32(r.uid), rel);
      x.gid_be.store(htobe32(r.gid), rel);
      x.cuid_be.store(htobe32(r.cuid), rel);
      x.cgid_be.store(htobe32(r.cgid), rel);
      x.size_hi_be.store(htobe32(static_cast<uint32_t>(r.size >> 32)), rel);
      x.size_lo_be.store(htobe32(static_cast<uint32_t>(r.size)), rel);
      x.flags_be.store(htobe32(r.flags), rel);
      x.id_be.store(htobe32(static_cast<uint32_t>(r.id)), rel);
      ++n;
    }
    count_be.store(htobe32(n), rel);
    seq_be.store(htobe32(s + 1), std::memory_order_release);
  }

  // ---- readers (programs) ----
  bool valid() const { return be32toh(magic_be) == kShmTableMagic && be32toh(slots_be) == kShmTableSlots; }
  // The segment of `key`: 1 found (in *out), 0 absent, -1 undecided (the table changed while read).
  int find(int32_t key, ShmTableRow* out) const {
    auto rel = std::memory_order_relaxed;
    uint32_t s1 = be32toh(seq_be.load(std::memory_order_acquire));
    if (s1 & 1u) return -1;
    int found = 0;
    for (uint32_t i = home_slot(key), k = 0; k < kShmTableSlots; i = (i + 1) % kShmTableSlots, ++k) {
      const Slot& x = slots[i];
      uint32_t id = be32toh(x.id_be.load(rel));
      if (id == 0) break;
      if (static_cast<int32_t>(be32toh(x.key_be.load(rel))) != key) continue;
      out->key = key;
      out->id = static_cast<int32_t>(id);
      out->mode = be32toh(x.mode_be.load(rel));
      out->uid = be32toh(x.uid_be.load(rel));
      out->gid = be32toh(x.gid_be.load(rel));
      out->cuid = be32toh(x.cuid_be.load(rel));
      out->cgid = be32toh(x.cgid_be.load(rel));
      out->size = (uint64_t{be32toh(x.size_hi_be.load(rel))} << 32) | be32toh(x.size_lo_be.load(rel));
      out->flags = be32toh(x.flags_be.load(rel));
      found = 1;
      break;
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    return be32toh(seq_be.load(rel)) == s1 ? found : -1;
  }
};

static_assert(sizeof(std::atomic<uint32_t>) == 4 && std::atomic<uint32_t>::is_always_lock_free);
static_assert(sizeof(ShmTable::Slot) == 40 && offsetof(ShmTable, slots) == 16);

}  // namespace dipc::ipc
