// The verbs transport: libibverbs + librdmacm, one reliable-connected queue pair per peer, connected with rdma_cm to
// the peer's [[node]] address and port (RoCE: the GID is chosen from the address; InfiniBand: IPoIB addresses). The
// node with the lower id dials, like tcp; a lost link is redialled with bounded back-off. Links authenticate with the
// cluster key (verbs_wire.h) before anything else flows.
//
// Two-sided: SEND/RECV into pre-posted receive buffers with credit-based flow control (a sender never posts more
// SENDs than the receiver has buffers for, so no RNR retries), small messages inline. One-sided: RDMA READ/WRITE
// between registered regions, ATOMIC fetch-add and compare-swap. Everything issued to a peer leaves in issue order
// from one queue onto the one queue pair, so a WRITE lands before a SEND issued after it (RC ordering).
// Completions: one completion channel whose fd is on the EventLoop; each link has its own CQ on it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "transport/transport.h"

namespace dipc {
class EventLoop;
class ClusterKey;
struct Config;
}  // namespace dipc

namespace dipc::transport {

struct VerbsOptions {
  int64_t connect_timeout_ms = 10000;   // operations wait this long for a peer that is down, then EHOSTUNREACH
  int64_t handshake_timeout_ms = 5000;  // address/route resolution + connect + authentication
  int64_t reconnect_min_ms = 50;        // redial back-off starts here and doubles ...
  int64_t reconnect_max_ms = 2000;      // ... up to this
  uint32_t credits = 32;                // receive buffers per link for data messages (the peer's send credits)
  uint32_t buffer_size = 8192;          // bytes per receive/send buffer; longer messages are fragmented
  size_t max_queued_bytes = 64u << 20;  // per peer: operations beyond this return kNoResources
  int64_t heartbeat_ms = 1000;          // a link that sent no message for this long sends a credit-only one ...
  int64_t dead_peer_ms = 5000;          // ... so a link that brings no message for this long is lost (closed): a
                                        // cut link, a dead or hung peer. 0: rely on the RC retry timeout only
  int max_unauthenticated = 16;         // connection requests still in the handshake; more are rejected
  // On-Demand Paging for the DSM's regions (`odp = "off"|"on"`; the environment variable DIPC_VERBS_ODP overrides
  // the file): with ODP the MR follows the mapping, so nothing is pinned and the DSM may release frames
  // (Capabilities::pins_memory false). on: when the device supports it for RC SEND, READ, WRITE (and ATOMIC where
  // used) and a probe registration works, else ENOTSUP at start; off (the default): pinned chunks. Not "auto": the
  // one ODP device tested (Soft-RoCE, Linux 7.3.4) advertises it and loses data (docs/ARCHITECTURE.md).
  enum class Odp : uint8_t { kOff, kOn } odp = Odp::kOff;
};

// Reads [transport.verbs] (keys: the fields above, e.g. `credits = 64`); EINVAL with `error` naming a bad setting.
Status parse_verbs_options(const Config& cfg, VerbsOptions& opt, std::string* error);

// What `dipc status` shows for a verbs link.
struct VerbsDeviceInfo {
  std::string device;  // e.g. "rxe0", "mlx5_0"
  int port = 0;
  int gid_index = -1;
  int mtu = 0;         // active path MTU in bytes
  int numa_node = -1;  // of the device (-1: unknown)
  bool odp = false;    // the DSM's regions are registered with On-Demand Paging (nothing pinned)
};

// Is there an RDMA device with an active port behind `address` (a local address)? Fills `info` when there is.
bool verbs_usable(const std::string& address, VerbsDeviceInfo* info = nullptr);
// The first IPv4 address of this machine (127.0.0.1 aside) with an active RDMA port behind it; "" when none.
std::string verbs_local_address();

// Errors: ENODEV when no RDMA device is bound to this node's address or its port is not active.
Result<std::unique_ptr<Transport>> make_verbs_transport(const Config& cfg, EventLoop& loop, const ClusterKey& key,
                                                        const VerbsOptions& opt = VerbsOptions());

// Test hook (the conformance suite's tamper test): the next message with a payload that `t` sends on an
// authenticated link gets one payload byte flipped after it was sealed, as a man in the middle on the fabric would
// alter it. False when `t` is not a verbs transport.
bool verbs_test_corrupt_next_send(Transport& t);
// Test hook (the conformance suite's disconnect race): while `on`, completions stay in `t`'s CQs (the event loop
// does not poll them), as when the device's completer lags behind rdma_cm's events; a DISCONNECTED event's own wait
// for posted one-sided work still polls. False when `t` is not a verbs transport.
bool verbs_test_hold_completions(Transport& t, bool on);

}  // namespace dipc::transport
