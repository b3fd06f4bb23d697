#include "transport/tcp/tcp_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <unordered_map>

#include "common/auth.h"
#include "common/config.h"
#include "common/event_loop.h"
#include "common/frame.h"
#include "common/log.h"

namespace dipc::transport {

namespace {

// Handshake steps (FrameKind::kHello, op).
enum HelloOp : uint16_t { kClientHello = 1, kServerHello = 2, kClientProof = 3, kHelloOk = 4 };
// One-sided operations (FrameKind::kRma, op).
enum RmaOp : uint16_t { kRmaRead = 1, kRmaWrite = 2, kRmaFetchAdd = 3, kRmaCas = 4 };

Nonce get_nonce(Decoder& d) {
  Nonce n{};
  ByteView v = d.raw(n.size());
  if (d.ok()) std::memcpy(n.data(), v.data(), n.size());
  return n;
}
Mac get_mac(Decoder& d) {
  Mac m{};
  ByteView v = d.raw(m.size());
  if (d.ok()) std::memcpy(m.data(), v.data(), m.size());
  return m;
}

class TcpTransport final : public Transport {
 public:
  TcpTransport(const Config& cfg, EventLoop& loop, const ClusterKey& key, const TcpOptions& opt)
      : cfg_(cfg), loop_(loop), key_(key), opt_(opt) {
    for (const auto& n : cfg_.nodes)
      if (n.id != cfg_.self) peers_[n.id].id = n.id;
  }
  ~TcpTransport() override { stop(); }

  const char* name() const override { return "tcp"; }
  Capabilities caps() const override { return Capabilities{false, true}; }

  Status start(Handler* h) override {
    handler_ = h;
    const NodeConf& me = cfg_.me();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return Status::err(errno);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(me.port);
    if (inet_pton(AF_INET, me.address.c_str(), &a.sin_addr) != 1) {
      close(fd);
      return Status::err(EINVAL);
    }
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 64) != 0) {
      int e = errno;
      close(fd);
      DIPC_LOG_ERROR("tcp: cannot listen on {}:{}: {}", me.address, me.port, strerror(e));
      return Status::err(e);
    }
    listen_fd_ = fd;
    loop_.add(fd, EPOLLIN, [this](uint32_t) { on_accept(); });
    for (auto& [id, p] : peers_)
      if (id > cfg_.self) dial(p);
    return Status::ok();
  }

  void stop() override {
    if (stopped_) return;
    stopped_ = true;
    std::vector<uint64_t> ids;
    for (auto& [id, l] : links_) ids.push_back(id);
    for (uint64_t id : ids) close_link(id, nullptr);
    for (auto& [id, p] : peers_) {
      if (p.redial_timer) loop_.cancel_timer(p.redial_timer);
      if (p.connect_timer) loop_.cancel_timer(p.connect_timer);
      p.redial_timer = p.connect_timer = 0;
      fail_all(p, ECONNRESET);
    }
    if (listen_fd_ >= 0) {
      loop_.remove(listen_fd_);
      close(listen_fd_);
      listen_fd_ = -1;
    }
  }

  bool peer_up(NodeId peer) const override {
    auto it = peers_.find(peer);
    return it != peers_.end() && it->second.link != 0;
  }

  Status request(NodeId to, uint16_t op, Bytes body, ReplyCb cb) override {
    Peer* p = peer(to);
    if (!p) return Status::err(EINVAL);
    uint64_t id = p->next_id++;
    p->requests.emplace(id, std::move(cb));
    emit(*p, FrameHeader{FrameKind::kRequest, op, id, 0, 0}, body);
    return Status::ok();
  }

  Status reply(const ReplyToken& token, int status, Bytes body) override {
    Peer* p = peer(token.peer);
    if (!p || !p->link) return Status::err(ECONNRESET);
    emit(*p, FrameHeader{FrameKind::kResponse, 0, token.id, status, 0}, body);
    return Status::ok();
  }

  Status send(NodeId to, uint16_t op, Bytes body) override {
    Peer* p = peer(to);
    if (!p) return Status::err(EINVAL);
    emit(*p, FrameHeader{FrameKind::kOneWay, op, 0, 0, 0}, body);
    return Status::ok();
  }

  Result<RegionDesc> register_region(void* addr, size_t len) override {
    uint32_t id = next_region_++;
    regions_[id] = Region{static_cast<uint8_t*>(addr), len};
    return RegionDesc{cfg_.self, id, reinterpret_cast<uint64_t>(addr), len, 0};
  }
  void deregister_region(uint32_t id) override { regions_.erase(id); }

