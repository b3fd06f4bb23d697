// The loopback provider: several nodes in one process, on one EventLoop, with no sockets (eRPC's fake transport,
// Seastar's loopback socket). It implements transport/transport.h in full, so dsm/ and ipc/ run over it in unit
// tests, and it injects the faults a real fabric has: a link cut and restored, delivery delay, reordering of
// one-sided operations where the interface allows it (not across write_notify or fence), failed registrations,
// and "no resources" (a small per-peer queue, or a paused link that stops draining).
//
// Delivery: each node's operations to one peer go through that link's FIFO and take effect at the target on a later
// loop iteration (after the injected delay), in issue order unless reordering is on. One-sided operations touch
// the target's registered memory directly (native RMA: no handler runs at the target). There is no
// authentication: every node is in this process.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "transport/transport.h"

namespace dipc {
class EventLoop;
}

namespace dipc::transport {

struct LoopbackOptions {
  bool pins_memory = false;  // Capabilities::pins_memory, so dsm's chunked registration can be tested
  bool native_rma = true;    // Capabilities::native_rma (false: dsm pushes a run as one message, as over tcp)
  bool atomics = true;
  size_t max_message = 4u << 20;
  size_t max_outstanding = 1024;       // per peer: operations queued on a link; beyond it, kNoResources
  int64_t connect_timeout_ms = 10000;  // operations to a peer that is down fail with EHOSTUNREACH after this
};

class LoopbackTransport;

class LoopbackFabric {
 public:
  LoopbackFabric(EventLoop& loop, std::vector<NodeId> nodes, LoopbackOptions opt = LoopbackOptions());
  ~LoopbackFabric();
  LoopbackFabric(const LoopbackFabric&) = delete;
  LoopbackFabric& operator=(const LoopbackFabric&) = delete;

  // A transport for node `self` (one of the fabric's nodes). A second one for the same node, started after the
  // first stopped, is that node restarted: its peers see the link go down and up again, old keys stop working.
  std::unique_ptr<Transport> make(NodeId self);

  // ---- fault injection ----
  // Cuts / restores the link between a and b: outstanding operations fail with ECONNRESET, both sides see
  // on_peer(false); operations issued while cut wait up to connect_timeout_ms for the link to come back.
  void set_link(NodeId a, NodeId b, bool up);
  // Every delivery happens at least this long after its operation was issued.
  void set_delay_us(int64_t us) { delay_us_ = us; }
  // One-sided operations on a link may take effect out of issue order (adjacent pairs swapped), except across a
  // fence() or a write_notify(): a provider may do this, so upper layers must not rely on more.
  void set_reorder(bool on) { reorder_ = on; }
  // The next `n` register_region() calls fail with ENOMEM (a memlock limit, a device out of keys).
  void fail_registrations(int n) { fail_regs_ = n; }
  // Stops delivering from a to b (operations pile up until resumed): with a small max_outstanding, the way to
  // reach "no resources"; also keeps operations in flight for deregistration tests.
  void pause(NodeId from, NodeId to, bool paused);
  void set_max_outstanding(size_t n) { opt_.max_outstanding = n; }

  const LoopbackOptions& options() const { return opt_; }
  EventLoop& loop() { return loop_; }

 private:
  friend class LoopbackTransport;
  bool link_up(NodeId a, NodeId b) const;
  LoopbackTransport* node(NodeId id) const;
  void attach(LoopbackTransport* t);
  void detach(LoopbackTransport* t);

  EventLoop& loop_;
  std::vector<NodeId> nodes_;
  LoopbackOptions opt_;
  std::map<NodeId, LoopbackTransport*> started_;
  std::map<std::pair<NodeId, NodeId>, bool> cut_;     // (lower, higher) -> cut
  std::map<std::pair<NodeId, NodeId>, bool> paused_;  // (from, to) -> paused
  int64_t delay_us_ = 0;
  bool reorder_ = false;
  int fail_regs_ = 0;
  uint32_t next_incarnation_ = 1;
};

}  // namespace dipc::transport
