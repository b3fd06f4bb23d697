// The TCP transport: epoll on the daemon's loop, non-blocking sockets, TCP_NODELAY. One link per pair of nodes: the
// node with the lower id dials, the other accepts; a dropped link is redialled with bounded backoff. One-sided
// operations are served by the peer's progress engine (a kRma request frame and a kRmaReply frame).
#pragma once

#include <cstddef>
#include <memory>

#include "transport/transport.h"

namespace dipc::transport {

// Tuning constants, all in one place.
struct TcpOptions {
  int connect_timeout_ms = 10000;    // operations wait this long for a peer that is not connected yet
  int handshake_timeout_ms = 5000;   // an unauthenticated connection is closed after this
  int reconnect_min_ms = 20;         // redial backoff starts here and doubles ...
  int reconnect_max_ms = 1000;       // ... up to this
  size_t max_out_bytes = 256u << 20; // a peer that does not drain this much queued output is dropped
  size_t max_hello_bytes = 256;      // largest frame accepted before authentication
};

std::unique_ptr<Transport> make_tcp_transport(const Config& cfg, EventLoop& loop, const ClusterKey& key,
                                              const TcpOptions& opt = TcpOptions());

}  // namespace dipc::transport