  Status read(const RegionDesc& r, uint64_t offset, void* local, size_t len, RmaCb cb) override {
    Encoder e;
    e.u32(r.id);
    e.u64(offset);
    e.u64(len);
    return rma(r, kRmaRead, e.take(), RmaPending{kRmaRead, static_cast<uint8_t*>(local), len, std::move(cb), {}});
  }
  Status write(const RegionDesc& r, uint64_t offset, const void* local, size_t len, RmaCb cb) override {
    if (len > kMaxPayload - 64) return Status::err(EINVAL);
    Encoder e;
    e.u32(r.id);
    e.u64(offset);
    e.bytes(ByteView(static_cast<const uint8_t*>(local), len));
    return rma(r, kRmaWrite, e.take(), RmaPending{kRmaWrite, nullptr, 0, std::move(cb), {}});
  }
  Status fetch_add(const RegionDesc& r, uint64_t offset, uint64_t add, AtomicCb cb) override {
    Encoder e;
    e.u32(r.id);
    e.u64(offset);
    e.u64(add);
    return rma(r, kRmaFetchAdd, e.take(), RmaPending{kRmaFetchAdd, nullptr, 0, {}, std::move(cb)});
  }
  Status compare_swap(const RegionDesc& r, uint64_t offset, uint64_t expected, uint64_t desired,
                      AtomicCb cb) override {
    Encoder e;
    e.u32(r.id);
    e.u64(offset);
    e.u64(expected);
    e.u64(desired);
    return rma(r, kRmaCas, e.take(), RmaPending{kRmaCas, nullptr, 0, {}, std::move(cb)});
  }

 private:
  enum class State { kConnecting, kAwaitServerHello, kAwaitClientHello, kAwaitClientProof, kAwaitOk, kUp };
  struct Link {
    uint64_t id = 0;
    int fd = -1;
    bool dialer = false;
    NodeId peer = 0;
    State state = State::kConnecting;
    Nonce mine{}, theirs{};
    FrameParser parser;
    Bytes out;
    bool want_out = false;
    EventLoop::TimerId hs_timer = 0;
  };
  struct RmaPending {
    uint16_t op;
    uint8_t* dst;
    size_t len;
    RmaCb cb;
    AtomicCb acb;
  };
  struct Peer {
    NodeId id = 0;
    uint64_t link = 0;  // the authenticated link, 0 when down
    uint64_t next_id = 1;
    std::unordered_map<uint64_t, ReplyCb> requests;
    std::unordered_map<uint64_t, RmaPending> rmas;
    Bytes queued;  // frames issued while down
    EventLoop::TimerId connect_timer = 0, redial_timer = 0;
    int backoff_ms = 0;
  };
  struct Region {
    uint8_t* base;
    size_t len;
  };

  Peer* peer(NodeId id) {
    auto it = peers_.find(id);
    return it == peers_.end() ? nullptr : &it->second;
  }

  Status rma(const RegionDesc& r, uint16_t op, Bytes body, RmaPending pend) {
    Peer* p = peer(r.node);
    if (!p) return Status::err(EINVAL);
    uint64_t id = p->next_id++;
    p->rmas.emplace(id, std::move(pend));
    emit(*p, FrameHeader{FrameKind::kRma, op, id, 0, 0}, body);
    return Status::ok();
  }

  // Sends a frame now if the peer is up, else queues it until the link comes up or the connect timeout fails it.
  void emit(Peer& p, const FrameHeader& h, ByteView body) {
    if (p.link) {
      Link& l = *links_.at(p.link);
      append_frame(l.out, h, body);
      flush(l);
      return;
    }
    append_frame(p.queued, h, body);
    if (!p.connect_timer) {
      NodeId id = p.id;
      p.connect_timer = loop_.add_timer(opt_.connect_timeout_ms, [this, id] {
        Peer& q = peers_.at(id);
        q.connect_timer = 0;
        if (q.link) return;
        DIPC_LOG_WARN("tcp: node {} unreachable for {} ms; failing its operations", id, opt_.connect_timeout_ms);
        fail_all(q, EHOSTUNREACH);
      });
    }
  }

