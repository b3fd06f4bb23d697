#include "transport/loopback/loopback_transport.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <unordered_map>
#include <utility>

#include "common/event_loop.h"
#include "common/log.h"
#include "transport/pending.h"

namespace dipc::transport {

namespace {

// One operation on its way over a link: `deliver` carries it out at the target, `fail` reports a loss to the
// issuer (one-sided operations; requests are failed through the issuer's request table).
struct Op {
  bool one_sided = false;
  bool barrier = false;       // fence or write_notify: nothing is reordered across it
  uint32_t local_region = 0;  // the issuer's region the operation reads or writes (0: none)
  bool cancelled = false;     // that region was deregistered: complete with ECANCELED, touch nothing
  int64_t ready_us = 0;       // delivered no earlier than this
  int64_t deadline_ms = 0;    // issued while the link was down: fails with EHOSTUNREACH at this time
  std::function<void()> deliver;
  std::function<void(int)> fail;
};

struct LocalRegion {
  uint8_t* base = nullptr;
  uint64_t length = 0;
};

}  // namespace

class LoopbackTransport final : public Transport {
 public:
  LoopbackTransport(LoopbackFabric& f, NodeId self) : f_(f), self_(self), incarnation_(f.next_incarnation_++) {
    for (NodeId n : f.nodes_)
      if (n != self) peers_[n].id = n;
  }
  ~LoopbackTransport() override { stop(); }

  const char* name() const override { return "loopback"; }
  Capabilities caps() const override {
    Capabilities c;
    c.native_rma = f_.opt_.native_rma;
    c.atomics = f_.opt_.atomics;
    c.pins_memory = f_.opt_.pins_memory;
    c.max_inline = 256;
    c.max_message = f_.opt_.max_message;
    return c;
  }
  Status set_handler(OpRange range, Handler* h) override {
    if (running_) return Status::err(EINVAL);
    return handlers_.add(range, h);
  }
  Status start() override {
    if (running_ || handlers_.empty() || f_.node(self_)) return Status::err(EINVAL);
    running_ = true;
    f_.attach(this);
    for (auto& [id, p] : peers_)
      if (f_.link_up(self_, id)) {
        link_up(id);
        f_.node(id)->link_up(self_);
      }
    return Status::ok();
  }
  void stop() override {
    if (!running_) return;
    running_ = false;
    f_.detach(this);
    for (auto& [id, p] : peers_) {
      bool was_up = p.up;
      link_down(id, ECONNRESET, false);
      if (LoopbackTransport* o = f_.node(id); o && was_up) o->link_down(self_, ECONNRESET, true);
    }
  }
  bool peer_up(NodeId peer) const override {
    auto it = peers_.find(peer);
    return it != peers_.end() && it->second.up;
  }

  // ---- two-sided ----
  Status request(NodeId to, uint16_t op, Bytes body, ReplyCb cb) override {
    Peer* p = nullptr;
    if (Status s = admit(to, body.size(), p); !s) return s;
    uint64_t id = next_id_++;
    p->requests.emplace(id, std::move(cb));
    NodeId self = self_;
    Op o;
    o.deliver = [this, to, self, op, id, body = std::move(body)] {
      if (LoopbackTransport* t = f_.node(to)) t->on_request(self, op, body, id);
    };
    enqueue(*p, std::move(o));
    return Status::ok();
  }
  Status reply(const ReplyToken& token, int status, Bytes body) override {
    Peer* p = find(token.peer);
    if (!p || !p->up) return Status::err(ECONNRESET);
    auto it = p->open.find(token.id);
    if (it == p->open.end()) return Status::err(ECONNRESET);
    if (status < 0 || status > 4095) return Status::err(EINVAL);
    if (body.size() > f_.opt_.max_message) return Status::err(EMSGSIZE);
    uint64_t req = it->second;
    p->open.erase(it);
    NodeId to = token.peer, self = self_;
    Op o;
    o.deliver = [this, to, self, req, status, body = std::move(body)] {
      if (LoopbackTransport* t = f_.node(to)) t->on_reply(self, req, status, body);
    };
    enqueue(*p, std::move(o));  // answers are owed: never refused for lack of resources
    return Status::ok();
  }
  Status send(NodeId to, uint16_t op, Bytes body) override {
    Peer* p = nullptr;
    if (Status s = admit(to, body.size(), p); !s) return s;
    NodeId self = self_;
    Op o;
    o.deliver = [this, to, self, op, body = std::move(body)] {
      if (LoopbackTransport* t = f_.node(to)) t->on_message(self, op, body);
    };
    enqueue(*p, std::move(o));
    return Status::ok();
  }
  Status pending_add(NodeId peer, PendingFn fn) override {
    Peer* p = find(peer);
    if (!p || !fn) return Status::err(EINVAL);
    p->waiting.add(std::move(fn));
    schedule_retry(*p);
    return Status::ok();
  }

