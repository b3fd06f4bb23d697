#include "transport/multi/multi_transport.h"

#include <algorithm>
#include <deque>
#include <unordered_map>
#include <utility>

#include "common/event_loop.h"
#include "common/log.h"

namespace dipc::transport {

namespace {

constexpr uint16_t kHelloOp = ops::kMulti.first;
constexpr uint8_t kHelloVersion = 1;
constexpr int kFast = 0, kFallback = 1;

enum class Route : uint8_t { kUndecided, kUseFast, kUseFallback };

// An operation issued while the peer's route is not known yet: issued on the chosen provider once it is, or failed.
struct Deferred {
  std::function<Status(Transport&)> issue;
  std::function<void(Status)> fail;  // the operation's callback with a failure status (empty: nothing to tell)
  int64_t deadline = 0;
};

struct PeerState {
  Route route = Route::kUndecided;
  bool reported_up = false;
  std::deque<Deferred> queued;
  EventLoop::TimerId timer = 0;
};

// A registered region: the providers' own regions under one id.
struct MultiRegion {
  MemRegion child[2];
};

class MultiTransport;

// Registered with a provider for one upper op range: passes upcalls up, marking reply tokens with the provider.
class Adapter final : public Handler {
 public:
  Adapter(int child, Handler* h) : child_(child), h_(h) {}
  void on_request(NodeId from, uint16_t op, ByteView body, ReplyToken token) override {
    h_->on_request(from, op, body, ReplyToken{from, (token.id << 1) | static_cast<uint64_t>(child_)});
  }
  void on_message(NodeId from, uint16_t op, ByteView body) override { h_->on_message(from, op, body); }
  void on_peer(NodeId, bool) override {}  // the composite's own handler decides what the layers above see

 private:
  int child_;
  Handler* h_;
};

class MultiTransport final : public Transport {
 public:
  MultiTransport(EventLoop& loop, std::vector<NodeId> peers, std::unique_ptr<Transport> fast,
                 std::unique_ptr<Transport> fallback, int64_t decide_timeout_ms)
      : loop_(loop), decide_timeout_ms_(decide_timeout_ms), self_hello_(this, kFast), fb_hello_(this, kFallback) {
    child_[kFast] = std::move(fast);
    child_[kFallback] = std::move(fallback);
    for (NodeId p : peers) peers_[p].route = child_[kFast] ? Route::kUndecided : Route::kUseFallback;
  }
  ~MultiTransport() override {
    upcalls_ = false;
    for (auto& [id, p] : peers_) cancel(p);
    // The providers first: they may still call the adapters and hello handlers (declared after them) as they go.
    child_[kFast].reset();
    child_[kFallback].reset();
  }

  const char* name() const override { return "auto"; }

  Capabilities caps() const override {
    Capabilities c = child_[kFallback]->caps();
    if (!child_[kFast]) return c;
    Capabilities f = child_[kFast]->caps();
    c.native_rma = c.native_rma && f.native_rma;
    c.atomics = c.atomics && f.atomics;
    c.pins_memory = c.pins_memory || f.pins_memory;
    c.max_inline = std::min(c.max_inline, f.max_inline);
    c.max_message = std::min(c.max_message, f.max_message);
    return c;
  }

  Status set_handler(OpRange range, Handler* h) override {
    if (started_ || range.overlaps(ops::kMulti)) return Status::err(EINVAL);
    if (Status s = handlers_.add(range, h); !s) return s;
    for (int c : {kFast, kFallback}) {
      if (!child_[c]) continue;
      adapters_.push_back(std::make_unique<Adapter>(c, h));
      if (Status s = child_[c]->set_handler(range, adapters_.back().get()); !s) return s;
    }
    return Status::ok();
  }

  Status start() override {
    if (started_ || handlers_.empty()) return Status::err(EINVAL);
    // Our own handler last: the layers' adapters ignore link events, this one turns them into the composite's.
    if (Status s = child_[kFallback]->set_handler(ops::kMulti, &fb_hello_); !s) return s;
    if (child_[kFast])
      if (Status s = child_[kFast]->set_handler(ops::kMulti, &self_hello_); !s) return s;
    started_ = true;
    upcalls_ = true;
    if (Status s = child_[kFallback]->start(); !s) return s;
    if (child_[kFast]) {
      if (Status s = child_[kFast]->start(); !s) {
        child_[kFallback]->stop();
        return s;
      }
    }
    return Status::ok();
  }

