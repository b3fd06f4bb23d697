// Private to ipc/service*.cc: small helpers the Service's role files share (not part of the ipc interface).
#pragma once

#include <cstdint>
#include <ctime>

#include "common/status.h"
#include "ipc/protocol.h"

namespace dipc::ipc::service_detail {

inline int64_t now_s() { return static_cast<int64_t>(time(nullptr)); }

// A transport failure reaching a remote object is reported as EIO: no SysV call defines a better errno for an
// unreachable home node (README, "What differs from local SysV IPC").
inline int map_transport(const Status& st) {
  int c = st.code();
  return (c == ECONNRESET || c == EHOSTUNREACH || c == ECONNREFUSED || c == ETIMEDOUT) ? EIO : c;
}

inline Bytes unknown_id() { return Bytes{kUnknownIdMarker}; }
inline bool is_unknown_id(int st, ByteView b) { return st == EINVAL && b.size() == 1 && b[0] == kUnknownIdMarker; }
inline uint16_t token_node(uint64_t token) { return static_cast<uint16_t>(token >> 48); }

}  // namespace dipc::ipc::service_detail
