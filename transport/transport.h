// The transport interface: the only way dsm/ and ipc/ reach other nodes.
//
// Two kinds of operation, both designed so an RDMA transport (transport/verbs) slots in with no change above:
//  - two-sided: request/response matched by id, and one-way messages;
//  - one-sided: read, write, fetch-add and compare-swap on memory a peer registered (register_region()). The verbs
//    transport maps them to RDMA READ/WRITE/ATOMIC; the TCP transport lets the peer's progress engine serve them
//    (a read request and a read response; the caller sees one completion), as libfabric's tcp provider does.
//
// Threading: every transport runs on the caller's EventLoop; all callbacks run on that loop's thread, and every
// method must be called on it.
// Ordering: requests, responses, one-way messages and one-sided writes to one peer take effect in the order they
// were issued (a one-sided write lands before a message issued after it is delivered: dsm/ pushes a block and then
// sends the grant that names it; RDMA WRITE followed by SEND on one RC queue pair gives the same guarantee).
// Failure: when a link goes down every outstanding request and one-sided operation to that peer completes with
// ECONNRESET; operations issued while a peer has not connected yet wait for it up to the connect timeout and then
// complete with EHOSTUNREACH. Nodes authenticate each other (common/auth.h) before any frame is delivered upward.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "common/wire.h"

namespace dipc {
class EventLoop;
class ClusterKey;
struct Config;
}  // namespace dipc

namespace dipc::transport {

using NodeId = uint16_t;

// What a peer needs to access a registered region; travels inside protocol messages.
struct RegionDesc {
  NodeId node = 0;     // owner
  uint32_t id = 0;     // owner-local region id
  uint64_t addr = 0;   // owner's virtual address of byte 0 (verbs: the remote address base)
  uint64_t length = 0;
  uint32_t rkey = 0;   // verbs: remote key; tcp: unused (0)

  void encode(Encoder& e) const {
    e.u16(node);
    e.u32(id);
    e.u64(addr);
    e.u64(length);
    e.u32(rkey);
  }
  static bool decode(Decoder& d, RegionDesc& r) {
    r.node = d.u16();
    r.id = d.u32();
    r.addr = d.u64();
    r.length = d.u64();
    r.rkey = d.u32();
    return d.ok();
  }
};

// Identifies a received request so the handler can answer it later (possibly much later: a blocked semop).
struct ReplyToken {
  NodeId peer = 0;
  uint64_t id = 0;
};

// Upcalls from a transport, on the loop thread.
class Handler {
 public:
  virtual ~Handler() = default;
  virtual void on_request(NodeId from, uint16_t op, ByteView body, ReplyToken token) = 0;
  virtual void on_message(NodeId from, uint16_t op, ByteView body) = 0;
  // Link state changes (authenticated and usable / lost).
  virtual void on_peer(NodeId peer, bool up) = 0;
};

// `st` is a transport failure (ECONNRESET, EHOSTUNREACH) or the status the peer replied with.
using ReplyCb = std::function<void(Status st, ByteView body)>;
using RmaCb = std::function<void(Status st)>;
using AtomicCb = std::function<void(Status st, uint64_t old_value)>;

struct Capabilities {
  bool native_rma = false;  // one-sided ops bypass the peer's CPU
  bool atomics = false;     // fetch_add / compare_swap supported
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual const char* name() const = 0;
  virtual Capabilities caps() const = 0;

  // Listens and connects to the configured peers; from now on `h` gets upcalls.
  virtual Status start(Handler* h) = 0;
  // Closes every link; outstanding operations complete with ECONNRESET.
  virtual void stop() = 0;
  virtual bool peer_up(NodeId peer) const = 0;

  // ---- two-sided ----
  virtual Status request(NodeId to, uint16_t op, Bytes body, ReplyCb cb) = 0;
  // Answers a request once. status is an errno the requester's ReplyCb sees as `st` (0: success).
  virtual Status reply(const ReplyToken& token, int status, Bytes body) = 0;
  virtual Status send(NodeId to, uint16_t op, Bytes body) = 0;

  // ---- one-sided ----
  // Registers [addr, addr+len) for remote access. Local buffers of read()/write() must lie in a registered region.
  virtual Result<RegionDesc> register_region(void* addr, size_t len) = 0;
  virtual void deregister_region(uint32_t id) = 0;
  // Copies remote [offset, offset+len) of `remote` into `local` / `local` into it. EINVAL if out of bounds.
  virtual Status read(const RegionDesc& remote, uint64_t offset, void* local, size_t len, RmaCb cb) = 0;
  virtual Status write(const RegionDesc& remote, uint64_t offset, const void* local, size_t len, RmaCb cb) = 0;
  // 8-byte aligned 64-bit atomics on remote memory. They act on the TARGET's native-order uint64_t, as an RDMA
  // ATOMIC does (the responder's byte order): `add`, `expected`, `desired` and the returned old value are that
  // native value, so between nodes of different byte order (x86-64 and s390x) a caller must know the target's
  // order. No cross-node protocol of dipc uses them today (dsm/ and ipc/ use two-sided messages with big-endian
  // bodies and one-sided read/write of opaque pages); a future user must keep the word in one byte order itself.
  virtual Status fetch_add(const RegionDesc& remote, uint64_t offset, uint64_t add, AtomicCb cb) = 0;
  virtual Status compare_swap(const RegionDesc& remote, uint64_t offset, uint64_t expected, uint64_t desired,
                              AtomicCb cb) = 0;
};

// Builds the transport the configuration asks for ("tcp", "verbs", or "auto": verbs when a device is usable, else
// tcp). Errors: ENODEV when "verbs" is asked for and no RDMA device is usable.
Result<std::unique_ptr<Transport>> make_transport(const Config& cfg, EventLoop& loop, const ClusterKey& key);

}  // namespace dipc::transport