  void fail_all(Peer& p, int err) {
    p.queued.clear();
    auto reqs = std::move(p.requests);
    auto rmas = std::move(p.rmas);
    p.requests.clear();
    p.rmas.clear();
    for (auto& [id, cb] : reqs) cb(Status::err(err), {});
    for (auto& [id, r] : rmas) {
      if (r.cb) r.cb(Status::err(err));
      if (r.acb) r.acb(Status::err(err), 0);
    }
  }

  // ---- connections --------------------------------------------------------------------------------------------

  void dial(Peer& p) {
    const NodeConf* n = cfg_.node(p.id);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(n->port);
    inet_pton(AF_INET, n->address.c_str(), &a.sin_addr);
    if (fd < 0) return schedule_redial(p);
    int r = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    if (r != 0 && errno != EINPROGRESS) {
      close(fd);
      return schedule_redial(p);
    }
    Link& l = new_link(fd, true);
    l.peer = p.id;
    l.state = State::kConnecting;
    loop_.modify(fd, EPOLLIN | EPOLLOUT);
    l.want_out = true;
  }

  void schedule_redial(Peer& p) {
    if (stopped_ || p.redial_timer) return;
    p.backoff_ms = p.backoff_ms ? std::min(p.backoff_ms * 2, opt_.reconnect_max_ms) : opt_.reconnect_min_ms;
    NodeId id = p.id;
    p.redial_timer = loop_.add_timer(p.backoff_ms, [this, id] {
      Peer& q = peers_.at(id);
      q.redial_timer = 0;
      if (!q.link) dial(q);
    });
  }

