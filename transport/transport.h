// The transport interface: the only way dsm/ and ipc/ reach other nodes. Providers live in transport/<name>/
// (tcp, verbs, loopback) and are chosen in daemon/ (daemon/transports.h); nothing above transport/ includes one.
//
// Modelled on libfabric's fi_rma (buffer + local descriptor + remote key, -FI_EAGAIN) and UCX's uct (memory domain,
// packed rkeys, fence, UCS_ERR_NO_RESOURCE + pending queue, active-message handlers per id), so RDMA verbs map onto
// it one to one:
//  - two-sided: request/response matched by id (reply() may come much later), and one-way messages, dispatched to
//    the Handler registered for the op's range (transport/ops.h is the one table of ranges);
//  - one-sided: read, write, write_notify, fetch-add and compare-swap on memory a peer registered. Local memory is
//    named by a MemRegion (the handle register_region() returned) plus an offset, remote memory by the peer's
//    packed RemoteKey plus an offset: no address lookup per operation. verbs: RDMA READ/WRITE/WRITE_WITH_IMM/ATOMIC
//    with the region's lkey and the key's rkey + address; tcp: the peer's progress engine serves a request frame
//    (the caller sees one completion), as libfabric's tcp provider does.
//
// THREADING. A transport runs on the caller's EventLoop: every method must be called on the loop thread, and every
// callback (handlers, completions, pending callbacks, deregistration) runs on it. No callback runs re-entrantly from
// inside the call that issued the operation, except where stated (deregister_region's `done`).
//
// ORDERING. Per peer, in issue order:
//  - requests, replies and one-way messages are delivered in the order they were issued;
//  - write_notify(): the message is delivered after the written data is visible in the target's memory (RDMA
//    WRITE_WITH_IMM, fi_writedata). This is the only way to make a one-sided write visible "before" a message;
//  - fence(peer): every one-sided operation issued to `peer` before the fence has taken effect at the target before
//    any operation (one- or two-sided) issued after it. Providers whose wire is one ordered stream (tcp) make it a
//    no-op; others (verbs READ vs later SEND, the loopback provider with reordering injected) honour it explicitly;
//  - without write_notify or fence, one-sided operations may take effect in any order relative to each other and to
//    messages. Completion callbacks of one peer's operations run in no particular order.
//
// BACK-PRESSURE. An operation that cannot be accepted for lack of resources (queue space, send credits, work
// requests) returns kNoResources (EAGAIN, Status::retryable()) and has no effect. The caller then queues a retry
// with pending_add(peer, fn); the provider calls `fn` (FIFO per peer) once resources free up, and `fn` re-issues.
// While a peer has pending callbacks, every new operation to it returns kNoResources, so issue order is kept across
// a retry. Nothing is ever dropped silently: a message is either accepted, refused with a status, or failed later.
//
// FAILURE. When a link goes down every outstanding request and one-sided operation to that peer completes with
// ECONNRESET (requests the peer had not answered included), and the registered handlers see on_peer(peer, false).
// Operations issued while a peer is not connected wait for it up to the provider's connect timeout and then
// complete with EHOSTUNREACH. stop() completes everything outstanding with ECONNRESET. Pending callbacks always run
// once: when resources free up, or when the link is lost or the transport stops (the operation they issue then fails
// with the usual status). Nodes authenticate each other (transport/conn.h) before any frame is delivered upward.
//
// ATOMICS. fetch_add and compare_swap act on an 8-byte aligned uint64_t in the TARGET's native byte order (as RDMA
// atomics do: the NIC adds in the responder's order). No cross-node protocol may rely on them between nodes of
// different byte order. Checked (heterogeneous-cluster issue): none does; dsm/ and ipc/ use two-sided messages with
// big-endian bodies and one-sided read/write of opaque pages.
#pragma once

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/wire.h"
#include "transport/ops.h"

namespace dipc::transport {

using NodeId = uint16_t;

// The retryable "no resources" status: see BACK-PRESSURE above. Status::retryable() is true for it.
inline constexpr int kNoResources = EAGAIN;

// A peer's registered region as another node names it: opaque provider bytes (verbs: rkey + remote address; tcp:
// region id and generation; room for per-device keys), the owner and the length. Travels inside protocol messages.
class RemoteKey {
 public:
  static constexpr size_t kMaxPacked = 48;

