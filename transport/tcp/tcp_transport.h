// The TCP transport: epoll on the caller's EventLoop, non-blocking sockets, TCP_NODELAY. One link per pair of nodes:
// the node with the lower id dials, the higher id accepts; a dropped link is redialled with bounded backoff. Links
// authenticate with a mutual challenge-response (FrameKind::kHello, see tcp_wire.h) before any other frame flows.
// One-sided operations are served by the peer's progress engine: kRma request frames answered by kRmaReply frames;
// reads and writes longer than kRmaChunk travel as several frames and complete once.
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

// Tuning constants, all in one place, each settable in the configuration's [transport.tcp] table under the same
// name (parse_tcp_options). Defaults suit a LAN cluster; tests shorten the timeouts.
struct TcpOptions {
  int64_t connect_timeout_ms = 10000;  // an operation waits this long for a peer that is not connected, then
                                       // completes with EHOSTUNREACH
  int64_t handshake_timeout_ms = 3000; // a connection not authenticated after this (TCP connect included) is closed
  int64_t reconnect_min_ms = 50;       // redial backoff starts here and doubles ...
  int64_t reconnect_max_ms = 2000;     // ... up to this
  size_t max_queued_bytes = 64u << 20; // per peer: request()/send()/one-sided ops beyond this get kNoResources;
                                       // replies beyond twice this close the link (the peer does not drain it)
  size_t max_read_per_event = 4u << 20;  // bytes read from one link per wake-up (fairness between links)
  int max_unauthenticated = 64;        // accepted connections from hosts not in the configuration still in the
                                       // handshake; more are refused (configured nodes' hosts do not count here)
  int max_unauthenticated_per_source = 4;  // the same from any one host (times 1 + the configured nodes on it)
  // A peer that stops answering (crashed host, cut cable: no RST ever comes) is declared lost after about this
  // long: TCP keepalive probes an idle link, TCP_USER_TIMEOUT bounds unacknowledged data on a busy one.
  int dead_peer_s = 5;
  // A peer that is alive at the TCP level but does not run (SIGSTOPped, hung: its kernel still acknowledges data
  // and keepalives) is declared lost too: every link carries a heartbeat frame each heartbeat_ms, and a link that
  // brings nothing for dead_peer_s is closed. 0: no heartbeats.
  int64_t heartbeat_ms = 1000;
};

// Reads [transport.tcp] (common/config.h, SectionReader) over the defaults in `opt`. EINVAL with `error` naming the
// setting when a value is out of range or unknown.
Status parse_tcp_options(const Config& cfg, TcpOptions& opt, std::string* error);

std::unique_ptr<Transport> make_tcp_transport(const Config& cfg, EventLoop& loop, const ClusterKey& key,
                                              const TcpOptions& opt = TcpOptions());

// Test hook (the conformance suite's "deregister with operations in flight"): while `on`, replies to one-sided
// operations that arrive on `t`'s links are parked instead of applied, so an operation stays in flight as long as a
// test needs; turning it off applies the parked replies in arrival order from the loop (those of a link closed
// meanwhile are dropped: their operations already failed). False when `t` is not a tcp transport.
bool tcp_test_hold_rma_replies(Transport& t, bool on);

}  // namespace dipc::transport
