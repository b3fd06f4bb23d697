#include "transport/tcp/tcp_transport.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sodium.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/auth.h"
#include "common/config.h"
#include "common/event_loop.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "transport/conn.h"
#include "transport/link_seal.h"
#include "transport/pending.h"
#include "transport/tcp/tcp_wire.h"

namespace dipc::transport {

namespace {

using namespace tcp;

constexpr size_t kReadChunk = 64u << 10;  // recv() size when no large frame is pending
constexpr size_t kRxKeep = 2 * kRmaChunk + kReadChunk;  // a link's receive buffer is released above this, once empty
constexpr size_t kIovMax = 64;            // iovecs per sendmsg()
constexpr size_t kMsgParts = 4;           // iovecs of one OutMsg: head, body, ext, tag

enum class LinkState : uint8_t { kConnecting, kHandshake, kUp, kClosed };

// One frame waiting to be written: header (+ fixed fields), an owned payload and a borrowed one, and once sealed
// for the link it leaves on (link_seal.h) its tag.
struct OutMsg {
  Bytes head;
  Bytes body;
  ByteView ext;               // an RMA write's source (valid until completion), or served-read region bytes
  bool ext_volatile = false;  // served-read bytes: copied into `body` if they cannot leave at once
  uint64_t id = 0;            // request / RMA frame id to fail if it expires unsent (0: none)
  uint32_t region = 0;        // the local region `ext` points into (an RMA write's source; 0: none)
  int64_t deadline = 0;       // queued while the peer is down: fails with EHOSTUNREACH at this time
  bool sealed = false;        // its sequence number is taken: it must leave, in order, on the current link
  uint8_t tag_len = 0;
  std::array<uint8_t, kSealTagSize> tag{};
  size_t size() const { return head.size() + body.size() + ext.size() + tag_len; }
};

// An empty kHello frame on an authenticated link: the link's heartbeat (TcpOptions::heartbeat_ms). Its op is outside
// the handshake's (transport/conn.h), which ends before any heartbeat is sent.
constexpr uint16_t kHeartbeatOp = 100;

OutMsg make_msg(FrameKind kind, uint16_t op, uint64_t id, int status, size_t payload_len) {
  OutMsg m;
  m.head.resize(kFrameHeaderSize);
  encode_frame_header(FrameHeader{kind, op, id, status, static_cast<uint32_t>(payload_len)}, m.head.data());
  return m;
}

struct Link {
  uint64_t id = 0;
  UniqueFd fd;
  bool dialer = false;
  NodeId peer = 0;  // dialer: the node dialled; acceptor: the node named in its hello
  LinkState state = LinkState::kConnecting;
  std::string who;  // for logs
  std::unique_ptr<conn::Handshake> hs;  // transport/conn.h: the challenge-response, I/O-free
  std::unique_ptr<FrameSeal> seal_tx, seal_rx;  // once authenticated: this connection's per-direction frame seals
  FrameReader rx;
  Bytes hs_out;  // handshake frames, written before anything queued for the peer
  size_t hs_off = 0;
  bool want_out = false;
  EventLoop::TimerId hs_timer = 0;
  int64_t last_rx_ms = 0;  // when the link last brought bytes (heartbeat deadline)
  std::string source;      // acceptor, until authenticated: the remote host, counted in handshakes_by_source_
  size_t rx_seal_overhead() const { return seal_rx ? seal_rx->overhead() : 0; }
  bool stranger = false;   // acceptor, until authenticated: not from a configured node's address
};

// An operation awaiting its answer, by frame id. rma_op == 0: a request.
struct Pending {
  ReplyCb reply;
  uint64_t rma_op = 0;
  uint8_t* dst = nullptr;  // RMA read chunk: where its bytes go (nullptr once its region is deregistered)
  uint32_t len = 0;
  uint32_t region = 0;     // the local region `dst` points into
};

// A one-sided operation; completes once when all its chunks have (with the first error).
struct RmaOpState {
  uint16_t kind = 0;
  RmaCb cb;
  AtomicCb acb;
  uint32_t left = 0;
  int err = 0;
  uint64_t old = 0;
};

struct Peer {
  NodeId id = 0;
  sockaddr_storage addr{};
  socklen_t addrlen = 0;
  Link* link = nullptr;     // the authenticated link
  Link* dialing = nullptr;  // our connection attempt in progress
  std::deque<OutMsg> out;   // everything issued to the peer, in order
  size_t out_off = 0;       // bytes of out.front() already written
  size_t out_bytes = 0;
  uint64_t next_id = 1;
  std::map<uint64_t, Pending> pending;
  std::unordered_map<uint64_t, RmaOpState> rma_ops;  // by the id of the first chunk
  std::unordered_map<uint64_t, uint64_t> open;       // requests we must answer: token -> the peer's frame id
  EventLoop::TimerId connect_timer = 0, redial_timer = 0;
  conn::Backoff backoff{0, 0};
  std::string last_error;  // last failure logged, so a repeated one is logged once
  bool flush_deferred = false;  // a flush is scheduled for the end of the loop iteration
  PendingQueue waiting;         // pending_add(): retries waiting for queue space, FIFO (transport/pending.h)
};

const char* kind_name(FrameKind k) {
  switch (k) {
    case FrameKind::kHello: return "hello";
    case FrameKind::kRequest: return "request";
    case FrameKind::kResponse: return "response";
    case FrameKind::kOneWay: return "one-way";
    case FrameKind::kRma: return "rma";
    case FrameKind::kRmaReply: return "rma-reply";
  }
  return "?";
}

// The host part of an address (no port): what per-source limits count by.
std::string host_str(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, host, sizeof host);
  else if (ss.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr, host, sizeof host);
  return host;
}

std::string addr_str(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    port = ntohs(a->sin6_port);
  }
  return fmt::format("{}:{}", host, port);
}

bool resolve(const NodeConf& n, sockaddr_storage& ss, socklen_t& len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (getaddrinfo(n.address.c_str(), std::to_string(n.port).c_str(), &hints, &res) != 0 || !res) return false;
  std::memcpy(&ss, res->ai_addr, res->ai_addrlen);
  len = res->ai_addrlen;
  freeaddrinfo(res);
  return true;
}