  // ---- memory domain ----
  Result<MemRegion> register_region(void* addr, size_t len) override {
    if (!addr && len) return Status::err(EINVAL);
    if (f_.fail_regs_ > 0) {
      --f_.fail_regs_;
      return Status::err(ENOMEM);
    }
    uint32_t id = next_region_++;
    regions_[id] = LocalRegion{static_cast<uint8_t*>(addr), len};
    Encoder e;
    e.u32(incarnation_);
    e.u32(id);
    Bytes packed = e.take();
    MemRegion r;
    r.id = id;
    r.base = static_cast<uint8_t*>(addr);
    r.length = len;
    r.remote = RemoteKey::make(self_, len, packed);
    return r;
  }
  // Operations still queued that use the region are cancelled; nothing touches it afterwards: `done` runs at once.
  void deregister_region(uint32_t id, DoneCb done) override {
    regions_.erase(id);
    for (auto& [pid, p] : peers_)
      for (Op& o : p.q)
        if (o.local_region == id) o.cancelled = true;
    if (done) done();
  }

  // ---- one-sided ----
  Status read(const RemoteKey& src, uint64_t src_off, const MemRegion& dst, uint64_t dst_off, size_t len,
              RmaCb cb) override {
    if (!local_ok(dst, dst_off, len)) return Status::err(EINVAL);
    uint8_t* to = dst.base + dst_off;
    return rma(
        src, dst.id, false,
        [src, src_off, to, len](LoopbackTransport& t) {
          uint8_t* at = t.target(src, src_off, len);
          if (!at) return EINVAL;
          if (len) std::memcpy(to, at, len);
          return 0;
        },
        std::move(cb));
  }
  Status write(const MemRegion& src, uint64_t src_off, const RemoteKey& dst, uint64_t dst_off, size_t len,
               RmaCb cb) override {
    if (!local_ok(src, src_off, len)) return Status::err(EINVAL);
    const uint8_t* from = src.base + src_off;
    return rma(
        dst, src.id, false,
        [dst, dst_off, from, len](LoopbackTransport& t) {
          uint8_t* at = t.target(dst, dst_off, len);
          if (!at) return EINVAL;
          if (len) std::memcpy(at, from, len);
          return 0;
        },
        std::move(cb));
  }
  Status write_notify(const MemRegion& src, uint64_t src_off, const RemoteKey& dst, uint64_t dst_off, size_t len,
                      uint16_t op, Bytes msg, RmaCb cb) override {
    if (!local_ok(src, src_off, len)) return Status::err(EINVAL);
    if (msg.size() > f_.opt_.max_message) return Status::err(EMSGSIZE);
    const uint8_t* from = src.base + src_off;
    NodeId self = self_;
    return rma(
        dst, src.id, true,
        [dst, dst_off, from, len, op, self, msg = std::move(msg)](LoopbackTransport& t) {
          uint8_t* at = t.target(dst, dst_off, len);
          if (!at) return EINVAL;
          if (len) std::memcpy(at, from, len);
          t.on_message(self, op, msg);  // the data is in place before the message is delivered
          return 0;
        },
        std::move(cb));
  }
  Status fence(NodeId peer) override {
    Peer* p = nullptr;
    if (Status s = admit(peer, 0, p); !s) return s;
    Op o;
    o.barrier = true;
    o.deliver = [] {};
    enqueue(*p, std::move(o));
    return Status::ok();
  }
  Status fetch_add(const RemoteKey& dst, uint64_t offset, uint64_t add, AtomicCb cb) override {
    return atomic(
        dst, offset, [add](uint64_t* w) { return __atomic_fetch_add(w, add, __ATOMIC_SEQ_CST); }, std::move(cb));
  }
  Status compare_swap(const RemoteKey& dst, uint64_t offset, uint64_t expected, uint64_t desired,
                      AtomicCb cb) override {
    return atomic(
        dst, offset,
        [expected, desired](uint64_t* w) {
          uint64_t old = expected;
          __atomic_compare_exchange_n(w, &old, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
          return old;
        },
        std::move(cb));
  }

  // ---- fabric side ----
  void link_up(NodeId peer) {
    Peer* p = find(peer);
    if (!p || p->up || !running_) return;
    p->up = true;
    cancel(p->connect_timer);
    for (Op& o : p->q) o.deadline_ms = 0;
    schedule_pump(*p);
    // Reported on a later iteration: start() and set_link() never call upward re-entrantly.
    std::weak_ptr<int> alive = alive_;
    f_.loop_.defer([this, alive, peer] {
      if (!alive.expired() && running_ && peer_up(peer)) handlers_.peer(peer, true);
    });
  }
  // The link to `peer` is gone: everything outstanding to it fails with `err`.
  void link_down(NodeId peer, int err, bool upcall) {
    Peer* p = find(peer);
    if (!p) return;
    bool was_up = p->up;
    p->up = false;
    p->open.clear();
    cancel(p->connect_timer);
    cancel(p->pump_timer);
    std::deque<Op> q;
    q.swap(p->q);
    std::map<uint64_t, ReplyCb> reqs;
    reqs.swap(p->requests);
    for (Op& o : q)
      if (o.fail) o.fail(err);
    for (auto& [id, cb] : reqs) cb(Status::err(err), {});
    schedule_retry(*p);
    if (was_up && upcall && running_) handlers_.peer(peer, false);
  }

 private:
  struct Peer {
    NodeId id = 0;
    bool up = false;
    std::deque<Op> q;
    std::map<uint64_t, ReplyCb> requests;         // by request id
    std::unordered_map<uint64_t, uint64_t> open;  // our reply tokens -> the peer's request id
    PendingQueue waiting;                         // pending_add(): retries, FIFO (transport/pending.h)
    bool pump_deferred = false;
    EventLoop::TimerId pump_timer = 0, connect_timer = 0;
  };

  Peer* find(NodeId id) {
    auto it = peers_.find(id);
    return it == peers_.end() ? nullptr : &it->second;
  }
  void cancel(EventLoop::TimerId& t) {
    if (t) f_.loop_.cancel_timer(t);
    t = 0;
  }
  static bool local_ok(const MemRegion& r, uint64_t off, size_t len) {
    return r.id && (r.base || !r.length) && off <= r.length && len <= r.length - off;
  }
  // The target memory a key names, or nullptr (unknown key, other incarnation, out of bounds).
  uint8_t* target(const RemoteKey& k, uint64_t off, uint64_t len) {
    Decoder d(k.packed());
    uint32_t inc = d.u32(), id = d.u32();
    if (!d.done() || inc != incarnation_) return nullptr;
    auto it = regions_.find(id);
    if (it == regions_.end() || off > it->second.length || len > it->second.length - off) return nullptr;
    return it->second.base + off;
  }

  [[nodiscard]] Status admit(NodeId to, size_t bytes, Peer*& p) {
    p = find(to);
    if (!p) return Status::err(EINVAL);
    if (!running_) return Status::err(ECONNRESET);
    if (bytes > f_.opt_.max_message) return Status::err(EMSGSIZE);
    if (p->waiting.blocks_new()) return Status::err(kNoResources);
    if (p->q.size() >= f_.opt_.max_outstanding) return Status::err(kNoResources);
    return Status::ok();
  }

  [[nodiscard]] Status rma(const RemoteKey& key, uint32_t local_region, bool barrier,
                           std::function<int(LoopbackTransport&)> act, RmaCb cb) {
    Peer* p = nullptr;
    if (Status s = admit(key.node(), 0, p); !s) return s;
    auto shared_cb = std::make_shared<RmaCb>(std::move(cb));
    NodeId to = key.node();
    Op o;
    o.one_sided = true;
    o.barrier = barrier;
    o.local_region = local_region;
    o.deliver = [this, to, act = std::move(act), shared_cb] {
      LoopbackTransport* t = f_.node(to);
      int st = t ? act(*t) : ECONNRESET;
      if (*shared_cb) (*shared_cb)(st ? Status::err(st) : Status::ok());
    };
    o.fail = [shared_cb](int err) {
      if (*shared_cb) (*shared_cb)(Status::err(err));
    };
    enqueue(*p, std::move(o));
    return Status::ok();
  }

  template <typename F>
  [[nodiscard]] Status atomic(const RemoteKey& key, uint64_t offset, F f, AtomicCb cb) {
    if (!f_.opt_.atomics) return Status::err(ENOTSUP);
    auto old = std::make_shared<uint64_t>(0);
    auto shared = std::make_shared<AtomicCb>(std::move(cb));
    return rma(
        key, 0, false,
        [key, offset, f, old](LoopbackTransport& t) {
          uint8_t* at = t.target(key, offset, 8);
          if (!at || reinterpret_cast<uintptr_t>(at) % alignof(uint64_t)) return EINVAL;
          *old = f(reinterpret_cast<uint64_t*>(at));
          return 0;
        },
        [shared, old](Status st) {
          if (*shared) (*shared)(st, st ? *old : 0);
        });
  }

  void enqueue(Peer& p, Op o) {
    o.ready_us = EventLoop::now_us() + f_.delay_us_;
    if (!p.up) {
      o.deadline_ms = EventLoop::now_ms() + f_.opt_.connect_timeout_ms;
      p.q.push_back(std::move(o));
      arm_connect_timer(p);
      return;
    }
    p.q.push_back(std::move(o));
    schedule_pump(p);
  }

  void schedule_pump(Peer& p) {
    if (!p.up || p.q.empty() || p.pump_deferred || p.pump_timer) return;
    std::weak_ptr<int> alive = alive_;
    NodeId id = p.id;
    int64_t wait = p.q.front().ready_us - EventLoop::now_us();
    auto run = [this, alive, id] {
      if (alive.expired()) return;
      Peer* q = find(id);
      if (!q) return;
      q->pump_deferred = false;
      q->pump_timer = 0;
      pump(*q);
    };
    if (wait > 0) {
      p.pump_timer = f_.loop_.add_timer_us(wait, run);
    } else {
      p.pump_deferred = true;
      f_.loop_.defer(run);
    }
  }

  // Delivers what is due on the link, in order (adjacent one-sided pairs swapped when reordering is injected).
  void pump(Peer& p) {
    auto key = std::make_pair(self_, p.id);
    auto paused = f_.paused_.find(key);
    if (paused != f_.paused_.end() && paused->second) return;  // pause(false) pumps again
    int64_t now = EventLoop::now_us();
    size_t budget = p.q.size();  // what a delivery enqueues (a reply to ourselves...) waits for the next round
    while (budget-- && p.up && !p.q.empty() && p.q.front().ready_us <= now) {
      if (f_.reorder_ && p.q.size() >= 2 && p.q[0].one_sided && p.q[1].one_sided && !p.q[0].barrier &&
          !p.q[1].barrier && p.q[1].ready_us <= now)
        std::swap(p.q[0], p.q[1]);
      Op o = std::move(p.q.front());
      p.q.pop_front();
      if (o.cancelled) {
        if (o.fail) o.fail(ECANCELED);
      } else {
        o.deliver();
      }
      if (!find(p.id)) return;
    }
    schedule_retry(p);
    schedule_pump(p);
  }

  void arm_connect_timer(Peer& p) {
    if (p.connect_timer || p.q.empty() || p.up) return;
    std::weak_ptr<int> alive = alive_;
    NodeId id = p.id;
    int64_t delay = std::max<int64_t>(0, p.q.front().deadline_ms - EventLoop::now_ms());
    p.connect_timer = f_.loop_.add_timer(delay, [this, alive, id] {
      if (alive.expired()) return;
      Peer* q = find(id);
      if (!q) return;
      q->connect_timer = 0;
      if (q->up) return;
      int64_t now = EventLoop::now_ms();
      std::vector<Op> expired;
      while (!q->q.empty() && q->q.front().deadline_ms <= now) {
        expired.push_back(std::move(q->q.front()));
        q->q.pop_front();
      }
      // Requests among them: fail every request the peer cannot have seen (all of them: the link is down).
      if (q->q.empty()) {
        std::map<uint64_t, ReplyCb> reqs;
        reqs.swap(q->requests);
        for (auto& [rid, cb] : reqs) cb(Status::err(EHOSTUNREACH), {});
      }
      for (Op& o : expired)
        if (o.fail) o.fail(EHOSTUNREACH);
      schedule_retry(*q);
      arm_connect_timer(*q);
    });
  }

  void schedule_retry(Peer& p) {
    if (p.up && p.q.size() >= f_.opt_.max_outstanding / 2 + 1) return;  // pump() calls again as the queue drains
    if (!p.waiting.want_run()) return;
    std::weak_ptr<int> alive = alive_;
    NodeId id = p.id;
    f_.loop_.defer([this, alive, id] {
      if (alive.expired()) return;
      if (Peer* q = find(id)) q->waiting.run();
    });
  }

  // ---- at the target ----
  void on_request(NodeId from, uint16_t op, const Bytes& body, uint64_t req) {
    Peer* p = find(from);
    if (!p || !p->up || !running_) return;
    uint64_t token = next_token_++;
    p->open.emplace(token, req);
    Handler* h = handlers_.find(op);
    if (!h) {
      (void)reply(ReplyToken{from, token}, ENOSYS, {});
      return;
    }
    h->on_request(from, op, body, ReplyToken{from, token});
  }
  void on_reply(NodeId from, uint64_t req, int status, const Bytes& body) {
    Peer* p = find(from);
    if (!p) return;
    auto it = p->requests.find(req);
    if (it == p->requests.end()) return;
    ReplyCb cb = std::move(it->second);
    p->requests.erase(it);
    cb(status ? Status::err(status) : Status::ok(), body);
  }
  void on_message(NodeId from, uint16_t op, const Bytes& body) {
    if (!running_) return;
    Handler* h = handlers_.find(op);
    if (!h) return DIPC_LOG_WARN("loopback: node {}: message for op {} that no layer handles, dropped", from, op);
    h->on_message(from, op, body);
  }

  friend class LoopbackFabric;
  LoopbackFabric& f_;
  NodeId self_;
  uint32_t incarnation_;
  HandlerTable handlers_;
  bool running_ = false;
  uint64_t next_id_ = 1, next_token_ = 1;
  uint32_t next_region_ = 1;
  std::map<NodeId, Peer> peers_;
  std::unordered_map<uint32_t, LocalRegion> regions_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

// ---------------------------------------------------------------------------------------------------------------

LoopbackFabric::LoopbackFabric(EventLoop& loop, std::vector<NodeId> nodes, LoopbackOptions opt)
    : loop_(loop), nodes_(std::move(nodes)), opt_(opt) {}

LoopbackFabric::~LoopbackFabric() = default;

std::unique_ptr<Transport> LoopbackFabric::make(NodeId self) {
  if (std::find(nodes_.begin(), nodes_.end(), self) == nodes_.end()) return nullptr;
  return std::make_unique<LoopbackTransport>(*this, self);
}

LoopbackTransport* LoopbackFabric::node(NodeId id) const {
  auto it = started_.find(id);
  return it == started_.end() ? nullptr : it->second;
}

bool LoopbackFabric::link_up(NodeId a, NodeId b) const {
  if (!node(a) || !node(b)) return false;
  auto it = cut_.find(std::minmax(a, b));
  return it == cut_.end() || !it->second;
}

void LoopbackFabric::attach(LoopbackTransport* t) { started_[t->self_] = t; }
void LoopbackFabric::detach(LoopbackTransport* t) {
  auto it = started_.find(t->self_);
  if (it != started_.end() && it->second == t) started_.erase(it);
}

void LoopbackFabric::set_link(NodeId a, NodeId b, bool up) {
  cut_[std::minmax(a, b)] = !up;
  LoopbackTransport* ta = node(a);
  LoopbackTransport* tb = node(b);
  if (!ta || !tb) return;
  if (up) {
    ta->link_up(b);
    tb->link_up(a);
  } else {
    ta->link_down(b, ECONNRESET, true);
    tb->link_down(a, ECONNRESET, true);
  }
}

void LoopbackFabric::pause(NodeId from, NodeId to, bool paused) {
  paused_[std::make_pair(from, to)] = paused;
  if (paused) return;
  if (LoopbackTransport* t = node(from))
    if (auto* p = t->find(to)) t->schedule_pump(*p);
}

}  // namespace dipc::transport