  RemoteKey() = default;
  // For providers: packs `bytes` (at most kMaxPacked).
  static RemoteKey make(NodeId node, uint64_t length, ByteView bytes) {
    RemoteKey k;
    k.node_ = node;
    k.length_ = length;
    k.size_ = static_cast<uint8_t>(bytes.size() < kMaxPacked ? bytes.size() : kMaxPacked);
    if (k.size_) std::memcpy(k.bytes_.data(), bytes.data(), k.size_);
    return k;
  }
  NodeId node() const { return node_; }        // the owner; 0: no key
  uint64_t length() const { return length_; }  // bytes addressable from offset 0
  ByteView packed() const { return ByteView(bytes_.data(), size_); }
  bool valid() const { return node_ != 0; }

  void encode(Encoder& e) const {
    e.u16(node_);
    e.u64(length_);
    e.u8(size_);
    e.raw(packed());
  }
  // Strict: a size above kMaxPacked is malformed.
  static bool decode(Decoder& d, RemoteKey& k) {
    k.node_ = d.u16();
    k.length_ = d.u64();
    k.size_ = d.u8();
    if (!d.ok() || k.size_ > kMaxPacked) return false;
    ByteView b = d.raw(k.size_);
    if (!d.ok()) return false;
    if (k.size_) std::memcpy(k.bytes_.data(), b.data(), k.size_);
    return true;
  }
  bool operator==(const RemoteKey& o) const {
    return node_ == o.node_ && length_ == o.length_ && size_ == o.size_ &&
           std::memcmp(bytes_.data(), o.bytes_.data(), size_) == 0;
  }

 private:
  NodeId node_ = 0;
  uint64_t length_ = 0;
  uint8_t size_ = 0;
  std::array<uint8_t, kMaxPacked> bytes_{};
};

// A local registered region: the handle register_region() returns. Local buffers of one-sided operations are
// (region, offset) pairs inside it.
struct MemRegion {
  uint32_t id = 0;          // provider-local handle; 0: none
  uint8_t* base = nullptr;  // byte 0 of the region in this process
  uint64_t length = 0;
  uint64_t local_key = 0;  // provider data (verbs: lkey), opaque above transport/
  RemoteKey remote;        // what a peer needs to access the region: send it in a protocol message
};

// Identifies a received request so the handler can answer it later (possibly much later: a blocked semop).
struct ReplyToken {
  NodeId peer = 0;
  uint64_t id = 0;
};

// Upcalls from a transport, on the loop thread, for the op range the handler was registered for.
class Handler {
 public:
  virtual ~Handler() = default;
  virtual void on_request(NodeId from, uint16_t op, ByteView body, ReplyToken token) = 0;
  virtual void on_message(NodeId from, uint16_t op, ByteView body) = 0;
  // Link state changes (authenticated and usable / lost); every registered handler sees them, in registration order.
  virtual void on_peer(NodeId peer, bool up) = 0;
};

// `st` is a transport failure (ECONNRESET, EHOSTUNREACH, ECANCELED) or the status the peer replied with.
using ReplyCb = std::function<void(Status st, ByteView body)>;
using RmaCb = std::function<void(Status st)>;
using AtomicCb = std::function<void(Status st, uint64_t old_value)>;
using PendingFn = std::function<Status()>;
using DoneCb = std::function<void()>;

// What a provider can do; dsm/ and ipc/ read these instead of the provider's name.
struct Capabilities {
  bool native_rma = false;   // one-sided operations bypass the peer's CPU
  bool atomics = false;      // fetch_add / compare_swap supported (else they return ENOTSUP)
  bool pins_memory = false;  // registration pins pages (verbs without ODP): register what is used, in chunks,
                             // and mind RLIMIT_MEMLOCK
  size_t max_inline = 0;     // two-sided bodies up to this size are sent without a registered buffer (0: none)
  size_t max_message = 0;    // largest two-sided body (request, reply, one-way, write_notify message)
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual const char* name() const = 0;
  virtual Capabilities caps() const = 0;

  // Registers `h` for the ops in `range` (transport/ops.h). Before start(); EINVAL if the range overlaps one
  // already registered. Requests for an op nobody registered are answered ENOSYS, such messages are dropped.
  virtual Status set_handler(OpRange range, Handler* h) = 0;
  // Listens and connects to the configured peers; from now on the handlers get upcalls.
  virtual Status start() = 0;
  // Closes every link; outstanding operations complete with ECONNRESET. No upcalls after it returns.
  virtual void stop() = 0;
  virtual bool peer_up(NodeId peer) const = 0;
  // What `dipc status` shows about the link to `peer` (verbs: device, port, GID index, MTU); "" when nothing.
  virtual std::string peer_info(NodeId /*peer*/) const { return {}; }