  Link& new_link(int fd, bool dialer) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto l = std::make_unique<Link>();
    l->id = next_link_++;
    l->fd = fd;
    l->dialer = dialer;
    uint64_t id = l->id;
    l->hs_timer = loop_.add_timer(opt_.handshake_timeout_ms, [this, id] {
      auto it = links_.find(id);
      if (it == links_.end()) return;
      it->second->hs_timer = 0;
      if (it->second->state != State::kUp) close_link(id, "handshake timed out");
    });
    Link& ref = *l;
    links_[id] = std::move(l);
    loop_.add(fd, EPOLLIN, [this, id](uint32_t ev) { on_event(id, ev); });
    return ref;
  }

  void on_accept() {
    for (;;) {
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      Link& l = new_link(fd, false);
      l.state = State::kAwaitClientHello;
    }
  }

  void on_event(uint64_t id, uint32_t ev) {
    auto it = links_.find(id);
    if (it == links_.end()) return;
    Link& l = *it->second;
    if (l.state == State::kConnecting && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(l.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err) return close_link(id, nullptr);
      l.state = State::kAwaitServerHello;
      l.mine = key_.random_nonce();
      Encoder e;
      e.u16(cfg_.self);
      e.raw(l.mine);
      append_frame(l.out, FrameHeader{FrameKind::kHello, kClientHello, 0, 0, 0}, e.buf());
    }
    if (ev & EPOLLOUT) {
      flush(l);
      if (!links_.count(id)) return;
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
      uint8_t buf[65536];
      for (;;) {
        ssize_t n = recv(l.fd, buf, sizeof buf, 0);
        if (n > 0) {
          l.parser.feed(buf, static_cast<size_t>(n));
          FrameParser::Frame f;
          while (links_.count(id) && l.parser.next(f)) on_frame(l, f);
          if (!links_.count(id)) return;
          if (l.parser.failed()) return close_link(id, l.parser.error().c_str());
          continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        return close_link(id, nullptr);
      }
    }
  }

  void on_frame(Link& l, FrameParser::Frame& f) {
    const FrameHeader& h = f.header;
    if (l.state != State::kUp) {
      if (h.kind != FrameKind::kHello) return close_link(l.id, "frame before authentication");
      if (f.payload.size() > opt_.max_hello_bytes) return close_link(l.id, "oversized handshake frame");
      return on_hello(l, h.op, f.payload);
    }
    Peer& p = peers_.at(l.peer);
    switch (h.kind) {
      case FrameKind::kRequest:
        handler_->on_request(l.peer, h.op, f.payload, ReplyToken{l.peer, h.id});
        return;
      case FrameKind::kOneWay:
        handler_->on_message(l.peer, h.op, f.payload);
        return;
      case FrameKind::kResponse: {
        auto it = p.requests.find(h.id);
        if (it == p.requests.end()) return;  // answered after a reconnect: already failed
        ReplyCb cb = std::move(it->second);
        p.requests.erase(it);
        cb(h.status ? Status::err(h.status) : Status::ok(), f.payload);
        return;
      }
      case FrameKind::kRma:
        return serve_rma(l, h, f.payload);
      case FrameKind::kRmaReply:
        return complete_rma(l, p, h, f.payload);
      case FrameKind::kHello:
        return close_link(l.id, "handshake frame on an authenticated link");
    }
  }

  void on_hello(Link& l, uint16_t op, ByteView body) {
    Decoder d(body);
    if (op == kClientHello && l.state == State::kAwaitClientHello) {
      uint16_t from = d.u16();
      l.theirs = get_nonce(d);
      if (!d.done()) return close_link(l.id, "malformed client hello");
      if (!cfg_.node(from) || from == cfg_.self || from > cfg_.self)
        return close_link(l.id, "hello from a node that is not configured to dial us");
      l.peer = from;
      l.mine = key_.random_nonce();
      Encoder e;
      e.u16(cfg_.self);
      e.raw(l.mine);
      e.raw(key_.prove('S', l.mine, l.theirs, cfg_.self, from));
      append_frame(l.out, FrameHeader{FrameKind::kHello, kServerHello, 0, 0, 0}, e.buf());
      l.state = State::kAwaitClientProof;
      return flush(l);
    }
    if (op == kServerHello && l.state == State::kAwaitServerHello) {
      uint16_t from = d.u16();
      l.theirs = get_nonce(d);
      Mac mac = get_mac(d);
      if (!d.done()) return close_link(l.id, "malformed server hello");
      if (from != l.peer || !key_.verify('S', l.theirs, l.mine, from, cfg_.self, mac))
        return close_link(l.id, "peer failed authentication (wrong cluster secret?)");
      Encoder e;
      e.raw(key_.prove('C', l.mine, l.theirs, cfg_.self, from));
      append_frame(l.out, FrameHeader{FrameKind::kHello, kClientProof, 0, 0, 0}, e.buf());
      l.state = State::kAwaitOk;
      return flush(l);
    }
    if (op == kClientProof && l.state == State::kAwaitClientProof) {
      Mac mac = get_mac(d);
      if (!d.done()) return close_link(l.id, "malformed client proof");
      if (!key_.verify('C', l.theirs, l.mine, l.peer, cfg_.self, mac))
        return close_link(l.id, "peer failed authentication (wrong cluster secret?)");
      append_frame(l.out, FrameHeader{FrameKind::kHello, kHelloOk, 0, 0, 0}, {});
      return link_up(l);
    }
    if (op == kHelloOk && l.state == State::kAwaitOk && body.empty()) return link_up(l);
    close_link(l.id, "unexpected handshake frame");
  }

  void link_up(Link& l) {
    Peer& p = peers_.at(l.peer);
    if (p.link) close_link(p.link, "replaced by a new authenticated link");  // the peer restarted
    l.state = State::kUp;
    if (l.hs_timer) loop_.cancel_timer(l.hs_timer);
    l.hs_timer = 0;
    p.link = l.id;
    p.backoff_ms = 0;
    if (p.connect_timer) loop_.cancel_timer(p.connect_timer);
    p.connect_timer = 0;
    l.out.insert(l.out.end(), p.queued.begin(), p.queued.end());
    p.queued.clear();
    DIPC_LOG_INFO("tcp: authenticated link to node {} up", l.peer);
    handler_->on_peer(l.peer, true);
    if (links_.count(l.id)) flush(l);
  }

  void close_link(uint64_t id, const char* why) {
    auto it = links_.find(id);
    if (it == links_.end()) return;
    std::unique_ptr<Link> l = std::move(it->second);
    links_.erase(it);
    if (why) DIPC_LOG_WARN("tcp: closing connection{}: {}", l->peer ? fmt::format(" with node {}", l->peer) : "", why);
    if (l->hs_timer) loop_.cancel_timer(l->hs_timer);
    loop_.remove(l->fd);
    close(l->fd);
    Peer* p = l->peer ? peer(l->peer) : nullptr;
    if (!p) return;
    if (p->link == id) {
      p->link = 0;
      fail_all(*p, ECONNRESET);
      handler_->on_peer(p->id, false);
    }
    if (l->dialer && !p->link) schedule_redial(*p);
  }

  void flush(Link& l) {
    size_t off = 0;
    while (off < l.out.size() && l.state != State::kConnecting) {
      ssize_t n = ::send(l.fd, l.out.data() + off, l.out.size() - off, MSG_NOSIGNAL);
      if (n > 0) {
        off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      return close_link(l.id, nullptr);
    }
    if (off) l.out.erase(l.out.begin(), l.out.begin() + static_cast<std::ptrdiff_t>(off));
    if (l.out.size() > opt_.max_out_bytes) return close_link(l.id, "peer does not drain its link");
    bool want = !l.out.empty() || l.state == State::kConnecting;
    if (want != l.want_out) {
      l.want_out = want;
      loop_.modify(l.fd, EPOLLIN | (want ? EPOLLOUT : 0u));
    }
  }

  // ---- one-sided operations, served here for the peer -----------------------------------------------------

  void serve_rma(Link& l, const FrameHeader& h, ByteView body) {
    Decoder d(body);
    uint32_t rid = d.u32();
    uint64_t off = d.u64();
    Bytes out;
    int st = 0;
    auto it = regions_.find(rid);
    auto in_bounds = [&](uint64_t len) { return it != regions_.end() && off <= it->second.len && len <= it->second.len - off; };
    switch (h.op) {
      case kRmaRead: {
        uint64_t len = d.u64();
        if (!d.done()) return close_link(l.id, "malformed rma read");
        if (!in_bounds(len) || len > kMaxPayload - 64) {
          st = EINVAL;
          break;
        }
        out.assign(it->second.base + off, it->second.base + off + len);
        break;
      }
      case kRmaWrite: {
        ByteView data = d.bytes(kMaxPayload);
        if (!d.done()) return close_link(l.id, "malformed rma write");
        if (!in_bounds(data.size())) {
          st = EINVAL;
          break;
        }
        std::memcpy(it->second.base + off, data.data(), data.size());
        break;
      }
      case kRmaFetchAdd:
      case kRmaCas: {
        uint64_t a = d.u64();
        uint64_t b = h.op == kRmaCas ? d.u64() : 0;
        if (!d.done()) return close_link(l.id, "malformed rma atomic");
        if (!in_bounds(8) || (reinterpret_cast<uintptr_t>(it->second.base + off) & 7)) {
          st = EINVAL;
          break;
        }
        auto* p = reinterpret_cast<uint64_t*>(it->second.base + off);
        uint64_t old;
        if (h.op == kRmaFetchAdd) {
          old = __atomic_fetch_add(p, a, __ATOMIC_SEQ_CST);
        } else {
          old = a;
          __atomic_compare_exchange_n(p, &old, b, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        }
        Encoder e(out);
        e.u64(old);
        break;
      }
      default:
        return close_link(l.id, "unknown rma operation");
    }
    append_frame(l.out, FrameHeader{FrameKind::kRmaReply, h.op, h.id, st, 0}, out);
    flush(l);
  }

  void complete_rma(Link& l, Peer& p, const FrameHeader& h, ByteView body) {
    auto it = p.rmas.find(h.id);
    if (it == p.rmas.end()) return;
    RmaPending r = std::move(it->second);
    p.rmas.erase(it);
    Status st = h.status ? Status::err(h.status) : Status::ok();
    if (r.op == kRmaRead) {
      if (st && body.size() != r.len) return close_link(l.id, "rma read reply of the wrong length");
      if (st) std::memcpy(r.dst, body.data(), body.size());
      return r.cb(st);
    }
    if (r.op == kRmaWrite) return r.cb(st);
    Decoder d(body);
    uint64_t old = st ? d.u64() : 0;
    if (st && !d.done()) return close_link(l.id, "malformed rma atomic reply");
    r.acb(st, old);
  }

  const Config& cfg_;
  EventLoop& loop_;
  const ClusterKey& key_;
  TcpOptions opt_;
  Handler* handler_ = nullptr;
  int listen_fd_ = -1;
  bool stopped_ = false;
  uint64_t next_link_ = 1;
  uint32_t next_region_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Link>> links_;
  std::unordered_map<NodeId, Peer> peers_;
  std::unordered_map<uint32_t, Region> regions_;
};

}  // namespace

std::unique_ptr<Transport> make_tcp_transport(const Config& cfg, EventLoop& loop, const ClusterKey& key,
                                              const TcpOptions& opt) {
  return std::make_unique<TcpTransport>(cfg, loop, key, opt);
}

}  // namespace dipc::transport