  void stop() override {
    upcalls_ = false;
    for (auto& [id, p] : peers_) {
      cancel(p);
      fail_queued(p, ECONNRESET);
    }
    for (auto& c : child_)
      if (c) c->stop();
  }

  bool peer_up(NodeId peer) const override {
    auto it = peers_.find(peer);
    if (it == peers_.end() || it->second.route == Route::kUndecided) return false;
    return route_child(it->second)->peer_up(peer);
  }

  // "verbs rxe0 port 1 gid 1 mtu 1024" or "tcp", from the provider the link uses; "auto (deciding)" before.
  std::string peer_info(NodeId peer) const override {
    auto it = peers_.find(peer);
    if (it == peers_.end()) return {};
    if (it->second.route == Route::kUndecided) return "auto (deciding)";
    return route_child(it->second)->peer_info(peer);
  }

  // ---- two-sided ----
  Status request(NodeId to, uint16_t op, Bytes body, ReplyCb cb) override {
    return route_or_queue(
        to, [to, op, body, cb](Transport& t) { return t.request(to, op, body, cb); },
        [cb](Status st) { cb(st, {}); }, [&](Transport& t) { return t.request(to, op, std::move(body), std::move(cb)); });
  }
  Status reply(const ReplyToken& token, int status, Bytes body) override {
    Transport* t = child_[token.id & 1].get();
    if (!t) return Status::err(ECONNRESET);
    return t->reply(ReplyToken{token.peer, token.id >> 1}, status, std::move(body));
  }
  Status send(NodeId to, uint16_t op, Bytes body) override {
    return route_or_queue(
        to, [to, op, body](Transport& t) { return t.send(to, op, body); }, {},
        [&](Transport& t) { return t.send(to, op, std::move(body)); });
  }

  Status pending_add(NodeId peer, PendingFn fn) override {
    auto it = peers_.find(peer);
    if (it == peers_.end() || !fn) return Status::err(EINVAL);
    if (it->second.route != Route::kUndecided) return route_child(it->second)->pending_add(peer, std::move(fn));
    // Runs once the route is known (it then re-issues), or when the wait times out (its operation then queues again
    // or fails with the usual status).
    queue(it->first, it->second, Deferred{[fn](Transport&) { return fn(); }, [fn](Status) { (void)fn(); }, 0});
    return Status::ok();
  }

  // ---- memory domain ----
  // The remote key packs {u8 fast key length, fast key bytes, fallback key bytes}.
  Result<MemRegion> register_region(void* addr, size_t len) override {
    MultiRegion r;
    auto fb = child_[kFallback]->register_region(addr, len);
    if (!fb) return fb.status();
    r.child[kFallback] = *fb;
    if (child_[kFast]) {
      auto f = child_[kFast]->register_region(addr, len);
      if (!f) {
        child_[kFallback]->deregister_region(fb->id, {});
        return f.status();
      }
      r.child[kFast] = *f;
    }
    ByteView fk = r.child[kFast].remote.packed(), bk = r.child[kFallback].remote.packed();
    if (1 + fk.size() + bk.size() > RemoteKey::kMaxPacked) {
      DIPC_LOG_ERROR("auto transport: the providers' keys ({} + {} bytes) do not fit one key", fk.size(), bk.size());
      deregister_children(r, {});
      return Status::err(ENOSPC);
    }
    Bytes packed;
    packed.push_back(static_cast<uint8_t>(fk.size()));
    packed.insert(packed.end(), fk.begin(), fk.end());
    packed.insert(packed.end(), bk.begin(), bk.end());
    uint32_t id = next_region_++;
    regions_[id] = r;
    MemRegion m;
    m.id = id;
    m.base = static_cast<uint8_t*>(addr);
    m.length = len;
    m.local_key = r.child[kFast].id ? r.child[kFast].local_key : r.child[kFallback].local_key;
    m.remote = RemoteKey::make(r.child[kFallback].remote.node(), len, packed);
    return m;
  }

