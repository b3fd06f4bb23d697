// Identifiers of distributed objects.
//
//   bit 31     0 (ids are non-negative ints, as SysV ids are)
//   bit 30     1 (DIPC_ID_BIT): marks a dipc id; the preload sends calls on such ids to dipcd first
//   bits 22-29 home node id (1..255)
//   bits 13-21 generation: the home daemon's incarnation (5 bits, one per daemon start, kept across restarts in a
//              state file) and a reuse count of the slot (4 bits). An id handed out before the home restarted names
//              no object of the new incarnation (the 32 incarnations before it), and within one incarnation a slot
//              is reused only after every other free slot was (FIFO), so a stale id names nothing for long.
//   bits 0-12  slot on the home node (8192 objects of each type per node)
//
// The kernel's own ids are seq*32768+slot with seq counting creations in the namespace; it reaches bit 30 only
// after 32768 creations. The preload then still works: an id the daemon does not know falls through to the kernel.
#pragma once

#include <cstdint>

#include "dipc/dipc.h"

namespace dipc::ipc {

inline constexpr int32_t kIdBit = DIPC_ID_BIT;
inline constexpr uint32_t kSlotBits = 13;
inline constexpr uint32_t kSlots = 1u << kSlotBits;
inline constexpr uint32_t kGenMask = 0x1ff;
inline constexpr uint32_t kReuseBits = 4;
inline constexpr uint32_t kIncarnationMask = kGenMask >> kReuseBits;  // 5 bits

inline constexpr bool is_dipc_id(int32_t id) { return id > 0 && (id & kIdBit) != 0; }
inline constexpr uint16_t id_node(int32_t id) { return static_cast<uint16_t>((static_cast<uint32_t>(id) >> 22) & 0xff); }
inline constexpr uint32_t id_seq(int32_t id) { return (static_cast<uint32_t>(id) >> kSlotBits) & kGenMask; }
inline constexpr uint32_t id_slot(int32_t id) { return static_cast<uint32_t>(id) & (kSlots - 1); }
inline constexpr uint32_t id_incarnation(int32_t id) { return id_seq(id) >> kReuseBits; }
inline constexpr int32_t make_id(uint16_t node, uint32_t seq, uint32_t slot) {
  return static_cast<int32_t>(static_cast<uint32_t>(kIdBit) | (static_cast<uint32_t>(node & 0xff) << 22) |
                              ((seq & kGenMask) << kSlotBits) | (slot & (kSlots - 1)));
}
// The first generation of a slot in incarnation `inc`, and the next one when the slot is reused.
inline constexpr uint32_t first_gen(uint32_t inc) { return (inc & kIncarnationMask) << kReuseBits; }
inline constexpr uint32_t next_gen(uint32_t gen) {
  return (gen & ~((1u << kReuseBits) - 1)) | ((gen + 1) & ((1u << kReuseBits) - 1));
}

// Object types; keys and ids are separate name spaces per type, as in the kernel.
enum class ObjType : uint8_t { kSem = 1, kMsg = 2, kShm = 3 };

}  // namespace dipc::ipc
