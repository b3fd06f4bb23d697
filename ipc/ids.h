// Identifiers of distributed objects.
//
//   bit 31     0 (ids are non-negative ints, as SysV ids are)
//   bit 30     1 (DIPC_ID_BIT): marks a dipc id; the preload sends calls on such ids to dipcd first
//   bits 22-29 home node id (1..255)
//   bits 15-21 sequence number, bumped each time a slot is reused (stale ids then fail with EINVAL/EIDRM)
//   bits 0-14  slot on the home node (32768 objects of each type per node)
//
// The kernel's own ids are seq*32768+slot with seq counting creations in the namespace; it reaches bit 30 only
// after 32768 creations. The preload then still works: an id the daemon does not know falls through to the kernel.
#pragma once

#include <cstdint>

#include "dipc/dipc.h"

namespace dipc::ipc {

inline constexpr int32_t kIdBit = DIPC_ID_BIT;
inline constexpr uint32_t kSlots = 1u << 15;
inline constexpr uint32_t kSeqMask = 0x7f;

inline constexpr bool is_dipc_id(int32_t id) { return id > 0 && (id & kIdBit) != 0; }
inline constexpr uint16_t id_node(int32_t id) { return static_cast<uint16_t>((static_cast<uint32_t>(id) >> 22) & 0xff); }
inline constexpr uint32_t id_seq(int32_t id) { return (static_cast<uint32_t>(id) >> 15) & kSeqMask; }
inline constexpr uint32_t id_slot(int32_t id) { return static_cast<uint32_t>(id) & (kSlots - 1); }
inline constexpr int32_t make_id(uint16_t node, uint32_t seq, uint32_t slot) {
  return static_cast<int32_t>(static_cast<uint32_t>(kIdBit) | (static_cast<uint32_t>(node & 0xff) << 22) |
                              ((seq & kSeqMask) << 15) | (slot & (kSlots - 1)));
}

// Object types; keys and ids are separate name spaces per type, as in the kernel.
enum class ObjType : uint8_t { kSem = 1, kMsg = 2, kShm = 3 };

}  // namespace dipc::ipc