  void deregister_region(uint32_t id, DoneCb done) override {
    auto it = regions_.find(id);
    if (it == regions_.end()) {
      if (done) done();
      return;
    }
    MultiRegion r = it->second;
    regions_.erase(it);
    deregister_children(r, std::move(done));
  }

  // ---- one-sided ----
  Status read(const RemoteKey& src, uint64_t src_off, const MemRegion& dst, uint64_t dst_off, size_t len,
              RmaCb cb) override {
    NodeId to = src.node();
    auto issue = [this, src, src_off, dst, dst_off, len](Transport& t, RmaCb c) -> Status {
      int k = which(t);
      RemoteKey key;
      const MemRegion* local = nullptr;
      if (Status s = child_args(k, src, dst, key, local); !s) return s;
      return t.read(key, src_off, *local, dst_off, len, std::move(c));
    };
    return route_or_queue(
        to, [issue, cb](Transport& t) { return issue(t, cb); }, [cb](Status st) { cb(st); },
        [&](Transport& t) { return issue(t, std::move(cb)); });
  }
  Status write(const MemRegion& src, uint64_t src_off, const RemoteKey& dst, uint64_t dst_off, size_t len,
               RmaCb cb) override {
    NodeId to = dst.node();
    auto issue = [this, src, src_off, dst, dst_off, len](Transport& t, RmaCb c) -> Status {
      RemoteKey key;
      const MemRegion* local = nullptr;
      if (Status s = child_args(which(t), dst, src, key, local); !s) return s;
      return t.write(*local, src_off, key, dst_off, len, std::move(c));
    };
    return route_or_queue(
        to, [issue, cb](Transport& t) { return issue(t, cb); }, [cb](Status st) { cb(st); },
        [&](Transport& t) { return issue(t, std::move(cb)); });
  }
  Status write_notify(const MemRegion& src, uint64_t src_off, const RemoteKey& dst, uint64_t dst_off, size_t len,
                      uint16_t op, Bytes msg, RmaCb cb) override {
    NodeId to = dst.node();
    auto issue = [this, src, src_off, dst, dst_off, len, op](Transport& t, Bytes m, RmaCb c) -> Status {
      RemoteKey key;
      const MemRegion* local = nullptr;
      if (Status s = child_args(which(t), dst, src, key, local); !s) return s;
      return t.write_notify(*local, src_off, key, dst_off, len, op, std::move(m), std::move(c));
    };
    return route_or_queue(
        to, [issue, msg, cb](Transport& t) { return issue(t, msg, cb); }, [cb](Status st) { cb(st); },
        [&](Transport& t) { return issue(t, std::move(msg), std::move(cb)); });
  }
  Status fence(NodeId peer) override {
    return route_or_queue(
        peer, [peer](Transport& t) { return t.fence(peer); }, {}, [&](Transport& t) { return t.fence(peer); });
  }
  Status fetch_add(const RemoteKey& dst, uint64_t offset, uint64_t add, AtomicCb cb) override {
    auto issue = [this, dst, offset, add](Transport& t, AtomicCb c) -> Status {
      RemoteKey key;
      if (Status s = child_key(which(t), dst, key); !s) return s;
      return t.fetch_add(key, offset, add, std::move(c));
    };
    return route_or_queue(
        dst.node(), [issue, cb](Transport& t) { return issue(t, cb); }, [cb](Status st) { cb(st, 0); },
        [&](Transport& t) { return issue(t, std::move(cb)); });
  }
  Status compare_swap(const RemoteKey& dst, uint64_t offset, uint64_t expected, uint64_t desired,
                      AtomicCb cb) override {
    auto issue = [this, dst, offset, expected, desired](Transport& t, AtomicCb c) -> Status {
      RemoteKey key;
      if (Status s = child_key(which(t), dst, key); !s) return s;
      return t.compare_swap(key, offset, expected, desired, std::move(c));
    };
    return route_or_queue(
        dst.node(), [issue, cb](Transport& t) { return issue(t, cb); }, [cb](Status st) { cb(st, 0); },
        [&](Transport& t) { return issue(t, std::move(cb)); });
  }