  // ---- two-sided ----
  // Errors returned at once: EINVAL (unknown peer or self), EMSGSIZE (> max_message), kNoResources, ECONNRESET
  // (stopped). A request's `cb` runs exactly once.
  [[nodiscard]] virtual Status request(NodeId to, uint16_t op, Bytes body, ReplyCb cb) = 0;
  // Answers a request once. status is an errno the requester's ReplyCb sees as `st` (0: success).
  [[nodiscard]] virtual Status reply(const ReplyToken& token, int status, Bytes body) = 0;
  [[nodiscard]] virtual Status send(NodeId to, uint16_t op, Bytes body) = 0;

  // ---- back-pressure ----
  // Queues `fn` for when `peer` has resources again (see BACK-PRESSURE). EINVAL for an unknown peer.
  [[nodiscard]] virtual Status pending_add(NodeId peer, PendingFn fn) = 0;

  // ---- memory domain ----
  // Registers [addr, addr+len) for local use and remote access. Errors: EINVAL, ENOMEM (pinning refused: the
  // memlock limit), ENOSPC (provider out of keys).
  [[nodiscard]] virtual Result<MemRegion> register_region(void* addr, size_t len) = 0;
  // Unregisters region `id`. Operations in flight that use it as their local buffer are finished or cancelled
  // (their callbacks see ECANCELED) first; remote accesses to it fail with EINVAL from then on. `done` runs once no
  // operation touches the memory any more: the caller may unmap or reuse it only then. `done` may run before
  // deregister_region returns.
  virtual void deregister_region(uint32_t id, DoneCb done) = 0;

  // ---- one-sided ----
  // Copies `len` bytes at remote `src_off` of `src` into `dst` at `dst_off`, or the other way round. EINVAL (at once
  // or in the callback) if either side is out of bounds or the key is unknown to its owner.
  [[nodiscard]] virtual Status read(const RemoteKey& src, uint64_t src_off, const MemRegion& dst, uint64_t dst_off,
                                    size_t len, RmaCb cb) = 0;
  [[nodiscard]] virtual Status write(const MemRegion& src, uint64_t src_off, const RemoteKey& dst, uint64_t dst_off,
                                     size_t len, RmaCb cb) = 0;
  // write(), then the one-way message (op, msg) delivered to the target's handler after the data is visible there.
  // `cb` may run well after the message was delivered (verbs posts the WRITE unsignalled and runs it when a later
  // completion retires it, within about heartbeat_ms): a caller that must know the data landed waits for the target.
  [[nodiscard]] virtual Status write_notify(const MemRegion& src, uint64_t src_off, const RemoteKey& dst,
                                            uint64_t dst_off, size_t len, uint16_t op, Bytes msg, RmaCb cb) = 0;
  // See ORDERING. Errors: EINVAL (unknown peer), kNoResources.
  [[nodiscard]] virtual Status fence(NodeId peer) = 0;
  // See ATOMICS. EINVAL for a misaligned or out-of-bounds word.
  [[nodiscard]] virtual Status fetch_add(const RemoteKey& dst, uint64_t offset, uint64_t add, AtomicCb cb) = 0;
  [[nodiscard]] virtual Status compare_swap(const RemoteKey& dst, uint64_t offset, uint64_t expected, uint64_t desired,
                                            AtomicCb cb) = 0;
};

// Handler registration and dispatch shared by the providers (set_handler / upcalls).
class HandlerTable {
 public:
  Status add(OpRange range, Handler* h) {
    if (!h || range.first > range.last) return Status::err(EINVAL);
    for (const auto& e : entries_)
      if (e.range.overlaps(range)) return Status::err(EINVAL);
    entries_.push_back({range, h});
    return Status::ok();
  }
  Handler* find(uint16_t op) const {
    for (const auto& e : entries_)
      if (e.range.contains(op)) return e.handler;
    return nullptr;
  }
  bool empty() const { return entries_.empty(); }
  void peer(NodeId p, bool up) const {
    for (const auto& e : entries_) e.handler->on_peer(p, up);
  }

 private:
  struct Entry {
    OpRange range;
    Handler* handler;
  };
  std::vector<Entry> entries_;
};

}  // namespace dipc::transport
