// Transport op numbers: the one table. Every layer that talks to other nodes owns one range here and registers its
// handler for it (Transport::set_handler); a new layer gets a new, non-overlapping range in this file, never a number
// taken "by convention". Numbers travel on the wire: never reuse or move a range that shipped.
#pragma once

#include <cstdint>

namespace dipc::transport {

struct OpRange {
  uint16_t first = 0;
  uint16_t last = 0;  // inclusive
  constexpr bool contains(uint16_t op) const { return op >= first && op <= last; }
  constexpr bool overlaps(OpRange o) const { return first <= o.last && o.first <= last; }
};

namespace ops {
inline constexpr OpRange kIpc{1, 119};       // ipc/: forwarded client calls, referee, home (ipc/protocol.h, Op)
inline constexpr OpRange kDsm{120, 129};     // dsm/: coherence messages and frames keys (dsm/segment.h)
inline constexpr OpRange kMulti{130, 130};   // transport/multi: the per-peer transport choice (its hello)
inline constexpr OpRange kTest{1000, 1099};  // conformance tests and transport benches only

static_assert(!kTest.overlaps(kIpc) && !kIpc.overlaps(kDsm) && !kTest.overlaps(kDsm));
static_assert(!kMulti.overlaps(kIpc) && !kMulti.overlaps(kDsm) && !kMulti.overlaps(kTest));
}  // namespace ops

}  // namespace dipc::transport