  // ---- the composite's own handler (one per provider): hellos and link events ----
  class Hello final : public Handler {
   public:
    Hello(MultiTransport* m, int child) : m_(m), child_(child) {}
    void on_request(NodeId, uint16_t, ByteView, ReplyToken token) override {
      (void)m_->child_[child_]->reply(token, ENOSYS, {});
    }
    void on_message(NodeId from, uint16_t op, ByteView body) override {
      if (child_ == kFallback && op == kHelloOp) m_->on_hello(from, body);
    }
    void on_peer(NodeId peer, bool up) override { m_->on_child_peer(child_, peer, up); }

   private:
    MultiTransport* m_;
    int child_;
  };

 private:
  Transport* route_child(const PeerState& p) const {
    return child_[p.route == Route::kUseFast ? kFast : kFallback].get();
  }
  int which(const Transport& t) const { return &t == child_[kFast].get() ? kFast : kFallback; }

  // The provider's own key, unpacked from a composite key.
  static Status child_key(int k, const RemoteKey& key, RemoteKey& out) {
    ByteView b = key.packed();
    if (b.empty() || size_t(b[0]) + 1 > b.size()) return Status::err(EINVAL);
    ByteView part = k == kFast ? b.subspan(1, b[0]) : b.subspan(1 + size_t(b[0]));
    if (part.empty()) return Status::err(EINVAL);  // the owner has no such provider
    out = RemoteKey::make(key.node(), key.length(), part);
    return Status::ok();
  }
  Status child_args(int k, const RemoteKey& key, const MemRegion& local, RemoteKey& out,
                    const MemRegion*& local_out) const {
    auto it = regions_.find(local.id);
    if (it == regions_.end() || !it->second.child[k].id) return Status::err(EINVAL);
    local_out = &it->second.child[k];
    return child_key(k, key, out);
  }

  void deregister_children(const MultiRegion& r, DoneCb done) {
    auto left = std::make_shared<int>((r.child[kFast].id ? 1 : 0) + (r.child[kFallback].id ? 1 : 0));
    auto shared_done = std::make_shared<DoneCb>(std::move(done));
    if (*left == 0) {
      if (*shared_done) (*shared_done)();
      return;
    }
    for (int c : {kFast, kFallback}) {
      if (!r.child[c].id) continue;
      child_[c]->deregister_region(r.child[c].id, [left, shared_done] {
        if (--*left == 0 && *shared_done) (*shared_done)();
      });
    }
  }

  // Issues on the peer's provider when its route is known (`now`: the caller's arguments moved), else queues a copy.
  Status route_or_queue(NodeId to, std::function<Status(Transport&)> later, std::function<void(Status)> fail,
                        const std::function<Status(Transport&)>& now) {
    auto it = peers_.find(to);
    if (it == peers_.end()) return Status::err(EINVAL);
    if (!started_) return Status::err(ECONNRESET);
    PeerState& p = it->second;
    if (p.route != Route::kUndecided) return now(*route_child(p));
    queue(to, p, Deferred{std::move(later), std::move(fail), 0});
    return Status::ok();
  }

  void queue(NodeId id, PeerState& p, Deferred d) {
    d.deadline = EventLoop::now_ms() + decide_timeout_ms_;
    p.queued.push_back(std::move(d));
    if (!p.timer) p.timer = loop_.add_timer(decide_timeout_ms_, [this, id] { expire(id); });
  }

  void cancel(PeerState& p) {
    if (p.timer) loop_.cancel_timer(p.timer);
    p.timer = 0;
  }

  // Operations that waited too long for the peer's capability fail as for a peer that is down.
  void expire(NodeId id) {
    PeerState& p = peers_.at(id);
    p.timer = 0;
    if (p.route != Route::kUndecided) return;
    int64_t now = EventLoop::now_ms();
    std::vector<Deferred> due;
    while (!p.queued.empty() && p.queued.front().deadline <= now) {
      due.push_back(std::move(p.queued.front()));
      p.queued.pop_front();
    }
    if (!due.empty())
      DIPC_LOG_WARN("auto transport: node {} has not said within {} ms which transport it has; failing {} operations",
                    id, decide_timeout_ms_, due.size());
    for (Deferred& d : due)
      if (d.fail) d.fail(Status::err(EHOSTUNREACH));
    PeerState& q = peers_.at(id);  // the callbacks may have queued more
    if (!q.queued.empty() && !q.timer)
      q.timer = loop_.add_timer(std::max<int64_t>(0, q.queued.front().deadline - EventLoop::now_ms()),
                                [this, id] { expire(id); });
  }