class TcpTransport final : public Transport {
 public:
  TcpTransport(const Config& cfg, EventLoop& loop, const ClusterKey& key, const TcpOptions& opt)
      : cfg_(cfg), loop_(loop), key_(key), opt_(opt) {
    for (const auto& n : cfg_.nodes) {
      if (n.id == cfg_.self) continue;
      peers_[n.id].id = n.id;
      peers_[n.id].backoff = conn::Backoff(opt_.reconnect_min_ms, opt_.reconnect_max_ms);
    }
    Nonce n = key_.random_nonce();
    std::memcpy(&incarnation_, n.data(), sizeof incarnation_);
    incarnation_ |= 1;  // never 0
  }
  ~TcpTransport() override {
    upcalls_ = false;  // no upcalls from the destructor; callbacks of operations still complete once
    stop();
  }

  const char* name() const override { return "tcp"; }
  Capabilities caps() const override {
    Capabilities c;
    c.native_rma = false;
    c.atomics = true;
    c.pins_memory = false;
    c.max_inline = 0;
    c.max_message = kMaxPayload;
    return c;
  }

  Status set_handler(OpRange range, Handler* h) override {
    if (running_) return Status::err(EINVAL);
    return handlers_.add(range, h);
  }

  Status start() override {
    if (running_ || handlers_.empty()) return Status::err(EINVAL);
    const NodeConf* me = cfg_.node(cfg_.self);
    if (!me) return Status::err(EINVAL);
    bool listen_needed = false;
    for (auto& [id, p] : peers_) {
      if (!resolve(*cfg_.node(id), p.addr, p.addrlen)) {
        DIPC_LOG_ERROR("tcp: cannot resolve node {} address '{}'", id, cfg_.node(id)->address);
        return Status::err(EINVAL);
      }
      listen_needed |= !conn::dials(cfg_.self, id);
      if (!conn::dials(cfg_.self, id)) ++peer_hosts_[host_str(p.addr)];
    }
    if (listen_needed) {
      sockaddr_storage ss{};
      socklen_t len = 0;
      if (!resolve(*me, ss, len)) return Status::err(EINVAL);
      int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) return Status::err(errno);
      int one = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, 128) != 0) {
        int e = errno;
        close(fd);
        DIPC_LOG_ERROR("tcp: cannot listen on {}: {}", addr_str(ss), strerror(e));
        return Status::err(e);
      }
      listen_fd_.reset(fd);
      if (Status s = loop_.add(fd, EPOLLIN, [this](uint32_t) { on_accept(); }); !s) {
        listen_fd_.reset();
        return s;
      }
    }
    upcalls_ = true;
    running_ = true;
    for (auto& [id, p] : peers_)
      if (conn::dials(cfg_.self, id)) dial(p);
    if (opt_.heartbeat_ms > 0) arm_heartbeat();
    return Status::ok();
  }

  // Every heartbeat_ms: a heartbeat frame on each authenticated link, and links silent for dead_peer_s closed.
  void arm_heartbeat() {
    heartbeat_timer_ = loop_.add_timer(opt_.heartbeat_ms, [this] {
      heartbeat_timer_ = 0;
      reap();
      int64_t now = EventLoop::now_ms();
      std::vector<Link*> up;
      for (auto& [id, l] : links_)
        if (l->state == LinkState::kUp) up.push_back(l.get());
      for (Link* l : up) {
        if (opt_.dead_peer_s > 0 && now - l->last_rx_ms > int64_t{opt_.dead_peer_s} * 1000) {
          close_link(*l, fmt::format("nothing received for {} s: the peer is hung (stopped?) or unreachable",
                                     opt_.dead_peer_s), true);
          continue;
        }
        enqueue(peers_.at(l->peer), make_msg(FrameKind::kHello, kHeartbeatOp, 0, 0, 0));
      }
      if (running_) arm_heartbeat();
    });
  }

  void stop() override {
    bool was_running = running_;
    running_ = false;
    upcalls_ = false;  // "no upcalls after stop() returns"; close_link below reports nothing upward
    if (listen_fd_) {
      loop_.remove(listen_fd_.get());
      listen_fd_.reset();
    }
    if (accept_timer_) loop_.cancel_timer(accept_timer_);
    accept_timer_ = 0;
    cancel(heartbeat_timer_);
    for (auto& [id, p] : peers_) {
      cancel(p.redial_timer);
      cancel(p.connect_timer);
    }
    std::vector<Link*> all;
    for (auto& [id, l] : links_) all.push_back(l.get());
    for (Link* l : all) close_link(*l, was_running ? "transport stopped" : "", false);
    for (auto& [id, p] : peers_) fail_all(p, ECONNRESET);
  }

  std::string peer_info(NodeId) const override { return "tcp"; }

  bool peer_up(NodeId peer) const override {
    auto it = peers_.find(peer);
    return it != peers_.end() && it->second.link;
  }

  // ---- two-sided ----------------------------------------------------------------------------------------------

  Status request(NodeId to, uint16_t op, Bytes body, ReplyCb cb) override {
    Peer* p = nullptr;
    if (Status s = admit(to, body.size(), p); !s) return s;
    uint64_t id = p->next_id++;
    OutMsg m = make_msg(FrameKind::kRequest, op, id, 0, body.size());
    m.body = std::move(body);
    m.id = id;
    p->pending.emplace(id, Pending{std::move(cb)});
    enqueue(*p, std::move(m));
    return Status::ok();
  }

  Status reply(const ReplyToken& token, int status, Bytes body) override {
    Peer* p = find(token.peer);
    if (!p || !p->link) return Status::err(ECONNRESET);
    auto it = p->open.find(token.id);
    if (it == p->open.end()) return Status::err(ECONNRESET);
    if (status < 0 || status > 4095) return Status::err(EINVAL);
    if (body.size() > kMaxPayload) return Status::err(EMSGSIZE);
    OutMsg m = make_msg(FrameKind::kResponse, 0, it->second, status, body.size());
    m.body = std::move(body);
    p->open.erase(it);
    return enqueue_answer(*p, std::move(m));
  }

  Status send(NodeId to, uint16_t op, Bytes body) override {
    Peer* p = nullptr;
    if (Status s = admit(to, body.size(), p); !s) return s;
    OutMsg m = make_msg(FrameKind::kOneWay, op, 0, 0, body.size());
    m.body = std::move(body);
    enqueue(*p, std::move(m));
    return Status::ok();
  }

  // ---- one-sided ----------------------------------------------------------------------------------------------

  Status pending_add(NodeId peer, PendingFn fn) override {
    Peer* p = find(peer);
    if (!p || !fn) return Status::err(EINVAL);
    p->waiting.add(std::move(fn));
    schedule_retry(*p);
    return Status::ok();
  }

  // ---- memory domain: a region is a (base, length) the peer's frames address by a packed key -------------------

  Result<MemRegion> register_region(void* addr, size_t len) override {
    if (!addr && len) return Status::err(EINVAL);
    uint32_t id = next_region_++;
    if (!id) id = next_region_++;
    regions_[id] = LocalRegion{static_cast<uint8_t*>(addr), len};
    Encoder e;
    e.u64(packed_region(id));
    MemRegion r;
    r.id = id;
    r.base = static_cast<uint8_t*>(addr);
    r.length = len;
    Bytes packed = e.take();
    r.remote = RemoteKey::make(cfg_.self, len, packed);
    return r;
  }

  // Reads into the region are cancelled (their bytes dropped, ECANCELED); writes from it still queued are detached
  // (their bytes copied out of the region) and complete normally. Nothing touches the memory afterwards, so `done`
  // runs at once.
  void deregister_region(uint32_t id, DoneCb done) override {
    regions_.erase(id);
    for (auto& [pid, p] : peers_) {
      for (auto& [fid, pd] : p.pending) {
        if (pd.region != id || !pd.dst) continue;
        pd.dst = nullptr;
        auto op = p.rma_ops.find(pd.rma_op);
        if (op != p.rma_ops.end() && !op->second.err) op->second.err = ECANCELED;
      }
      for (OutMsg& m : p.out) {
        if (m.region != id) continue;
        m.body.assign(m.ext.begin(), m.ext.end());  // same bytes, same position in the stream
        m.ext = {};
        m.region = 0;
      }
    }
    if (done) done();
  }

  Status read(const RemoteKey& src, uint64_t src_off, const MemRegion& dst, uint64_t dst_off, size_t len,
              RmaCb cb) override {
    if (!local_ok(dst, dst_off, len)) return Status::err(EINVAL);
    return rma(src, RmaReq{kRmaRead, 0, src_off, len, 0, {}}, dst.base + dst_off, dst.id, std::move(cb), {});
  }
  Status write(const MemRegion& src, uint64_t src_off, const RemoteKey& dst, uint64_t dst_off, size_t len,
               RmaCb cb) override {
    if (!local_ok(src, src_off, len)) return Status::err(EINVAL);
    ByteView data(src.base + src_off, len);
    return rma(dst, RmaReq{kRmaWrite, 0, dst_off, 0, 0, data}, nullptr, src.id, std::move(cb), {});
  }
  // The stream is ordered and the peer serves frames in arrival order: the write's chunks, then the message.
  Status write_notify(const MemRegion& src, uint64_t src_off, const RemoteKey& dst, uint64_t dst_off, size_t len,
                      uint16_t op, Bytes msg, RmaCb cb) override {
    if (!local_ok(src, src_off, len)) return Status::err(EINVAL);
    Peer* p = nullptr;
    if (Status s = admit(dst.node(), msg.size() + len, p); !s) return s;
    if (Status s = write(src, src_off, dst, dst_off, len, std::move(cb)); !s) return s;
    OutMsg m = make_msg(FrameKind::kOneWay, op, 0, 0, msg.size());
    m.body = std::move(msg);
    enqueue(*p, std::move(m));
    return Status::ok();
  }
  Status fence(NodeId peer) override { return find(peer) ? Status::ok() : Status::err(EINVAL); }
  Status fetch_add(const RemoteKey& dst, uint64_t offset, uint64_t add, AtomicCb cb) override {
    return rma(dst, RmaReq{kRmaFetchAdd, 0, offset, add, 0, {}}, nullptr, 0, {}, std::move(cb));
  }
  Status compare_swap(const RemoteKey& dst, uint64_t offset, uint64_t expected, uint64_t desired,
                      AtomicCb cb) override {
    return rma(dst, RmaReq{kRmaCompareSwap, 0, offset, expected, desired, {}}, nullptr, 0, {}, std::move(cb));
  }

 private:
  Peer* find(NodeId id) {
    auto it = peers_.find(id);
    return it == peers_.end() ? nullptr : &it->second;
  }
  uint64_t packed_region(uint32_t id) const { return (uint64_t{incarnation_} << 32) | id; }
  static bool local_ok(const MemRegion& r, uint64_t off, size_t len) {
    return r.id && (r.base || !r.length) && off <= r.length && len <= r.length - off;
  }

  // Runs the peer's pending_add() retries once its queue has room again (or the link is gone: they then fail).
  void schedule_retry(Peer& p) {
    if (p.link && p.out_bytes > opt_.max_queued_bytes / 2) return;  // flush() calls again as the queue drains
    if (!p.waiting.want_run()) return;
    NodeId id = p.id;
    std::weak_ptr<int> alive = alive_;
    loop_.defer([this, id, alive] {
      if (alive.expired()) return;
      if (Peer* q = find(id)) q->waiting.run();
    });
  }

  void cancel(EventLoop::TimerId& t) {
    if (t) loop_.cancel_timer(t);
    t = 0;
  }

  // Checks an operation the caller issues: a known other node, a running transport, room in the queue.
  [[nodiscard]] Status admit(NodeId to, size_t bytes, Peer*& p) {
    p = find(to);
    if (!p) return Status::err(EINVAL);  // unknown node, or ourselves (upper layers short-circuit local work)
    if (!running_) return Status::err(ECONNRESET);
    if (bytes > kMaxPayload) return Status::err(EMSGSIZE);
    if (p->waiting.blocks_new()) return Status::err(kNoResources);  // keep issue order behind retries
    if (p->out_bytes + bytes > opt_.max_queued_bytes) return Status::err(kNoResources);
    return Status::ok();
  }

  // Splits a read or write into chunks of at most kRmaChunk, each its own frame; one completion for all.
  [[nodiscard]] Status rma(const RemoteKey& key, RmaReq req, uint8_t* dst, uint32_t local_region, RmaCb cb,
                           AtomicCb acb) {
    Decoder kd(key.packed());
    req.region = kd.u64();
    if (!kd.done()) return Status::err(EINVAL);
    bool bulk = req.op == kRmaRead || req.op == kRmaWrite;
    uint64_t len = req.op == kRmaRead ? req.a : req.data.size();
    if (bulk && req.offset + len < req.offset) return Status::err(EINVAL);
    uint64_t chunks = bulk ? std::max<uint64_t>(1, (len + kRmaChunk - 1) / kRmaChunk) : 1;
    Peer* p = nullptr;
    if (Status s = admit(key.node(), 0, p); !s) return s;
    if (p->out_bytes + req.data.size() + chunks * 64 > opt_.max_queued_bytes) return Status::err(kNoResources);
    uint64_t op_id = p->next_id;
    p->rma_ops.emplace(op_id, RmaOpState{req.op, std::move(cb), std::move(acb), static_cast<uint32_t>(chunks)});
    for (uint64_t i = 0; i < chunks; ++i) {
      uint64_t at = i * kRmaChunk;
      uint32_t n = bulk ? static_cast<uint32_t>(std::min<uint64_t>(kRmaChunk, len - at)) : 0;
      RmaReq c = req;
      c.offset = req.offset + at;
      if (req.op == kRmaRead) c.a = n;
      if (req.op == kRmaWrite) c.data = req.data.subspan(at, n);
      uint64_t id = p->next_id++;
      p->pending.emplace(id, Pending{{}, op_id, dst ? dst + at : nullptr, n, dst ? local_region : 0});
      OutMsg m;
      m.head.assign(kFrameHeaderSize, 0);  // filled below, once the payload length is known
      Encoder e(m.head);
      encode_rma_fields(e, c);
      size_t fields = m.head.size() - kFrameHeaderSize;
      encode_frame_header(FrameHeader{FrameKind::kRma, c.op, id, 0, static_cast<uint32_t>(fields + c.data.size())},
                          m.head.data());
      m.ext = c.data;
      m.region = c.data.empty() ? 0 : local_region;
      m.id = id;
      enqueue(*p, std::move(m));
    }
    return Status::ok();
  }

  // ---- output ---------------------------------------------------------------------------------------------------

  // Queues a frame behind everything issued before; writes at once when the link is up and writable.
  void enqueue(Peer& p, OutMsg m) {
    if (!p.link) m.deadline = EventLoop::now_ms() + opt_.connect_timeout_ms;
    p.out_bytes += m.size();
    p.out.push_back(std::move(m));
    // Everything issued during one loop iteration leaves in one sendmsg at its end: a block pushed with its grant
    // arrives in one segment and wakes the peer once.
    if (p.link && !p.link->want_out && !p.flush_deferred) {
      p.flush_deferred = true;
      NodeId id = p.id;
      std::weak_ptr<int> alive = alive_;
      loop_.defer([this, id, alive] {
        if (alive.expired()) return;
        Peer* q = find(id);
        if (!q) return;
        q->flush_deferred = false;
        if (q->link && !q->link->want_out) flush(*q->link);
      });
    }
    if (!p.link) arm_connect_timer(p);
  }

  // Queues an answer the peer is owed (reply, RMA completion). A peer that lets them pile up is dropped.
  Status enqueue_answer(Peer& p, OutMsg m) {
    if (p.out_bytes > 2 * opt_.max_queued_bytes) {
      close_link(*p.link, "peer does not drain its link", true);
      return Status::err(ECONNRESET);
    }
    enqueue(p, std::move(m));
    if (!p.out.empty() && p.out.back().ext_volatile) {  // still queued: the region may change or go away
      OutMsg& b = p.out.back();
      b.body.assign(b.ext.begin(), b.ext.end());
      b.ext = {};
      b.ext_volatile = false;
    }
    return Status::ok();
  }

  void set_want_out(Link& l, bool want) {
    if (l.want_out == want || l.state == LinkState::kClosed) return;
    l.want_out = want;
    loop_.modify(l.fd.get(), EPOLLIN | (want ? EPOLLOUT : 0u));
  }

  // Gives a queued frame the link's next sequence number and its tag (link_seal.h), just before its first byte is
  // written: frames queued while the peer was down are sealed for the link they leave on. Under "mac" a borrowed
  // payload (an RMA write's source) is copied first, so the bytes sent are the bytes authenticated even if the
  // region changes before they leave; under "encrypt" the payload becomes its ciphertext.
  void seal(Link& l, Peer& p, OutMsg& m) {
    m.sealed = true;
    size_t extra = l.seal_tx->overhead();
    if (!extra) return;
    size_t before = m.size();
    uint8_t* len = m.head.data() + 20;  // the header's length field (common/frame.h) counts the tag
    uint32_t n = (uint32_t{len[0]} << 24 | uint32_t{len[1]} << 16 | uint32_t{len[2]} << 8 | len[3]) +
                 static_cast<uint32_t>(extra);
    for (int i = 0; i < 4; ++i) len[i] = static_cast<uint8_t>(n >> (24 - 8 * i));
    if (!m.ext.empty()) {
      m.body.insert(m.body.end(), m.ext.begin(), m.ext.end());
      m.ext = {};
      m.ext_volatile = false;
    }
    m.region = 0;
    ByteView parts[2] = {ByteView(m.head).subspan(kFrameHeaderSize), ByteView(m.body)};
    Bytes cipher;
    l.seal_tx->seal(m.head.data(), parts, &cipher, m.tag.data());
    if (l.seal_tx->mode() == LinkSecurity::kEncrypt) {
      m.head.resize(kFrameHeaderSize);
      m.body = std::move(cipher);
    }
    m.tag_len = static_cast<uint8_t>(extra);
    p.out_bytes += m.size() - before;
  }

  // Writes handshake bytes, then (once authenticated) the peer's queue, until done or the socket is full.
  void flush(Link& l) {
    while (l.hs_off < l.hs_out.size()) {
      ssize_t n = ::send(l.fd.get(), l.hs_out.data() + l.hs_off, l.hs_out.size() - l.hs_off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return set_want_out(l, true);
      if (n < 0) return close_link(l, fmt::format("send: {}", strerror(errno)), true);
      l.hs_off += static_cast<size_t>(n);
    }
    l.hs_out.clear();
    l.hs_off = 0;
    if (l.state != LinkState::kUp) return set_want_out(l, false);
    Peer& p = peers_.at(l.peer);
    while (!p.out.empty()) {
      iovec iov[kIovMax];
      size_t n = 0, skip = p.out_off;
      for (auto it = p.out.begin(); it != p.out.end() && n + kMsgParts <= kIovMax; ++it) {
        if (!it->sealed) seal(l, p, *it);
        for (ByteView part : {ByteView(it->head), ByteView(it->body), it->ext, ByteView(it->tag.data(), it->tag_len)}) {
          if (skip >= part.size()) {
            skip -= part.size();
            continue;
          }
          iov[n].iov_base = const_cast<uint8_t*>(part.data() + skip);
          iov[n++].iov_len = part.size() - skip;
          skip = 0;
        }
      }
      msghdr mh{};
      mh.msg_iov = iov;
      mh.msg_iovlen = n;
      ssize_t w = sendmsg(l.fd.get(), &mh, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && errno == EAGAIN) return set_want_out(l, true);
      if (w < 0) return close_link(l, fmt::format("send: {}", strerror(errno)), true);
      for (size_t left = static_cast<size_t>(w); left;) {
        size_t rest = p.out.front().size() - p.out_off;
        if (left < rest) {
          p.out_off += left;
          break;
        }
        left -= rest;
        p.out_bytes -= p.out.front().size();
        p.out.pop_front();
        p.out_off = 0;
      }
      schedule_retry(p);
    }
    set_want_out(l, false);
  }

  // ---- failure ----------------------------------------------------------------------------------------------------

  void arm_connect_timer(Peer& p) {
    if (p.connect_timer || p.out.empty() || !running_) return;
    int64_t delay = std::max<int64_t>(0, p.out.front().deadline - EventLoop::now_ms());
    NodeId id = p.id;
    p.connect_timer = loop_.add_timer(delay, [this, id] { expire(peers_.at(id)); });
  }

  // Fails what has waited the connect timeout for a peer that is still down (the queue front: oldest first).
  void expire(Peer& p) {
    reap();
    p.connect_timer = 0;
    if (p.link) return;
    int64_t now = EventLoop::now_ms();
    std::vector<uint64_t> ids;
    while (!p.out.empty() && p.out.front().deadline <= now) {
      if (p.out.front().id) ids.push_back(p.out.front().id);
      p.out_bytes -= p.out.front().size();
      p.out.pop_front();
    }
    note(p, fmt::format("node {} unreachable for {} ms; failing operations queued for it", p.id,
                        opt_.connect_timeout_ms));
    for (uint64_t id : ids) complete(p, id, EHOSTUNREACH);
    arm_connect_timer(p);
  }

  // Completes the pending operation `id` with an error (an RMA operation once all its chunks are accounted for).
  void complete(Peer& p, uint64_t id, int err) {
    auto it = p.pending.find(id);
    if (it == p.pending.end()) return;
    Pending pd = std::move(it->second);
    p.pending.erase(it);
    if (!pd.rma_op) return pd.reply(Status::err(err), {});
    finish_chunk(p, pd.rma_op, err);
  }

  void finish_chunk(Peer& p, uint64_t op_id, int err) {
    auto it = p.rma_ops.find(op_id);
    if (it == p.rma_ops.end()) return;
    RmaOpState& op = it->second;
    if (!op.err) op.err = err;
    if (--op.left) return;
    RmaOpState done = std::move(op);
    p.rma_ops.erase(it);
    Status st = done.err ? Status::err(done.err) : Status::ok();
    if (done.cb) done.cb(st);
    if (done.acb) done.acb(st, done.err ? 0 : done.old);
  }

  // Link lost or transport stopped: drops the queue and completes everything outstanding, in issue order.
  void fail_all(Peer& p, int err) {
    cancel(p.connect_timer);
    p.out.clear();
    p.out_off = p.out_bytes = 0;
    p.open.clear();
    std::map<uint64_t, Pending> pending;
    pending.swap(p.pending);
    std::unordered_map<uint64_t, RmaOpState> ops;
    ops.swap(p.rma_ops);
    for (auto& [id, pd] : pending) {
      if (!pd.rma_op) {
        pd.reply(Status::err(err), {});
        continue;
      }
      auto it = ops.find(pd.rma_op);
      if (it == ops.end()) continue;
      RmaOpState op = std::move(it->second);
      ops.erase(it);
      if (op.cb) op.cb(Status::err(err));
      if (op.acb) op.acb(Status::err(err), 0);
    }
    schedule_retry(p);  // the queue is empty now: waiting retries run (and queue for the reconnect, or fail)
  }

  // Logs a peer's failure once until it changes or the link comes up.
  void note(Peer& p, const std::string& what) {
    if (what == p.last_error) return DIPC_LOG_DEBUG("tcp: {}", what);
    p.last_error = what;
    DIPC_LOG_WARN("tcp: {}", what);
  }

  // ---- connections ------------------------------------------------------------------------------------------------

  // The new connection, or nullptr when it could not be watched (closed again, and logged).
  Link* add_link(int fd, bool dialer, NodeId peer, LinkState st, std::string who) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt_.dead_peer_s > 0) {  // dead-peer detection (TcpOptions::dead_peer_s)
      int idle = std::max(1, opt_.dead_peer_s / 2), intvl = 1, cnt = std::max(1, opt_.dead_peer_s - idle);
      unsigned timeout_ms = static_cast<unsigned>(opt_.dead_peer_s) * 1000u;
      setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
      setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout_ms, sizeof timeout_ms);
    }
    auto owned = std::make_unique<Link>();
    Link& l = *owned;
    l.id = next_link_++;
    l.fd.reset(fd);
    l.dialer = dialer;
    l.peer = peer;
    l.state = st;
    l.who = std::move(who);
    l.hs = std::make_unique<conn::Handshake>(
        key_, cfg_.self, dialer ? conn::Handshake::Role::kDialer : conn::Handshake::Role::kAcceptor, peer,
        [this](NodeId n) { return cfg_.node(n) != nullptr; }, cfg_.link_security);
    uint64_t id = l.id;
    links_.emplace(id, std::move(owned));
    l.hs_timer = loop_.add_timer(opt_.handshake_timeout_ms, [this, id] {
      reap();
      auto it = links_.find(id);
      if (it == links_.end()) return;
      it->second->hs_timer = 0;
      close_link(*it->second, fmt::format("handshake not done within {} ms", opt_.handshake_timeout_ms), true);
    });
    l.want_out = dialer;
    Status s = loop_.add(fd, EPOLLIN | (dialer ? EPOLLOUT : 0u), [this, id](uint32_t ev) { on_event(id, ev); });
    if (!s) {
      close_link(l, fmt::format("cannot watch the connection: {}", s.str()), true);
      return nullptr;
    }
    return &l;
  }

  void dial(Peer& p) {
    p.redial_timer = 0;
    if (!running_ || p.link || p.dialing) return;
    std::string who = fmt::format("node {} at {}", p.id, addr_str(p.addr));
    int fd = socket(p.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&p.addr), p.addrlen) != 0 && errno != EINPROGRESS) {
      note(p, fmt::format("cannot connect to {}: {}", who, strerror(errno)));
      close(fd);
      fd = -1;
    }
    if (fd < 0) return schedule_redial(p);
    p.dialing = add_link(fd, true, p.id, LinkState::kConnecting, std::move(who));
  }

  void schedule_redial(Peer& p) {
    if (!running_ || p.redial_timer || p.link || p.dialing || !conn::dials(cfg_.self, p.id)) return;
    NodeId id = p.id;
    p.redial_timer = loop_.add_timer(p.backoff.next(), [this, id] {
      reap();
      dial(peers_.at(id));
    });
  }

  void on_accept() {
    reap();
    for (;;) {
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      int fd = accept4(listen_fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EAGAIN) return;
        // Out of descriptors or memory: stop accepting for a moment rather than spin.
        DIPC_LOG_WARN("tcp: accept: {}; pausing", strerror(errno));
        loop_.modify(listen_fd_.get(), 0);
        accept_timer_ = loop_.add_timer(100, [this] {
          accept_timer_ = 0;
          if (listen_fd_) loop_.modify(listen_fd_.get(), EPOLLIN);
        });
        return;
      }
      // Handshake slots: strangers share max_unauthenticated; every source host has at most
      // max_unauthenticated_per_source (more for a host that several configured nodes dial from). The configured
      // nodes' addresses never compete with strangers, so a flood of idle connections cannot keep a peer out.
      std::string src = host_str(ss);
      auto known = peer_hosts_.find(src);
      bool stranger = known == peer_hosts_.end();
      int per_source = opt_.max_unauthenticated_per_source * (stranger ? 1 : 1 + known->second);
      int& from_src = handshakes_by_source_[src];
      if (from_src >= per_source || (stranger && strangers_ >= opt_.max_unauthenticated)) {
        if (from_src == 0) handshakes_by_source_.erase(src);
        int64_t now = EventLoop::now_ms();
        if (now - last_refusal_log_ms_ >= 1000) {
          last_refusal_log_ms_ = now;
          DIPC_LOG_WARN("tcp: refusing connections from {}: too many handshakes in progress ({})", addr_str(ss),
                        from_src >= per_source ? "from that host" : "from hosts not in the configuration");
        }
        close(fd);
        continue;
      }
      ++from_src;
      strangers_ += stranger;
      ++unauthenticated_;
      Link* nl = add_link(fd, false, 0, LinkState::kHandshake, addr_str(ss));
      nl->source = src;
      nl->stranger = stranger;
    }
  }

  void on_event(uint64_t id, uint32_t ev) {
    reap();
    auto it = links_.find(id);
    if (it == links_.end()) return;
    Link& l = *it->second;
    if (l.state == LinkState::kConnecting) {
      if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(l.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err) return close_link(l, fmt::format("cannot connect: {}", strerror(err)), true);
      l.state = LinkState::kHandshake;
      conn::HelloMsg m = l.hs->start();
      append_frame(l.hs_out, FrameHeader{FrameKind::kHello, m.op, 0, 0, 0}, m.payload);
      flush(l);
      return;
    }
    if (ev & EPOLLOUT) flush(l);
    if (l.state != LinkState::kClosed && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(l);
  }

  void on_readable(Link& l) {
    size_t budget = opt_.max_read_per_event;
    while (l.state != LinkState::kClosed) {
      std::span<uint8_t> sp = l.rx.space(std::max(l.rx.missing(), kReadChunk));
      ssize_t n = ::recv(l.fd.get(), sp.data(), sp.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      if (n <= 0) {
        std::string why = n ? fmt::format("recv: {}", strerror(errno)) : "closed by the peer";
        // A peer that hangs up mid-handshake rejected our proof: the usual cause is a different cluster secret.
        if (l.state != LinkState::kUp) why += " during authentication (wrong cluster secret?)";
        return close_link(l, why, true);
      }
      l.rx.commit(static_cast<size_t>(n));
      l.last_rx_ms = EventLoop::now_ms();
      if (!drain(l)) return;
      if (static_cast<size_t>(n) < sp.size() || static_cast<size_t>(n) >= budget) break;  // level-triggered: more later
      budget -= static_cast<size_t>(n);
    }
    // Kept warm up to two bulk frames (a read-ahead window or RMA chunk of 1 MiB and its grant): freeing it after
    // every window made each next one land in freshly faulted, zero-filled pages.
    l.rx.trim(kRxKeep);
  }

  // Handles every complete frame received. False when the link closed.
  bool drain(Link& l) {
    for (;;) {
      FrameHeader h;
      ByteView payload;
      size_t max = l.state == LinkState::kUp ? kMaxPayload + l.rx_seal_overhead() : conn::kMaxHelloPayload;
      switch (l.rx.next(static_cast<uint32_t>(max), h, payload)) {
        case FrameReader::Next::kMore:
          return true;
        case FrameReader::Next::kError:
          close_link(l, l.rx.error(), true);
          return false;
        case FrameReader::Next::kFrame:
          if (l.state == LinkState::kUp) {
            if (!unseal(l, h, payload)) return false;
            on_frame(l, h, payload);
          } else {
            on_hello(l, h, payload);
          }
          if (l.state == LinkState::kClosed) return false;
      }
    }
  }

  // Checks (and under "encrypt" decrypts in place) a frame received on an authenticated link and strips its tag.
  // False: the link is closed: a frame that is not the next one the peer sealed means someone on the path forged,
  // altered, replayed, dropped or reordered bytes; nothing of it reaches a handler.
  bool unseal(Link& l, FrameHeader& h, ByteView& payload) {
    size_t extra = l.seal_rx->overhead();
    if (!extra) return true;
    if (payload.size() < extra) {
      close_link(l, "frame shorter than its authentication tag", true);
      return false;
    }
    uint8_t hdr[kFrameHeaderSize];
    encode_frame_header(h, hdr);  // the received header (the decoding is lossless), as the tag covers it
    size_t n = payload.size() - extra;
    // The payload views the reassembly buffer, which this connection owns: decrypted where it lies.
    std::span<uint8_t> body(const_cast<uint8_t*>(payload.data()), n);
    if (!l.seal_rx->open(hdr, body, payload.data() + n)) {
      close_link(l, fmt::format("frame {} ({} op {}) failed authentication under link_security \"{}\": forged, "
                                "altered, replayed or reordered on the path; dropping the connection",
                                l.seal_rx->seq(), kind_name(h.kind), h.op, link_security_name(l.seal_rx->mode())),
                 true);
      return false;
    }
    h.length = static_cast<uint32_t>(n);
    payload = ByteView(body.data(), n);
    return true;
  }

  void on_hello(Link& l, const FrameHeader& h, ByteView body) {
    if (h.kind != FrameKind::kHello)
      return close_link(l, fmt::format("{} frame before authentication", kind_name(h.kind)), true);
    std::vector<conn::HelloMsg> out;
    conn::Handshake::Result r = l.hs->on_message(h.op, body, out);
    if (r == conn::Handshake::Result::kFailed) {
      // An answer that tells the peer why (our server hello, naming our link_security) leaves first if it can.
      for (const auto& m : out) append_frame(l.hs_out, FrameHeader{FrameKind::kHello, m.op, 0, 0, 0}, m.payload);
      if (!out.empty()) flush(l);
      return close_link(l, l.hs->error(), true);
    }
    if (!l.dialer && !l.peer && l.hs->peer()) {
      l.peer = l.hs->peer();
      l.who = fmt::format("node {} from {}", l.peer, l.who);
    }
    for (const auto& m : out) append_frame(l.hs_out, FrameHeader{FrameKind::kHello, m.op, 0, 0, 0}, m.payload);
    if (r == conn::Handshake::Result::kDone) return link_up(l);
    flush(l);
  }

  void link_up(Link& l) {
    Peer& p = peers_.at(l.peer);
    if (p.link) close_link(*p.link, "replaced by a new authenticated connection (peer restarted?)", true);
    if (l.state == LinkState::kClosed || !running_) return;
    if (!l.dialer) handshake_done(l);
    conn::LinkKeys keys = l.hs->keys();
    l.seal_tx = std::make_unique<FrameSeal>(cfg_.link_security, keys.tx);
    l.seal_rx = std::make_unique<FrameSeal>(cfg_.link_security, keys.rx);
    sodium_memzero(&keys, sizeof keys);
    l.state = LinkState::kUp;
    l.last_rx_ms = EventLoop::now_ms();
    cancel(l.hs_timer);
    if (p.dialing == &l) p.dialing = nullptr;
    p.link = &l;
    p.backoff.reset();
    p.last_error.clear();
    cancel(p.connect_timer);
    DIPC_LOG_INFO("tcp: link to {} up", l.who);
    if (upcalls_) handlers_.peer(p.id, true);
    if (l.state == LinkState::kUp) flush(l);
  }

  // Closes a connection. `why` is logged (once: the connection is gone afterwards) when `log` is set.
  void close_link(Link& l, const std::string& why, bool log) {
    if (l.state == LinkState::kClosed) return;
    bool was_up = l.state == LinkState::kUp;
    if (!was_up && !l.dialer) handshake_done(l);
    l.state = LinkState::kClosed;
    cancel(l.hs_timer);
    loop_.remove(l.fd.get());
    l.fd.reset();
    auto it = links_.find(l.id);
    dead_.push_back(std::move(it->second));  // freed at the next entry point: upcalls may still view its buffer
    links_.erase(it);
    Peer* p = l.peer ? find(l.peer) : nullptr;
    if (log && p && (was_up || l.dialer))
      was_up ? DIPC_LOG_WARN("tcp: link to {} lost: {}", l.who, why) : note(*p, fmt::format("{}: {}", l.who, why));
    else if (log)
      DIPC_LOG_WARN("tcp: closing connection {}: {}", l.who, why);
    if (!p) return;
    if (p->dialing == &l) p->dialing = nullptr;
    if (was_up) p->link = nullptr;
    schedule_redial(*p);
    if (!was_up) return;
    fail_all(*p, ECONNRESET);
    if (upcalls_) handlers_.peer(p->id, false);
  }

  void reap() { dead_.clear(); }

  // An accepted connection leaves the handshake (authenticated or closed): its slot is free again.
  void handshake_done(Link& l) {
    --unauthenticated_;
    strangers_ -= l.stranger;
    l.stranger = false;
    auto it = handshakes_by_source_.find(l.source);
    if (it != handshakes_by_source_.end() && --it->second <= 0) handshakes_by_source_.erase(it);
  }

  // ---- frames on an authenticated link ---------------------------------------------------------------------------

  void on_frame(Link& l, const FrameHeader& h, ByteView body) {
    Peer& p = peers_.at(l.peer);
    bool answer = h.kind == FrameKind::kResponse || h.kind == FrameKind::kRmaReply;
    if (h.status && !answer) return close_link(l, fmt::format("status on a {} frame", kind_name(h.kind)), true);
    switch (h.kind) {
      case FrameKind::kHello:
        if (h.op == kHeartbeatOp && body.empty()) return;  // its arrival was the point (last_rx_ms)
        return close_link(l, "handshake frame on an authenticated link", true);
      case FrameKind::kRequest: {
        uint64_t token = next_token_++;
        p.open.emplace(token, h.id);
        Handler* hd = upcalls_ ? handlers_.find(h.op) : nullptr;
        if (!hd) {
          DIPC_LOG_WARN("tcp: node {}: request for op {} that no layer handles", p.id, h.op);
          (void)reply(ReplyToken{p.id, token}, ENOSYS, {});
          return;
        }
        return hd->on_request(p.id, h.op, body, ReplyToken{p.id, token});
      }
      case FrameKind::kOneWay: {
        Handler* hd = upcalls_ ? handlers_.find(h.op) : nullptr;
        if (!hd) return DIPC_LOG_WARN("tcp: node {}: message for op {} that no layer handles, dropped", p.id, h.op);
        return hd->on_message(p.id, h.op, body);
      }
      case FrameKind::kResponse: {
        auto it = p.pending.find(h.id);
        if (it == p.pending.end() || it->second.rma_op)
          return close_link(l, fmt::format("response to unknown request {}", h.id), true);
        ReplyCb cb = std::move(it->second.reply);
        p.pending.erase(it);
        return cb(h.status ? Status::err(h.status) : Status::ok(), body);
      }
      case FrameKind::kRma:
        return serve(l, p, h, body);
      case FrameKind::kRmaReply:
        if (hold_replies_) return held_.push_back(HeldReply{l.id, h, Bytes(body.begin(), body.end())});
        return on_rma_reply(l, p, h, body);
    }
  }

 public:
  // tcp_test_hold_rma_replies(): parks kRmaReply frames while on; the parked ones are applied from the loop.
  void hold_rma_replies(bool on) {
    hold_replies_ = on;
    if (on || held_.empty()) return;
    std::weak_ptr<int> alive = alive_;
    loop_.defer([this, alive] {
      if (alive.expired()) return;
      std::deque<HeldReply> q;
      q.swap(held_);
      for (HeldReply& r : q) {
        auto it = links_.find(r.link);
        if (it == links_.end() || it->second->state != LinkState::kUp) continue;
        on_rma_reply(*it->second, peers_.at(it->second->peer), r.h, r.body);
      }
    });
  }

 private:
  void serve(Link& l, Peer& p, const FrameHeader& h, ByteView body) {
    RmaReq r;
    if (!decode_rma(h.op, body, r)) return close_link(l, fmt::format("malformed rma request (op {})", h.op), true);
    auto it = (r.region >> 32) == incarnation_ ? regions_.find(static_cast<uint32_t>(r.region)) : regions_.end();
    ByteView data;
    uint64_t old = 0;
    int st = serve_rma(r, it == regions_.end() ? nullptr : &it->second, data, old);
    bool atomic = r.op == kRmaFetchAdd || r.op == kRmaCompareSwap;
    OutMsg m = make_msg(FrameKind::kRmaReply, h.op, h.id, st, st ? 0 : atomic ? 8 : data.size());
    if (!st && atomic) Encoder(m.body).u64(old);
    if (!st && r.op == kRmaRead) {
      m.ext = data;
      m.ext_volatile = true;
    }
    (void)enqueue_answer(p, std::move(m));
  }

  void on_rma_reply(Link& l, Peer& p, const FrameHeader& h, ByteView body) {
    auto it = p.pending.find(h.id);
    auto op = it == p.pending.end() ? p.rma_ops.end() : p.rma_ops.find(it->second.rma_op);
    if (op == p.rma_ops.end() || op->second.kind != h.op)
      return close_link(l, fmt::format("rma reply to unknown operation {}", h.id), true);
    Pending& pd = it->second;
    uint64_t old = 0;
    bool ok = h.status                          ? body.empty()
              : h.op == kRmaRead                ? body.size() == pd.len
              : h.op == kRmaWrite               ? body.empty()
                                                : decode_atomic_reply(body, old);
    if (!ok) return close_link(l, fmt::format("malformed rma reply (op {})", h.op), true);
    if (!h.status && h.op == kRmaRead && pd.len && pd.dst) std::memcpy(pd.dst, body.data(), pd.len);
    if (!h.status) op->second.old = old;
    uint64_t op_id = pd.rma_op;
    p.pending.erase(it);
    finish_chunk(p, op_id, h.status);
  }

  const Config& cfg_;
  EventLoop& loop_;
  const ClusterKey& key_;
  const TcpOptions opt_;
  HandlerTable handlers_;
  bool upcalls_ = false;
  bool running_ = false;
  uint32_t incarnation_ = 0;
  UniqueFd listen_fd_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
  EventLoop::TimerId accept_timer_ = 0;
  EventLoop::TimerId heartbeat_timer_ = 0;
  int unauthenticated_ = 0;
  int strangers_ = 0;                                       // handshakes from hosts not in the configuration
  std::unordered_map<std::string, int> handshakes_by_source_;  // host -> accepted connections in the handshake
  std::unordered_map<std::string, int> peer_hosts_;            // host -> configured nodes that dial us from it
  int64_t last_refusal_log_ms_ = -1000;
  uint64_t next_link_ = 1;
  uint64_t next_token_ = 1;
  uint32_t next_region_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Link>> links_;
  std::vector<std::unique_ptr<Link>> dead_;
  std::unordered_map<NodeId, Peer> peers_;
  std::unordered_map<uint32_t, LocalRegion> regions_;
  struct HeldReply {
    uint64_t link;
    FrameHeader h;
    Bytes body;
  };
  bool hold_replies_ = false;  // test hook: kRmaReply frames are parked in held_
  std::deque<HeldReply> held_;
};

}  // namespace

