// The per-peer transport: `transport = "auto"`. One Transport above (dsm/ and ipc/ see nothing else) over two
// providers below: a fast one (verbs, when this node has a usable RDMA device) and the fallback (tcp) every node
// runs. Each link uses exactly one of them, chosen the same way at both ends:
//
//   a link uses the fast provider when BOTH nodes have one, else the fallback.
//
// A node learns its peer's capability from a hello (op ops::kMulti) the composite sends over the fallback as soon as
// the fallback link is up (authenticated like every tcp frame); the hello is resent whenever that link comes back,
// so a peer restarted with or without RDMA is re-decided. Until a peer's capability is known, operations to it wait
// in order (up to `decide_timeout_ms`, then EHOSTUNREACH, as for a peer that is down); a node without a fast
// provider decides at once (every link is tcp). The peer is "up" (peer_up, on_peer) when the chosen provider's
// link is up. What arrives over either provider is delivered; replies go back over the provider the request came
// on. Registered regions are registered with both providers; a remote key packs both providers' keys.
//
// Capabilities are the weakest of the two (pins_memory: either), so dsm/ never asks a link for more than tcp
// offers; tcp emulates the one-sided operations (transport.h), so every operation works on every link.
#pragma once

#include <memory>
#include <vector>

#include "transport/transport.h"

namespace dipc {
class EventLoop;
}

namespace dipc::transport {

// `fast` may be null (this node has no RDMA device: every link is tcp, but the hello still tells peers so).
// `peers`: every other node of the cluster.
std::unique_ptr<Transport> make_multi_transport(EventLoop& loop, std::vector<NodeId> peers, std::unique_ptr<Transport> fast,
                                                std::unique_ptr<Transport> fallback, int64_t decide_timeout_ms);

}  // namespace dipc::transport