  void fail_queued(PeerState& p, int err) {
    std::deque<Deferred> all;
    all.swap(p.queued);
    for (Deferred& d : all)
      if (d.fail) d.fail(Status::err(err));
  }

  // Issues what waited, in order; what the provider refuses for lack of resources waits in its pending queue.
  void drain(NodeId id) {
    PeerState& p = peers_.at(id);
    cancel(p);
    std::deque<Deferred> all;
    all.swap(p.queued);
    Transport* t = route_child(p);
    bool pending = false;
    for (Deferred& d : all) {
      if (pending) {
        auto shared = std::make_shared<Deferred>(std::move(d));
        (void)t->pending_add(id, [t, shared] {
          Status s = shared->issue(*t);
          if (!s && !s.retryable() && shared->fail) shared->fail(s);
          return s;
        });
        continue;
      }
      Status s = d.issue(*t);
      if (s.retryable()) {
        pending = true;
        auto shared = std::make_shared<Deferred>(std::move(d));
        (void)t->pending_add(id, [t, shared] {
          Status s2 = shared->issue(*t);
          if (!s2 && !s2.retryable() && shared->fail) shared->fail(s2);
          return s2;
        });
      } else if (!s && d.fail) {
        d.fail(s);
      }
    }
  }

  void send_hello(NodeId peer) {
    Encoder e;
    e.u8(kHelloVersion);
    e.u8(child_[kFast] ? 1 : 0);
    if (Status s = child_[kFallback]->send(peer, kHelloOp, e.take()); !s)
      DIPC_LOG_WARN("auto transport: cannot tell node {} which transports this node has: {}", peer, s.str());
  }

  void on_hello(NodeId from, ByteView body) {
    auto it = peers_.find(from);
    if (it == peers_.end()) return;
    Decoder d(body);
    uint8_t version = d.u8();
    uint8_t has_fast = d.u8();
    if (!d.ok() || version != kHelloVersion || has_fast > 1) {
      DIPC_LOG_WARN("auto transport: malformed hello from node {}; ignored", from);
      return;
    }
    Route r = child_[kFast] && has_fast ? Route::kUseFast : Route::kUseFallback;
    PeerState& p = it->second;
    if (p.route == r) return;
    if (p.route != Route::kUndecided) {
      DIPC_LOG_INFO("auto transport: node {} now uses {}", from, r == Route::kUseFast ? child_[kFast]->name()
                                                                                      : child_[kFallback]->name());
      report(from, false);
    } else {
      DIPC_LOG_INFO("auto transport: node {} over {}", from,
                    r == Route::kUseFast ? child_[kFast]->name() : child_[kFallback]->name());
    }
    p.route = r;
    drain(from);
    update(from);
  }

  void on_child_peer(int child, NodeId peer, bool up) {
    if (!upcalls_) return;
    if (child == kFallback && up) send_hello(peer);
    update(peer);
  }

  void update(NodeId peer) { report(peer, peer_up(peer)); }

  void report(NodeId peer, bool up) {
    auto it = peers_.find(peer);
    if (it == peers_.end() || it->second.reported_up == up) return;
    it->second.reported_up = up;
    if (upcalls_) handlers_.peer(peer, up);
  }

  EventLoop& loop_;
  int64_t decide_timeout_ms_;
  std::unique_ptr<Transport> child_[2];
  Hello self_hello_, fb_hello_;
  std::vector<std::unique_ptr<Adapter>> adapters_;
  HandlerTable handlers_;
  bool started_ = false, upcalls_ = false;
  std::unordered_map<NodeId, PeerState> peers_;
  std::unordered_map<uint32_t, MultiRegion> regions_;
  uint32_t next_region_ = 1;
};

}  // namespace

std::unique_ptr<Transport> make_multi_transport(EventLoop& loop, std::vector<NodeId> peers,
                                                std::unique_ptr<Transport> fast, std::unique_ptr<Transport> fallback,
                                                int64_t decide_timeout_ms) {
  return std::make_unique<MultiTransport>(loop, std::move(peers), std::move(fast), std::move(fallback),
                                          decide_timeout_ms);
}

}  // namespace dipc::transport