bool tcp_test_hold_rma_replies(Transport& t, bool on) {
  auto* tcp = dynamic_cast<TcpTransport*>(&t);
  if (tcp) tcp->hold_rma_replies(on);
  return tcp != nullptr;
}

Status parse_tcp_options(const Config& cfg, TcpOptions& o, std::string* error) {
  SectionReader r(cfg, "tcp");
  bool ok = r.get("connect_timeout_ms", o.connect_timeout_ms, 1, int64_t{3600} * 1000) &&
            r.get("handshake_timeout_ms", o.handshake_timeout_ms, 1, int64_t{600} * 1000) &&
            r.get("reconnect_min_ms", o.reconnect_min_ms, 1, int64_t{600} * 1000) &&
            r.get("reconnect_max_ms", o.reconnect_max_ms, 1, int64_t{600} * 1000) &&
            r.get("max_queued_bytes", o.max_queued_bytes, int64_t{2} * kMaxPayload, int64_t{1} << 40) &&
            r.get("max_read_per_event", o.max_read_per_event, 4096, int64_t{1} << 30) &&
            r.get("max_unauthenticated", o.max_unauthenticated, 1, 65535) &&
            r.get("dead_peer_s", o.dead_peer_s, 0, 3600) && r.finish();
  std::string err = r.error();
  if (ok && o.reconnect_max_ms < o.reconnect_min_ms) {
    ok = false;
    err = "transport.tcp.reconnect_max_ms must not be below reconnect_min_ms";
  }
  if (!ok && error) *error = err;
  return ok ? Status::ok() : Status::err(EINVAL);
}

std::unique_ptr<Transport> make_tcp_transport(const Config& cfg, EventLoop& loop, const ClusterKey& key,
                                              const TcpOptions& opt) {
  return std::make_unique<TcpTransport>(cfg, loop, key, opt);
}

}  // namespace dipc::transport
