#include "transport/verbs/verbs_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <infiniband/verbs.h>
#include <netdb.h>
#include <rdma/rdma_cma.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/auth.h"
#include "common/config.h"
#include "common/event_loop.h"
#include "common/frame.h"
#include "common/log.h"
#include "transport/conn.h"
#include "transport/link_seal.h"
#include "transport/pending.h"
#include "transport/verbs/verbs_wire.h"

namespace dipc::transport {

namespace {

using namespace verbs;
static_assert(kMsgHeaderSize == kFrameHeaderSize, "a verbs header is sealed as a frame header (link_seal.h)");

// ---- owners of libibverbs / librdmacm objects ---------------------------------------------------------------------

struct EventChannelDel {
  void operator()(rdma_event_channel* c) const { rdma_destroy_event_channel(c); }
};
struct CmIdDel {
  void operator()(rdma_cm_id* id) const {
    if (id->qp) rdma_destroy_qp(id);
    rdma_destroy_id(id);
  }
};
struct PdDel {
  void operator()(ibv_pd* p) const { ibv_dealloc_pd(p); }
};
struct CompChannelDel {
  void operator()(ibv_comp_channel* c) const { ibv_destroy_comp_channel(c); }
};
struct CqDel {
  void operator()(ibv_cq* c) const { ibv_destroy_cq(c); }
};
struct MrDel {
  void operator()(ibv_mr* m) const { ibv_dereg_mr(m); }
};
using EventChannelPtr = std::unique_ptr<rdma_event_channel, EventChannelDel>;
using CmIdPtr = std::unique_ptr<rdma_cm_id, CmIdDel>;
using PdPtr = std::unique_ptr<ibv_pd, PdDel>;
using CompChannelPtr = std::unique_ptr<ibv_comp_channel, CompChannelDel>;
using CqPtr = std::unique_ptr<ibv_cq, CqDel>;
using MrPtr = std::unique_ptr<ibv_mr, MrDel>;

// Receive buffers beyond the credits, for credit-only messages: at most two carry returned credits at any time (each
// returns at least half of them), plus heartbeats (one per heartbeat_ms of idleness).
constexpr uint32_t kSpareRecvs = 8;
constexpr int kAccessAll = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE |
                           IBV_ACCESS_REMOTE_ATOMIC;
constexpr uint64_t kMaxRmaLen = 1u << 30;
// A peer that disconnects while one-sided operations are posted: how long their completions are awaited (the remote
// access error that made it leave, or their flush), see await_one_sided().
constexpr int64_t kDisconnectDrainMs = 300;

// wr_id: link id (bits 63..40), type (39..38), value (37..0).
enum WrType : uint64_t { kWrRma = 0, kWrSend = 1, kWrRecv = 2 };
uint64_t make_wr(uint64_t link, WrType t, uint64_t v) { return (link << 40) | (uint64_t(t) << 38) | (v & ((1ull << 38) - 1)); }
uint64_t wr_link(uint64_t w) { return w >> 40; }
WrType wr_type(uint64_t w) { return static_cast<WrType>((w >> 38) & 3); }
uint64_t wr_value(uint64_t w) { return w & ((1ull << 38) - 1); }

bool resolve(const std::string& host, uint16_t port, sockaddr_storage& ss) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res) return false;
  std::memcpy(&ss, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  return true;
}

void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

int mtu_bytes(ibv_mtu m) {
  switch (m) {
    case IBV_MTU_256: return 256;
    case IBV_MTU_512: return 512;
    case IBV_MTU_1024: return 1024;
    case IBV_MTU_2048: return 2048;
    case IBV_MTU_4096: return 4096;
  }
  return 0;
}

int device_numa_node(ibv_context* ctx) {
  std::ifstream f(std::string(ctx->device->ibdev_path) + "/device/numa_node");
  int n = -1;
  if (!(f >> n)) return -1;
  return n;
}

// The GID index rdma_cm chose for `id` (its source GID looked up in the port's table).
int gid_index_of(rdma_cm_id* id) {
  if (!id->verbs) return -1;
  const ibv_gid* sgid = &id->route.addr.addr.ibaddr.sgid;
  ibv_port_attr pa{};
  if (ibv_query_port(id->verbs, id->port_num, &pa) != 0) return -1;
  for (int i = 0; i < pa.gid_tbl_len; ++i) {
    ibv_gid g{};
    if (ibv_query_gid(id->verbs, id->port_num, i, &g) == 0 && std::memcmp(&g, sgid, sizeof g) == 0) return i;
  }
  return -1;
}

std::string memlock_hint(int err) {
  rlimit rl{};
  getrlimit(RLIMIT_MEMLOCK, &rl);
  std::string lim = rl.rlim_cur == RLIM_INFINITY ? "unlimited" : std::to_string(rl.rlim_cur / 1024) + " KiB";
  return fmt::format("{} (locked-memory limit {}: raise it with LimitMEMLOCK=infinity in the systemd unit or "
                     "`ulimit -l unlimited`)",
                     strerror(err), lim);
}

enum class LinkState : uint8_t { kResolving, kConnecting, kWaitEstablished, kWaitProof, kWaitOk, kUp, kClosed };

// One queued operation: a message (sent as fragments) or a one-sided operation.
struct Op {
  bool is_msg = true;
  bool fence = false;    // not an operation: the next one posted waits for earlier READs and atomics
  MsgHeader head;        // a message: its header (length filled in) ...
  Bytes body;            // ... and body
  size_t off = 0;        // body bytes already posted
  bool started = false;  // the first fragment is posted
  uint64_t seq = 0;  // outstanding-operation key (requests and one-sided operations; 0: none)
  ibv_wr_opcode opcode = IBV_WR_SEND;
  uint8_t* local = nullptr;
  uint32_t lkey = 0;
  uint64_t remote = 0;
  uint32_t rkey = 0;
  uint32_t len = 0;
  uint64_t a = 0, b = 0;     // atomics: add / expected, desired
  bool quiet = false;        // may be posted unsignalled (write_notify's WRITE): completed by a later completion
  uint32_t region = 0;       // local region the operation uses (deregistration waits for it)
  uint64_t key_incarnation = 0;  // the remote key's owner incarnation
  int64_t deadline = 0;      // queued while the peer is down: fails with EHOSTUNREACH at this time
  size_t size() const { return body.size() + 64; }
  bool reads_into(uint32_t r) const { return !is_msg && !fence && region == r && opcode == IBV_WR_RDMA_READ; }
};

// Something that completes later: a request (answered by a response) or a one-sided operation.
struct Outstanding {
  ReplyCb reply;
  RmaCb cb;
  AtomicCb acb;
  uint32_t region = 0;
  uint64_t* atomic_slot = nullptr;
};

struct Link {
  uint64_t id = 0;
  NodeId peer = 0;
  bool dialer = false;
  LinkState state = LinkState::kResolving;
  std::string who;
  CmIdPtr cm;
  CqPtr cq;
  std::vector<uint8_t> recv_buf, send_buf;
  std::vector<uint64_t> atomic_buf;
  MrPtr recv_mr, send_mr, atomic_mr;
  std::vector<uint32_t> free_send, free_atomic;
  uint32_t credits = 0;    // SENDs we may still post (data messages)
  uint32_t to_return = 0;  // receive buffers re-posted since we last told the peer
  uint32_t sq_used = 0, sq_max = 0;
  // Selective signalling: an inline SEND, and the WRITE of a write_notify, is posted unsignalled (no completion, so
  // no completion event and no wake-up for it), except every sig_every-th work request. Send-queue completions of an
  // RC queue pair come in posting order, so a signalled completion also retires the unsignalled requests posted
  // before it: sig_batches holds, per signalled request in flight, how many send-queue entries its completion frees
  // and the unsignalled WRITEs it completes (their callbacks run then; `quiet` collects them until the next
  // signalled request; flush_quiet() posts one when nothing else would come soon).
  struct SigBatch {
    uint32_t entries = 0;
    std::vector<uint64_t> quiet;  // outstanding-operation keys
  };
  uint32_t unsignalled = 0, sig_every = 1;
  std::deque<SigBatch> sig_batches;
  std::vector<uint64_t> quiet;
  uint32_t max_inline = 0;
  bool fence_next = false;  // the next work request carries IBV_SEND_FENCE
  bool armed = false;       // the CQ raises a completion event for its next completion (ibv_req_notify_cq)
  std::unique_ptr<conn::Handshake> hs;
  // Once authenticated: this connection's per-direction seals (transport/link_seal.h). Every SEND after the
  // handshake carries a tag over its header and payload (payload encrypted under "encrypt"), counted per direction.
  std::unique_ptr<FrameSeal> seal_tx, seal_rx;
  uint64_t peer_incarnation = 0;
  EventLoop::TimerId hs_timer = 0;
  // Reassembly of a fragmented message.
  MsgHeader rx_head{};
  Bytes rx_body;
  size_t rx_left = 0;
  int64_t last_send_ms = 0;  // the last SEND posted (what the peer's liveness check sees)
  int64_t last_rx_ms = 0;    // the last message received (the peer's liveness)
  VerbsDeviceInfo info;

  ~Link() {
    if (cm && cm->qp) rdma_destroy_qp(cm.get());
    send_mr.reset();
    recv_mr.reset();
    atomic_mr.reset();
    cq.reset();
    cm.reset();
  }
};

struct Peer {
  NodeId id = 0;
  sockaddr_storage addr{};
  Link* link = nullptr;     // authenticated
  Link* dialing = nullptr;  // our attempt in progress
  std::deque<Op> out;
  size_t out_bytes = 0;
  uint64_t next_seq = 1;
  std::map<uint64_t, Outstanding> outstanding;  // by seq: issue order
  std::unordered_map<uint64_t, uint64_t> open;  // requests we must answer: token -> the peer's request id
  EventLoop::TimerId connect_timer = 0, redial_timer = 0;
  std::optional<conn::Backoff> backoff;
  uint64_t incarnation = 0;  // of the peer's transport, learnt at the handshake: its keys carry it
  std::string last_error;
  PendingQueue waiting;  // pending_add(): retries waiting for queue space, FIFO (transport/pending.h)
};

struct Region {
  uint8_t* base = nullptr;
  uint64_t len = 0;
  MrPtr mr;
  uint32_t inflight = 0;  // queued or posted operations using it as their local buffer
  bool dead = false;      // deregistered: the MR goes when `inflight` drops to 0, then `done` runs
  DoneCb done;
};

class VerbsTransport final : public Transport {
 public:
  VerbsTransport(const Config& cfg, EventLoop& loop, const ClusterKey& key, const VerbsOptions& opt)
      : cfg_(cfg), loop_(loop), key_(key), opt_(opt) {
    for (const auto& n : cfg_.nodes) {
      if (n.id == cfg_.self) continue;
      peers_[n.id].id = n.id;
      peers_[n.id].backoff.emplace(opt_.reconnect_min_ms, opt_.reconnect_max_ms);
    }
    Nonce n = key_.random_nonce();  // libsodium randomness
    std::memcpy(&incarnation_, n.data(), sizeof incarnation_);
  }
  ~VerbsTransport() override {
    upcalls_ = false;
    stop();
    links_.clear();
    dead_.clear();
    regions_.clear();
    if (comp_ch_) loop_.remove(comp_ch_->fd);
    if (ch_) loop_.remove(ch_->fd);
    comp_ch_.reset();
    pd_.reset();
    listener_.reset();
    bound_.reset();
    ch_.reset();
  }

  // Binds an id to this node's address to find its device; creates the protection domain and completion channel.
  Status open() {
    const NodeConf* me = cfg_.node(cfg_.self);
    if (!me) return Status::err(EINVAL);
    ch_.reset(rdma_create_event_channel());
    if (!ch_) return Status::err(errno ? errno : ENODEV);
    set_nonblock(ch_->fd);
    rdma_cm_id* id = nullptr;
    if (rdma_create_id(ch_.get(), &id, nullptr, RDMA_PS_TCP) != 0) return Status::err(errno);
    bound_.reset(id);
    sockaddr_storage ss{};
    if (!resolve(me->address, 0, ss)) return Status::err(EINVAL);  // the port is bound by start() (the listener)
    if (rdma_bind_addr(id, reinterpret_cast<sockaddr*>(&ss)) != 0) {
      int e = errno;
      DIPC_LOG_ERROR("verbs: cannot bind {}: {}", me->address, strerror(e));
      return Status::err(e == EADDRNOTAVAIL || e == ENODEV ? ENODEV : e);
    }
    if (!id->verbs) return Status::err(ENODEV);  // the address has no RDMA device behind it
    ctx_ = id->verbs;
    ibv_port_attr pa{};
    if (ibv_query_port(ctx_, id->port_num, &pa) != 0 || pa.state != IBV_PORT_ACTIVE) {
      DIPC_LOG_ERROR("verbs: port {} of {} is not active", id->port_num, ibv_get_device_name(ctx_->device));
      return Status::err(ENODEV);
    }
    ibv_device_attr da{};
    if (ibv_query_device(ctx_, &da) != 0) return Status::err(errno);
    rd_atom_ = static_cast<uint8_t>(std::min(16, std::max(1, std::min(da.max_qp_rd_atom, da.max_qp_init_rd_atom))));
    atomics_ = da.atomic_cap != IBV_ATOMIC_NONE;
    pd_.reset(ibv_alloc_pd(ctx_));
    if (!pd_) return Status::err(errno);
    if (opt_.odp == VerbsOptions::Odp::kOn) {
      std::string why;
      odp_ = odp_usable(&why);
      if (!odp_) {
        DIPC_LOG_ERROR("verbs: transport.verbs.odp = \"on\" but {} has no usable On-Demand Paging: {}",
                       ibv_get_device_name(ctx_->device), why);
        return Status::err(ENOTSUP);
      }
    }
    dev_info_.odp = odp_;
    dev_info_.device = ibv_get_device_name(ctx_->device);
    dev_info_.port = id->port_num;
    dev_info_.mtu = mtu_bytes(pa.active_mtu);
    dev_info_.numa_node = device_numa_node(ctx_);
    comp_ch_.reset(ibv_create_comp_channel(ctx_));
    if (!comp_ch_) return Status::err(errno);
    set_nonblock(comp_ch_->fd);
    return Status::ok();
  }

  // On-Demand Paging as dipc uses it: RC READ/WRITE/ATOMIC target a region, and READ/WRITE use one as their local
  // buffer (the requester side counts as SEND). Messages use the links' own small pinned buffers. A probe
  // registration of one page checks that the kernel and provider take the flag, not only advertise it.
  bool odp_usable(std::string* why) {
    ibv_device_attr_ex dx{};
    if (ibv_query_device_ex(ctx_, nullptr, &dx) != 0) return *why = "ibv_query_device_ex failed", false;
    if (!(dx.odp_caps.general_caps & IBV_ODP_SUPPORT)) return *why = "the device does not support it", false;
    uint32_t need = IBV_ODP_SUPPORT_SEND | IBV_ODP_SUPPORT_READ | IBV_ODP_SUPPORT_WRITE;
    if (atomics_) need |= IBV_ODP_SUPPORT_ATOMIC;
    uint32_t rc = dx.odp_caps.per_transport_caps.rc_odp_caps;
    if ((rc & need) != need) return *why = fmt::format("RC caps {:#x}, dipc needs {:#x}", rc, need), false;
    long page = sysconf(_SC_PAGESIZE);
    void* probe = mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (probe == MAP_FAILED) return *why = "mmap failed", false;
    ibv_mr* mr = ibv_reg_mr(pd_.get(), probe, page, kAccessAll | IBV_ACCESS_ON_DEMAND);
    int e = errno;
    if (mr) ibv_dereg_mr(mr);
    munmap(probe, page);
    if (!mr) return *why = fmt::format("a registration with IBV_ACCESS_ON_DEMAND fails: {}", strerror(e)), false;
    return true;
  }

  const char* name() const override { return "verbs"; }
  Capabilities caps() const override {
    Capabilities c;
    c.native_rma = true;
    c.atomics = atomics_;
    c.pins_memory = !odp_;  // with On-Demand Paging the MR follows the mapping: a released frame is not pinned
    c.max_inline = max_inline_ > kMsgHeaderSize + seal_size() ? max_inline_ - kMsgHeaderSize - seal_size() : 0;
    c.max_message = kMaxPayload;
    return c;
  }

  Status set_handler(OpRange range, Handler* h) override {
    if (running_) return Status::err(EINVAL);
    return handlers_.add(range, h);
  }

  Status start() override {
    if (running_ || handlers_.empty()) return Status::err(EINVAL);
    for (auto& [id, p] : peers_) {
      const NodeConf* n = cfg_.node(id);
      if (!resolve(n->address, n->port, p.addr)) {
        DIPC_LOG_ERROR("verbs: cannot resolve node {} address '{}'", id, n->address);
        return Status::err(EINVAL);
      }
    }
    bool listen_needed =
        std::any_of(peers_.begin(), peers_.end(), [&](auto& kv) { return conn::dials(kv.first, cfg_.self); });
    if (listen_needed) {
      const NodeConf* me = cfg_.node(cfg_.self);
      sockaddr_storage ss{};
      rdma_cm_id* id = nullptr;
      if (!me || !resolve(me->address, me->port, ss)) return Status::err(EINVAL);
      if (rdma_create_id(ch_.get(), &id, nullptr, RDMA_PS_TCP) != 0) return Status::err(errno);
      listener_.reset(id);
      if (rdma_bind_addr(id, reinterpret_cast<sockaddr*>(&ss)) != 0 || rdma_listen(id, 64) != 0) {
        int e = errno;
        listener_.reset();
        DIPC_LOG_ERROR("verbs: cannot listen on {}:{}: {}", me->address, me->port, strerror(e));
        return Status::err(e);
      }
    }
    if (Status s = loop_.add(ch_->fd, EPOLLIN, [this](uint32_t) { on_cm_events(); }); !s) return s;
    if (Status s = loop_.add(comp_ch_->fd, EPOLLIN, [this](uint32_t) { on_cq_events(); }); !s) {
      loop_.remove(ch_->fd);
      return s;
    }
    // While the loop busy-polls (busy_poll_us, an awaited answer), it polls the CQs directly: no event, no wake-up.
    // Under busy_poll_us a CQ is not re-armed per event either (two system calls per completion): arm_all() re-arms
    // it before the loop sleeps.
    poller_ = loop_.add_poller([this] { return poll_all(); }, [this] { return arm_all(); });
    upcalls_ = true;
    running_ = true;
    for (auto& [id, p] : peers_)
      if (conn::dials(cfg_.self, id)) dial(p);
    if (opt_.heartbeat_ms > 0) beat_timer_ = loop_.add_timer(opt_.heartbeat_ms, [this] { heartbeat(); });
    return Status::ok();
  }

  void stop() override {
    bool was_running = running_;
    running_ = false;
    upcalls_ = false;
    if (beat_timer_) loop_.cancel_timer(beat_timer_);
    beat_timer_ = 0;
    if (poller_) loop_.remove_poller(poller_);
    poller_ = 0;
    listener_.reset();  // the port is free again (a restarted transport binds it)
    for (auto& [id, p] : peers_) {
      cancel(p.redial_timer);
      cancel(p.connect_timer);
    }
    std::vector<Link*> all;
    for (auto& [id, l] : links_) all.push_back(l.get());
    for (Link* l : all) close_link(*l, was_running ? "transport stopped" : "", false);
    for (auto& [id, p] : peers_) fail_all(p, ECONNRESET);
  }

  bool peer_up(NodeId peer) const override {
    auto it = peers_.find(peer);
    return it != peers_.end() && it->second.link;
  }

  // "verbs rxe0 port 1 gid 1 mtu 1024 numa 0" for an up link; the device alone otherwise.
  std::string peer_info(NodeId peer) const override {
    auto it = peers_.find(peer);
    const VerbsDeviceInfo& i = it != peers_.end() && it->second.link ? it->second.link->info : dev_info_;
    std::string s = fmt::format("verbs {} port {}", i.device, i.port);
    if (i.gid_index >= 0) s += fmt::format(" gid {} mtu {}", i.gid_index, i.mtu);
    if (i.numa_node >= 0) s += fmt::format(" numa {}", i.numa_node);
    if (i.odp) s += " odp";
    // What is in flight, when anything is (a stalled link shows here).
    if (it != peers_.end() && it->second.link) {
      const Peer& p = it->second;
      const Link& l = *p.link;
      if (!p.out.empty() || !p.outstanding.empty() || !p.waiting.empty() || l.sq_used)
        s += fmt::format(" (queued {} outstanding {} pending {} credits {} owed {} posted {})", p.out.size(),
                         p.outstanding.size(), p.waiting.size(), l.credits, l.to_return, l.sq_used);
    }
    return s;
  }

  // ---- two-sided ----------------------------------------------------------------------------------------------

  Status request(NodeId to, uint16_t op, Bytes body, ReplyCb cb) override {
    Peer* p = nullptr;
    if (Status s = admit(to, body.size(), p); !s) return s;
    uint64_t seq = p->next_seq++;
    p->outstanding.emplace(seq, Outstanding{std::move(cb), {}, {}, 0, nullptr});
    enqueue(*p, make_msg_op(MsgHeader{MsgKind::kRequest, op, 0, seq, 0, 0}, std::move(body)));
    return Status::ok();
  }

  Status reply(const ReplyToken& token, int status, Bytes body) override {
    Peer* p = find(token.peer);
    if (!p || !p->link) return Status::err(ECONNRESET);
    auto it = p->open.find(token.id);
    if (it == p->open.end()) return Status::err(ECONNRESET);
    if (status < 0 || status > 4095) return Status::err(EINVAL);
    if (body.size() > kMaxPayload) return Status::err(EMSGSIZE);
    uint64_t id = it->second;
    p->open.erase(it);
    enqueue(*p, make_msg_op(MsgHeader{MsgKind::kResponse, 0, 0, id, status, 0}, std::move(body)));
    return Status::ok();
  }

  Status send(NodeId to, uint16_t op, Bytes body) override {
    Peer* p = nullptr;
    if (Status s = admit(to, body.size(), p); !s) return s;
    enqueue(*p, make_msg_op(MsgHeader{MsgKind::kOneWay, op, 0, 0, 0, 0}, std::move(body)));
    return Status::ok();
  }

  // ---- back-pressure ------------------------------------------------------------------------------------------

  Status pending_add(NodeId peer, PendingFn fn) override {
    Peer* p = find(peer);
    if (!p || !fn) return Status::err(EINVAL);
    p->waiting.add(std::move(fn));
    schedule_retry(*p);
    return Status::ok();
  }

  // ---- memory domain: an MR per region; the packed key is {u64 address, u32 rkey, u64 incarnation} ------------

  Result<MemRegion> register_region(void* addr, size_t len) override {
    if (!addr || !len) return Status::err(EINVAL);
    // On-Demand Paging for whole pages only (the DSM's frames are): rxe's ODP (Linux 7.3) corrupts memory beside a
    // region that starts inside a page. Anything else is an ordinary, pinned registration.
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    const bool odp = odp_ && reinterpret_cast<uint64_t>(addr) % page == 0 && len % page == 0;
    ibv_mr* mr = ibv_reg_mr(pd_.get(), addr, len, kAccessAll | (odp ? IBV_ACCESS_ON_DEMAND : 0));
    if (!mr) {
      int e = errno;
      DIPC_LOG_ERROR("verbs: cannot register {} bytes of memory: {}", len, memlock_hint(e));
      return Status::err(e == EPERM || e == EAGAIN ? ENOMEM : e);
    }
    uint32_t id = next_region_++;
    Region& r = regions_[id];
    r.base = static_cast<uint8_t*>(addr);
    r.len = len;
    r.mr.reset(mr);
    Encoder e;
    e.u64(reinterpret_cast<uint64_t>(addr));
    e.u32(mr->rkey);
    e.u64(incarnation_);
    Bytes packed = e.take();
    MemRegion m;
    m.id = id;
    m.base = r.base;
    m.length = len;
    m.local_key = mr->lkey;
    m.remote = RemoteKey::make(cfg_.self, len, packed);
    return m;
  }

  // Queued reads into the region are cancelled (ECANCELED); everything else that uses it (posted work requests,
  // queued writes a later message may depend on) finishes first. The MR goes, and `done` runs, after that.
  void deregister_region(uint32_t id, DoneCb done) override {
    auto it = regions_.find(id);
    if (it == regions_.end() || it->second.dead) {
      if (done) done();
      return;
    }
    it->second.dead = true;
    it->second.done = std::move(done);
    for (auto& [pid, p] : peers_) {
      std::vector<uint64_t> cancelled;
      for (auto o = p.out.begin(); o != p.out.end();) {
        if (!o->reads_into(id)) {
          ++o;
          continue;
        }
        cancelled.push_back(o->seq);
        p.out_bytes -= o->size();
        o = p.out.erase(o);
      }
      for (uint64_t seq : cancelled) complete(p, seq, ECANCELED, 0);
    }
    // Unsignalled WRITEs from it complete only with a later completion: ask for one now (a failed post closes its
    // link, failing them).
    if (auto r = regions_.find(id); r != regions_.end() && r->second.inflight) {
      std::vector<Link*> all;
      for (auto& [lid, l] : links_) all.push_back(l.get());
      for (Link* l : all) flush_quiet(*l);
    }
    release_region(id, 0);  // frees it now if nothing uses it
  }

  // ---- one-sided ----------------------------------------------------------------------------------------------

  Status read(const RemoteKey& src, uint64_t src_off, const MemRegion& dst, uint64_t dst_off, size_t len,
              RmaCb cb) override {
    return rma(src, src_off, &dst, dst_off, len, IBV_WR_RDMA_READ, 0, 0, std::move(cb), {});
  }
  Status write(const MemRegion& src, uint64_t src_off, const RemoteKey& dst, uint64_t dst_off, size_t len,
               RmaCb cb) override {
    return rma(dst, dst_off, &src, src_off, len, IBV_WR_RDMA_WRITE, 0, 0, std::move(cb), {});
  }
  // RDMA WRITE then SEND on the one RC queue pair: the responder places the written data before it delivers the
  // later SEND's completion (InfiniBand ordering rules), so the message never overtakes the data.
  Status write_notify(const MemRegion& src, uint64_t src_off, const RemoteKey& dst, uint64_t dst_off, size_t len,
                      uint16_t op, Bytes msg, RmaCb cb) override {
    // The WRITE goes unsignalled: the receiver acts on the message, so nobody waits for the writer's completion and
    // the writer's daemon is not woken for it (its callback runs when a later completion retires it).
    Peer* p = nullptr;
    if (Status s = admit(dst.node(), msg.size() + len, p); !s) return s;
    if (Status s = rma(dst, dst_off, &src, src_off, len, IBV_WR_RDMA_WRITE, 0, 0, std::move(cb), {}, true); !s)
      return s;
    enqueue(*p, make_msg_op(MsgHeader{MsgKind::kOneWay, op, 0, 0, 0, 0}, std::move(msg)));
    return Status::ok();
  }
  // The next work request posted to the peer carries IBV_SEND_FENCE: it starts only once every earlier RDMA READ
  // and atomic has completed (WRITEs and SENDs are already ordered on an RC queue pair).
  Status fence(NodeId peer) override {
    Peer* p = find(peer);
    if (!p) return Status::err(EINVAL);
    Op o;
    o.is_msg = false;
    o.fence = true;
    enqueue(*p, std::move(o));
    return Status::ok();
  }
  Status fetch_add(const RemoteKey& dst, uint64_t offset, uint64_t add, AtomicCb cb) override {
    return rma(dst, offset, nullptr, 0, 8, IBV_WR_ATOMIC_FETCH_AND_ADD, add, 0, {}, std::move(cb));
  }
  Status compare_swap(const RemoteKey& dst, uint64_t offset, uint64_t expected, uint64_t desired,
                      AtomicCb cb) override {
    return rma(dst, offset, nullptr, 0, 8, IBV_WR_ATOMIC_CMP_AND_SWP, expected, desired, {}, std::move(cb));
  }

 private:
  Peer* find(NodeId id) {
    auto it = peers_.find(id);
    return it == peers_.end() ? nullptr : &it->second;
  }
  void cancel(EventLoop::TimerId& t) {
    if (t) loop_.cancel_timer(t);
    t = 0;
  }
  void reap() { dead_.clear(); }

  [[nodiscard]] Status admit(NodeId to, size_t bytes, Peer*& p) {
    p = find(to);
    if (!p) return Status::err(EINVAL);
    if (!running_) return Status::err(ECONNRESET);
    if (bytes > kMaxPayload) return Status::err(EMSGSIZE);
    if (p->waiting.blocks_new()) return Status::err(kNoResources);  // keep issue order behind retries
    if (p->out_bytes + bytes > opt_.max_queued_bytes) return Status::err(kNoResources);
    return Status::ok();
  }

  // Runs the peer's pending_add() retries once its queue has room again (or the link is gone: they then fail).
  void schedule_retry(Peer& p) {
    if (p.link && p.out_bytes > opt_.max_queued_bytes / 2) return;  // pump() calls again as the queue drains
    if (!p.waiting.want_run()) return;
    NodeId id = p.id;
    std::weak_ptr<int> alive = alive_;
    loop_.defer([this, id, alive] {
      if (alive.expired()) return;
      if (Peer* q = find(id)) q->waiting.run();
    });
  }

  static Op make_msg_op(MsgHeader h, Bytes body) {
    Op o;
    h.length = static_cast<uint32_t>(body.size());
    o.head = h;
    o.body = std::move(body);
    if (h.kind == MsgKind::kRequest) o.seq = h.id;
    return o;
  }

  // Remote address and rkey from a packed key; false if the key is not a verbs key.
  static bool unpack(const RemoteKey& k, uint64_t& addr, uint32_t& rkey, uint64_t& incarnation) {
    Decoder d(k.packed());
    addr = d.u64();
    rkey = d.u32();
    incarnation = d.u64();
    return d.done();
  }

  [[nodiscard]] Status rma(const RemoteKey& r, uint64_t offset, const MemRegion* local, uint64_t local_off,
                           size_t len, ibv_wr_opcode opcode, uint64_t a, uint64_t b, RmaCb cb, AtomicCb acb,
                           bool quiet = false) {
    bool atomic = opcode == IBV_WR_ATOMIC_FETCH_AND_ADD || opcode == IBV_WR_ATOMIC_CMP_AND_SWP;
    if (atomic && !atomics_) return Status::err(ENOTSUP);
    uint64_t raddr = 0, inc = 0;
    uint32_t rkey = 0;
    if (!unpack(r, raddr, rkey, inc)) return Status::err(EINVAL);
    if (offset > r.length() || len > r.length() - offset || len > kMaxRmaLen) return Status::err(EINVAL);
    if (atomic && (raddr + offset) % 8) return Status::err(EINVAL);
    Region* reg = nullptr;
    if (local) {
      auto it = regions_.find(local->id);
      if (it == regions_.end() || it->second.dead || local_off > it->second.len || len > it->second.len - local_off)
        return Status::err(EINVAL);
      reg = &it->second;
    }
    Peer* p = nullptr;
    if (Status s = admit(r.node(), 0, p); !s) return s;
    Op o;
    o.is_msg = false;
    o.opcode = opcode;
    o.remote = raddr + offset;
    o.rkey = rkey;
    o.key_incarnation = inc;
    o.len = static_cast<uint32_t>(len);
    o.a = a;
    o.b = b;
    o.quiet = quiet;
    if (reg) {
      o.local = reg->base + local_off;
      o.lkey = reg->mr->lkey;
      o.region = local->id;
      ++reg->inflight;
    }
    o.seq = p->next_seq++;
    p->outstanding.emplace(o.seq, Outstanding{{}, std::move(cb), std::move(acb), o.region, nullptr});
    enqueue(*p, std::move(o));
    return Status::ok();
  }

  // ---- output -------------------------------------------------------------------------------------------------

  void enqueue(Peer& p, Op o) {
    if (!p.link) o.deadline = EventLoop::now_ms() + opt_.connect_timeout_ms;
    p.out_bytes += o.size();
    p.out.push_back(std::move(o));
    if (p.link)
      pump(*p.link);
    else
      arm_connect_timer(p);
  }

  // Posts queued operations in order while the queue pair, the send buffers and the peer's credits allow.
  void pump(Link& l) {
    if (l.state != LinkState::kUp) return;
    Peer& p = peers_.at(l.peer);
    while (!p.out.empty() && l.state == LinkState::kUp) {
      Op& o = p.out.front();
      if (o.fence) {
        l.fence_next = true;
      } else if (o.is_msg) {
        if (!post_fragments(l, o)) break;
      } else if (o.key_incarnation != p.incarnation) {  // a key from before the peer restarted: never posted
        uint64_t seq = o.seq;
        p.out_bytes -= o.size();
        p.out.pop_front();
        complete(p, seq, EINVAL, 0);
        continue;
      } else {
        if (l.sq_used >= l.sq_max) break;
        if (!post_rma(l, p, o)) return;
      }
      p.out_bytes -= o.size();
      p.out.pop_front();
    }
    if (l.state != LinkState::kUp) return;
    if (l.to_return >= std::max(1u, opt_.credits / 2)) send_credit(l);
    schedule_retry(p);
  }

  // Posts what it can of message `o` (one SEND per fragment, each using one credit); true when all is posted.
  bool post_fragments(Link& l, Op& o) {
    const size_t room = opt_.buffer_size - kMsgHeaderSize - seal_size();
    while (!o.started || o.off < o.body.size()) {
      if (!l.credits || l.free_send.empty() || l.sq_used >= l.sq_max) return false;
      uint32_t slot = l.free_send.back();
      uint8_t* buf = l.send_buf.data() + size_t(slot) * opt_.buffer_size;
      size_t n = std::min(o.body.size() - o.off, room);
      MsgHeader h = o.started ? MsgHeader{MsgKind::kCont, 0, 0, 0, 0, static_cast<uint32_t>(n)} : o.head;
      h.credits = take_credits(l);
      encode_header(h, buf);
      if (n) std::memcpy(buf + kMsgHeaderSize, o.body.data() + o.off, n);
      if (!post_send(l, kMsgHeaderSize + seal(l, buf, n))) return false;
      --l.credits;
      o.off += n;
      o.started = true;
    }
    return true;
  }

  static unsigned take_fence(Link& l) {
    unsigned f = l.fence_next ? IBV_SEND_FENCE : 0;
    l.fence_next = false;
    return f;
  }

  uint16_t take_credits(Link& l) {
    uint16_t c = static_cast<uint16_t>(std::min<uint32_t>(l.to_return, 0xffff));
    l.to_return -= c;
    return c;
  }

  // Posts the SEND of the first n bytes of send buffer free_send.back(). A signalled SEND holds that buffer until
  // its completion; an inline one is copied at posting, so its buffer stays free and, but for every sig_every-th
  // request, it is posted unsignalled.
  bool post_send(Link& l, size_t n, bool force_signal = false) {
    uint32_t slot = l.free_send.back();
    const bool inl = n <= l.max_inline;
    const bool signalled = force_signal || !inl || l.unsignalled + 1 >= l.sig_every;
    ibv_sge sge{reinterpret_cast<uint64_t>(l.send_buf.data() + size_t(slot) * opt_.buffer_size),
                static_cast<uint32_t>(n), l.send_mr->lkey};
    ibv_send_wr wr{};
    ibv_send_wr* bad = nullptr;
    wr.wr_id = make_wr(l.id, kWrSend, slot);
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = (signalled ? IBV_SEND_SIGNALED : 0) | (inl ? IBV_SEND_INLINE : 0) | take_fence(l);
    if (int e = ibv_post_send(l.cm->qp, &wr, &bad); e != 0) {
      close_link(l, fmt::format("ibv_post_send: {}", strerror(e)), true);
      return false;
    }
    ++l.sq_used;
    if (signalled) {
      l.free_send.pop_back();
      signalled_posted(l);
    } else {
      ++l.unsignalled;
    }
    l.last_send_ms = EventLoop::now_ms();
    return true;
  }

  // A signalled work request was posted: its completion retires the unsignalled ones before it.
  static void signalled_posted(Link& l) {
    l.sig_batches.push_back(Link::SigBatch{l.unsignalled + 1, std::move(l.quiet)});
    l.quiet.clear();
    l.unsignalled = 0;
  }

  // A credit-only message: uses one of the spare receive buffers at the peer, never a credit. `signal`: with a
  // completion, so the unsignalled WRITEs before it complete.
  void send_credit(Link& l, bool signal = false) {
    if (l.free_send.empty() || l.sq_used >= l.sq_max) return;  // retried at the next completion
    uint8_t* buf = l.send_buf.data() + size_t(l.free_send.back()) * opt_.buffer_size;
    encode_header(MsgHeader{MsgKind::kCredit, 0, take_credits(l), 0, 0, 0}, buf);
    (void)post_send(l, kMsgHeaderSize + seal(l, buf, 0), signal);
  }

  // Completes the link's unsignalled WRITEs soon: a signalled credit message retires them (deregistration waits for
  // them; the heartbeat bounds how late their callbacks run).
  void flush_quiet(Link& l) {
    if (l.state == LinkState::kUp && !l.quiet.empty()) send_credit(l, true);
  }

  // Bytes a SEND after the handshake carries beyond header and payload.
  size_t seal_size() const { return cfg_.link_security == LinkSecurity::kNone ? 0 : kSealTagSize; }

  // Seals the message in `buf` (header, then `n` payload bytes) on an authenticated link: the tag goes after the
  // payload (encrypt: the payload is replaced by its ciphertext). Returns the bytes after the header to post.
  size_t seal(Link& l, uint8_t* buf, size_t n) {
    if (!l.seal_tx) return n;  // handshake messages
    ByteView part(buf + kMsgHeaderSize, n);
    if (l.seal_tx->mode() == LinkSecurity::kEncrypt) {
      Bytes cipher;
      l.seal_tx->seal(buf, std::span<const ByteView>(&part, 1), &cipher, buf + kMsgHeaderSize + n);
      if (n) std::memcpy(buf + kMsgHeaderSize, cipher.data(), n);
    } else if (l.seal_tx->mode() == LinkSecurity::kMac) {
      l.seal_tx->seal(buf, std::span<const ByteView>(&part, 1), nullptr, buf + kMsgHeaderSize + n);
    }
    if (corrupt_next_send_ && n) {  // verbs_test_corrupt_next_send()
      corrupt_next_send_ = false;
      buf[kMsgHeaderSize] ^= 1;
    }
    return n + l.seal_tx->overhead();
  }

 public:
  void corrupt_next_send() { corrupt_next_send_ = true; }
  void hold_completions(bool on) { hold_completions_ = on; }

 private:

  // False when the link closed.
  bool post_rma(Link& l, Peer& p, Op& o) {
    ibv_sge sge{};
    ibv_send_wr wr{};
    ibv_send_wr* bad = nullptr;
    wr.wr_id = make_wr(l.id, kWrRma, o.seq);
    wr.opcode = o.opcode;
    const bool signalled = !o.quiet || l.unsignalled + 1 >= l.sig_every;
    wr.send_flags = (signalled ? IBV_SEND_SIGNALED : 0) | take_fence(l);
    bool atomic = o.opcode == IBV_WR_ATOMIC_FETCH_AND_ADD || o.opcode == IBV_WR_ATOMIC_CMP_AND_SWP;
    if (atomic) {
      if (l.free_atomic.empty()) return true;  // cannot happen: one slot per send queue entry
      uint32_t s = l.free_atomic.back();
      l.free_atomic.pop_back();
      uint64_t* slot = &l.atomic_buf[s];
      p.outstanding.at(o.seq).atomic_slot = slot;
      sge = ibv_sge{reinterpret_cast<uint64_t>(slot), 8, l.atomic_mr->lkey};
      wr.wr.atomic.remote_addr = o.remote;
      wr.wr.atomic.rkey = o.rkey;
      wr.wr.atomic.compare_add = o.a;
      wr.wr.atomic.swap = o.b;
    } else {
      sge = ibv_sge{reinterpret_cast<uint64_t>(o.local), o.len, o.lkey};
      wr.wr.rdma.remote_addr = o.remote;
      wr.wr.rdma.rkey = o.rkey;
    }
    wr.sg_list = &sge;
    wr.num_sge = o.len ? 1 : 0;
    if (int e = ibv_post_send(l.cm->qp, &wr, &bad); e != 0) {
      close_link(l, fmt::format("ibv_post_send: {}", strerror(e)), true);
      return false;
    }
    ++l.sq_used;
    if (signalled) {
      signalled_posted(l);
    } else {
      ++l.unsignalled;
      l.quiet.push_back(o.seq);
    }
    return true;
  }

  // Liveness, as tcp does it: a link that sent no message for heartbeat_ms sends a credit-only one (it needs no
  // credit: the peer re-posts the spare buffer at once), so a live peer brings a message at least that often (one-
  // sided operations do not count: the peer's CPU sees none). A link that brought none for dead_peer_ms is closed.
  // The RC retry timeout alone is not enough: on Soft-RoCE a link whose carrier went down (a cut cable) never
  // completes its posted work requests with an error, and an idle link posts nothing that could fail.
  void heartbeat() {
    beat_timer_ = loop_.add_timer(opt_.heartbeat_ms, [this] { heartbeat(); });
    reap();
    int64_t now = EventLoop::now_ms();
    std::vector<Link*> silent, beat;
    for (auto& [id, l] : links_) {
      if (l->state != LinkState::kUp) continue;
      if (opt_.dead_peer_ms > 0 && now - l->last_rx_ms >= opt_.dead_peer_ms) {
        silent.push_back(l.get());
        continue;
      }
      // Also a link with unsignalled WRITEs not completed yet: the signalled credit message completes them.
      if (now - l->last_send_ms >= opt_.heartbeat_ms || !l->quiet.empty()) beat.push_back(l.get());
    }
    for (Link* l : beat)  // a failed post closes its link (moved out of links_): not while iterating it
      if (l->state == LinkState::kUp) send_credit(*l, !l->quiet.empty());
    for (Link* l : silent)
      close_link(*l, fmt::format("no message for {} ms (peer dead, hung or cut off)", now - l->last_rx_ms), true);
  }

  // ---- failure ------------------------------------------------------------------------------------------------

  void arm_connect_timer(Peer& p) {
    if (p.connect_timer || p.out.empty() || !running_) return;
    int64_t delay = std::max<int64_t>(0, p.out.front().deadline - EventLoop::now_ms());
    NodeId id = p.id;
    p.connect_timer = loop_.add_timer(delay, [this, id] { expire(peers_.at(id)); });
  }

  void expire(Peer& p) {
    reap();
    p.connect_timer = 0;
    if (p.link) return;
    int64_t now = EventLoop::now_ms();
    std::vector<uint64_t> seqs;
    while (!p.out.empty() && p.out.front().deadline <= now) {
      Op& o = p.out.front();
      if (o.seq) seqs.push_back(o.seq);
      p.out_bytes -= o.size();
      p.out.pop_front();
    }
    note(p, fmt::format("node {} unreachable for {} ms; failing operations queued for it", p.id,
                        opt_.connect_timeout_ms));
    for (uint64_t s : seqs) complete(p, s, EHOSTUNREACH, 0);
    arm_connect_timer(p);
  }

  // One operation using region `id` is over (n = 1; 0 only checks). A deregistered region goes when none is left.
  void release_region(uint32_t id, uint32_t n = 1) {
    auto it = regions_.find(id);
    if (it == regions_.end()) return;
    it->second.inflight -= std::min(n, it->second.inflight);
    if (!it->second.dead || it->second.inflight) return;
    DoneCb done = std::move(it->second.done);
    regions_.erase(it);
    if (done) done();
  }

  void complete(Peer& p, uint64_t seq, int err, uint64_t old) {
    auto it = p.outstanding.find(seq);
    if (it == p.outstanding.end()) return;
    Outstanding o = std::move(it->second);
    p.outstanding.erase(it);
    Status st = err ? Status::err(err) : Status::ok();
    if (o.reply) return o.reply(st, {});
    if (o.region) release_region(o.region);
    if (o.cb) o.cb(st);
    if (o.acb) o.acb(st, err ? 0 : old);
  }

  // Link lost or transport stopped: drops the queue and completes everything outstanding, in issue order.
  void fail_all(Peer& p, int err) {
    cancel(p.connect_timer);
    p.out.clear();
    p.out_bytes = 0;
    p.open.clear();
    std::map<uint64_t, Outstanding> all;
    all.swap(p.outstanding);
    schedule_retry(p);
    for (auto& [seq, o] : all) {
      Status st = Status::err(err);
      if (o.reply) {
        o.reply(st, {});
        continue;
      }
      if (o.region) release_region(o.region);
      if (o.cb) o.cb(st);
      if (o.acb) o.acb(st, 0);
    }
  }

  void note(Peer& p, const std::string& what) {
    if (what == p.last_error) return DIPC_LOG_DEBUG("verbs: {}", what);
    p.last_error = what;
    DIPC_LOG_WARN("verbs: {}", what);
  }

  // ---- connections --------------------------------------------------------------------------------------------

  Link& new_link(rdma_cm_id* id, bool dialer, NodeId peer, std::string who) {
    auto owned = std::make_unique<Link>();
    Link& l = *owned;
    l.id = next_link_++;
    l.cm.reset(id);
    l.dialer = dialer;
    l.peer = peer;
    l.who = std::move(who);
    id->context = reinterpret_cast<void*>(static_cast<uintptr_t>(l.id));
    uint64_t lid = l.id;
    links_.emplace(lid, std::move(owned));
    l.hs_timer = loop_.add_timer(opt_.handshake_timeout_ms, [this, lid] {
      reap();
      auto it = links_.find(lid);
      if (it == links_.end()) return;
      it->second->hs_timer = 0;
      close_link(*it->second, fmt::format("not connected and authenticated within {} ms", opt_.handshake_timeout_ms),
                 true);
    });
    return l;
  }

  // Creates the link's CQ and RC queue pair, registers its buffers and posts every receive buffer.
  Status setup_qp(Link& l) {
    if (l.cm->verbs != ctx_) return Status::err(ENODEV);  // reached through another device than ours
    // RC ack timeout 4.096 us * 2^18 = 1.07 s, times 8 attempts (retry_count 7): a peer that stops answering is
    // lost after about 9 s; shorter timeouts misfire under emulation (Soft-RoCE in a loaded VM).
    uint8_t ack_timeout = 18;
    if (rdma_set_option(l.cm.get(), RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &ack_timeout, sizeof ack_timeout) != 0)
      DIPC_LOG_DEBUG("verbs: cannot set the ack timeout: {}", strerror(errno));
    uint32_t recvs = opt_.credits + kSpareRecvs;
    uint32_t sends = opt_.credits + kSpareRecvs + 64;  // messages + one-sided operations + heartbeat
    l.cq.reset(ibv_create_cq(ctx_, static_cast<int>(recvs + sends), nullptr, comp_ch_.get(), 0));
    if (!l.cq) return Status::err(errno);
    cq_link_[l.cq.get()] = l.id;
    if (ibv_req_notify_cq(l.cq.get(), 0) != 0) return Status::err(errno);
    l.armed = true;
    ibv_qp_init_attr qa{};
    qa.send_cq = l.cq.get();
    qa.recv_cq = l.cq.get();
    qa.qp_type = IBV_QPT_RC;
    qa.cap.max_send_wr = sends;
    qa.cap.max_recv_wr = recvs;
    qa.cap.max_send_sge = 1;
    qa.cap.max_recv_sge = 1;
    qa.cap.max_inline_data = 220;
    if (rdma_create_qp(l.cm.get(), pd_.get(), &qa) != 0) {
      qa.cap.max_inline_data = 0;  // a device without inline sends
      if (rdma_create_qp(l.cm.get(), pd_.get(), &qa) != 0) return Status::err(errno);
    }
    l.sq_max = sends;
    l.sig_every = std::max(1u, sends / 4);
    // No remote access before authentication: until link_up() the queue pair serves SEND/RECV only.
    if (!set_remote_access(l, false)) return Status::err(EIO);
    l.max_inline = qa.cap.max_inline_data;
    max_inline_ = l.max_inline;
    l.recv_buf.assign(size_t(recvs) * opt_.buffer_size, 0);
    l.send_buf.assign(size_t(sends) * opt_.buffer_size, 0);
    l.atomic_buf.assign(sends, 0);
    l.recv_mr.reset(ibv_reg_mr(pd_.get(), l.recv_buf.data(), l.recv_buf.size(), IBV_ACCESS_LOCAL_WRITE));
    l.send_mr.reset(ibv_reg_mr(pd_.get(), l.send_buf.data(), l.send_buf.size(), 0));
    l.atomic_mr.reset(ibv_reg_mr(pd_.get(), l.atomic_buf.data(), l.atomic_buf.size() * 8, IBV_ACCESS_LOCAL_WRITE));
    if (!l.recv_mr || !l.send_mr || !l.atomic_mr) {
      int e = errno;
      DIPC_LOG_ERROR("verbs: cannot register link buffers: {}", memlock_hint(e));
      return Status::err(e);
    }
    for (uint32_t i = 0; i < sends; ++i) {
      l.free_send.push_back(sends - 1 - i);
      l.free_atomic.push_back(sends - 1 - i);
    }
    for (uint32_t i = 0; i < recvs; ++i)
      if (!post_recv(l, i)) return Status::err(EIO);
    l.credits = opt_.credits;
    return Status::ok();
  }

  bool post_recv(Link& l, uint32_t slot) {
    ibv_sge sge{reinterpret_cast<uint64_t>(l.recv_buf.data() + size_t(slot) * opt_.buffer_size),
                static_cast<uint32_t>(opt_.buffer_size), l.recv_mr->lkey};
    ibv_recv_wr wr{};
    ibv_recv_wr* bad = nullptr;
    wr.wr_id = make_wr(l.id, kWrRecv, slot);
    wr.sg_list = &sge;
    wr.num_sge = 1;
    return ibv_post_recv(l.cm->qp, &wr, &bad) == 0;
  }

  rdma_conn_param conn_param(const Bytes& pdata) const {
    rdma_conn_param cp{};
    cp.private_data = pdata.data();
    cp.private_data_len = static_cast<uint8_t>(pdata.size());
    cp.initiator_depth = rd_atom_;
    cp.responder_resources = rd_atom_;
    cp.retry_count = 7;
    cp.rnr_retry_count = 7;
    return cp;
  }

  // Grants (or withholds) remote access on the link's queue pair: only an authenticated peer gets it.
  bool set_remote_access(Link& l, bool on) {
    ibv_qp_attr a{};
    a.qp_access_flags = on ? (IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC) : 0;
    return ibv_modify_qp(l.cm->qp, &a, IBV_QP_ACCESS_FLAGS) == 0;
  }

  void dial(Peer& p) {
    p.redial_timer = 0;
    if (!running_ || p.link || p.dialing) return;
    rdma_cm_id* id = nullptr;
    if (rdma_create_id(ch_.get(), &id, nullptr, RDMA_PS_TCP) != 0) {
      note(p, fmt::format("rdma_create_id: {}", strerror(errno)));
      return schedule_redial(p);
    }
    const NodeConf* n = cfg_.node(p.id);
    Link& l = new_link(id, true, p.id, fmt::format("node {} at {}:{}", p.id, n->address, n->port));
    p.dialing = &l;
    sockaddr_storage src{};
    resolve(cfg_.me().address, 0, src);
    if (rdma_resolve_addr(id, reinterpret_cast<sockaddr*>(&src), reinterpret_cast<sockaddr*>(&p.addr),
                          static_cast<int>(opt_.handshake_timeout_ms / 2)) != 0)
      return close_link(l, fmt::format("rdma_resolve_addr: {}", strerror(errno)), true);
  }

  void schedule_redial(Peer& p) {
    if (!running_ || p.redial_timer || p.link || p.dialing || !conn::dials(cfg_.self, p.id)) return;
    NodeId id = p.id;
    p.redial_timer = loop_.add_timer(p.backoff->next(), [this, id] {
      reap();
      dial(peers_.at(id));
    });
  }

  Link* link_of(rdma_cm_id* id) {
    auto it = links_.find(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(id->context)));
    return it == links_.end() ? nullptr : it->second.get();
  }

  void on_cm_events() {
    reap();
    for (;;) {
      rdma_cm_event* ev = nullptr;
      if (rdma_get_cm_event(ch_.get(), &ev) != 0) return;  // EAGAIN: drained
      rdma_cm_event_type type = ev->event;
      rdma_cm_id* id = ev->id;
      int status = ev->status;
      Bytes pdata;
      if (ev->param.conn.private_data && ev->param.conn.private_data_len)
        pdata.assign(static_cast<const uint8_t*>(ev->param.conn.private_data),
                     static_cast<const uint8_t*>(ev->param.conn.private_data) + ev->param.conn.private_data_len);
      rdma_ack_cm_event(ev);  // from here on `id` may be destroyed
      if (type == RDMA_CM_EVENT_CONNECT_REQUEST) {
        on_connect_request(id, pdata);
        continue;
      }
      if (id == bound_.get() || id == listener_.get()) continue;
      Link* l = link_of(id);
      if (!l || l->state == LinkState::kClosed) continue;
      on_link_event(*l, type, status, pdata);
    }
  }

  void on_link_event(Link& l, rdma_cm_event_type type, int status, const Bytes& pdata) {
    switch (type) {
      case RDMA_CM_EVENT_ADDR_RESOLVED:
        if (rdma_resolve_route(l.cm.get(), static_cast<int>(opt_.handshake_timeout_ms / 2)) != 0)
          return close_link(l, fmt::format("rdma_resolve_route: {}", strerror(errno)), true);
        return;
      case RDMA_CM_EVENT_ROUTE_RESOLVED: {
        if (Status s = setup_qp(l); !s) return close_link(l, fmt::format("queue pair set-up: {}", s.str()), true);
        l.hs = std::make_unique<conn::Handshake>(key_, cfg_.self, conn::Handshake::Role::kDialer, l.peer, known(),
                                                cfg_.link_security);
        conn::HelloMsg hello = l.hs->start();
        Bytes pd = encode_conn(incarnation_, hello.payload);
        rdma_conn_param cp = conn_param(pd);
        if (rdma_connect(l.cm.get(), &cp) != 0)
          return close_link(l, fmt::format("rdma_connect: {}", strerror(errno)), true);
        l.state = LinkState::kConnecting;
        return;
      }
      case RDMA_CM_EVENT_ESTABLISHED:
        if (l.dialer) return on_accept_hello(l, pdata);
        if (l.state == LinkState::kWaitEstablished) l.state = LinkState::kWaitProof;  // (or up already: the proof
        return;                                                                     // came first)
      case RDMA_CM_EVENT_REJECTED:
        return close_link(l, "connection rejected (no dipcd over verbs there, or authentication failed)", true);
      case RDMA_CM_EVENT_DISCONNECTED: {
        // Completions that landed before the disconnect keep their own status (a remote access error is EINVAL,
        // not ECONNRESET): handle them first; one of them may close the link already.
        uint64_t lid = l.id;
        if (l.cq) drain_cq(lid);
        await_one_sided(lid);
        auto it = links_.find(lid);
        if (it == links_.end()) return;
        return close_link(*it->second, "disconnected by the peer", true);
      }
      case RDMA_CM_EVENT_DEVICE_REMOVAL:
        return close_link(l, "RDMA device removed", true);
      case RDMA_CM_EVENT_TIMEWAIT_EXIT:
        return;
      default:
        return close_link(l, fmt::format("{} (status {})", rdma_event_str(type), status), true);
    }
  }

  void on_connect_request(rdma_cm_id* id, const Bytes& pdata) {
    auto reject = [&](const std::string& why) {
      DIPC_LOG_WARN("verbs: rejecting connection request: {}", why);
      rdma_reject(id, nullptr, 0);
      rdma_destroy_id(id);
    };
    if (!running_) return reject("transport stopped");
    uint64_t inc = 0;
    ByteView hello;
    if (!decode_conn(pdata, inc, hello)) return reject("malformed hello (not a dipc peer)");
    if (unauthenticated_ >= opt_.max_unauthenticated) return reject("too many handshakes in progress");
    auto hs = std::make_unique<conn::Handshake>(key_, cfg_.self, conn::Handshake::Role::kAcceptor, 0, known(),
                                                 cfg_.link_security);
    std::vector<conn::HelloMsg> out;
    if (hs->on_message(conn::kClientHello, hello, out) == conn::Handshake::Result::kFailed || out.size() != 1)
      return reject(hs->error());
    NodeId peer = hs->peer();
    Link& l = new_link(id, false, peer, fmt::format("node {} from {}", peer, cfg_.node(peer)->address));
    l.state = LinkState::kWaitEstablished;
    ++unauthenticated_;
    l.hs = std::move(hs);
    l.peer_incarnation = inc;
    if (Status s = setup_qp(l); !s) {
      rdma_reject(id, nullptr, 0);
      return close_link(l, fmt::format("queue pair set-up: {}", s.str()), true);
    }
    Bytes pd = encode_conn(incarnation_, out[0].payload);
    rdma_conn_param cp = conn_param(pd);
    if (rdma_accept(id, &cp) != 0) return close_link(l, fmt::format("rdma_accept: {}", strerror(errno)), true);
  }

  conn::Handshake::KnownFn known() const {
    return [this](NodeId n) { return n != cfg_.self && cfg_.node(n) != nullptr; };
  }

  // Dialer: the server hello came with the accept.
  void on_accept_hello(Link& l, const Bytes& pdata) {
    uint64_t inc = 0;
    ByteView hello;
    if (!l.hs || !decode_conn(pdata, inc, hello)) return close_link(l, "malformed accept hello", true);
    l.peer_incarnation = inc;
    l.state = LinkState::kWaitOk;
    on_hello(l, conn::kServerHello, hello);
  }

  // Feeds a handshake message to the link's conn::Handshake and sends what it answers.
  void on_hello(Link& l, uint16_t op, ByteView body) {
    std::vector<conn::HelloMsg> out;
    conn::Handshake::Result r = l.hs->on_message(op, body, out);
    if (r == conn::Handshake::Result::kFailed) return close_link(l, l.hs->error(), true);
    for (const conn::HelloMsg& m : out) send_hs(l, m.op, m.payload);
    if (r == conn::Handshake::Result::kDone && l.state != LinkState::kClosed) link_up(l);
  }

  void send_hs(Link& l, uint16_t op, ByteView body) {
    if (l.free_send.empty() || !l.credits) return close_link(l, "no buffer for a handshake message", true);
    uint32_t slot = l.free_send.back();
    uint8_t* buf = l.send_buf.data() + size_t(slot) * opt_.buffer_size;
    encode_header(MsgHeader{MsgKind::kHello, op, take_credits(l), 0, 0, static_cast<uint32_t>(body.size())}, buf);
    if (!body.empty()) std::memcpy(buf + kMsgHeaderSize, body.data(), body.size());
    if (post_send(l, kMsgHeaderSize + body.size())) --l.credits;
  }

  void link_up(Link& l) {
    Peer& p = peers_.at(l.peer);
    if (p.link && p.link != &l) close_link(*p.link, "replaced by a new authenticated connection (peer restarted?)", true);
    if (l.state == LinkState::kClosed || !running_) return;
    if (!l.dialer) --unauthenticated_;
    if (!set_remote_access(l, true)) return close_link(l, "cannot grant remote access", true);
    conn::LinkKeys keys = l.hs->keys();
    l.seal_tx = std::make_unique<FrameSeal>(cfg_.link_security, keys.tx);
    l.seal_rx = std::make_unique<FrameSeal>(cfg_.link_security, keys.rx);
    l.state = LinkState::kUp;
    l.last_rx_ms = EventLoop::now_ms();
    cancel(l.hs_timer);
    if (p.dialing == &l) p.dialing = nullptr;
    p.link = &l;
    p.backoff->reset();
    p.incarnation = l.peer_incarnation;
    p.last_error.clear();
    cancel(p.connect_timer);
    l.info = dev_info_;
    l.info.gid_index = gid_index_of(l.cm.get());
    ibv_qp_attr qa{};
    ibv_qp_init_attr qi{};
    if (ibv_query_qp(l.cm->qp, &qa, IBV_QP_PATH_MTU, &qi) == 0) l.info.mtu = mtu_bytes(qa.path_mtu);
    DIPC_LOG_INFO("verbs: link to {} up ({} port {} gid {} mtu {})", l.who, l.info.device, l.info.port,
                  l.info.gid_index, l.info.mtu);
    if (upcalls_) handlers_.peer(p.id, true);
    if (l.state == LinkState::kUp) pump(l);
  }

  void close_link(Link& l, const std::string& why, bool log) {
    if (l.state == LinkState::kClosed) return;
    bool was_up = l.state == LinkState::kUp;
    if (!was_up && !l.dialer) --unauthenticated_;
    l.state = LinkState::kClosed;
    cancel(l.hs_timer);
    rdma_disconnect(l.cm.get());
    auto it = links_.find(l.id);
    if (l.cq) cq_link_.erase(l.cq.get());
    dead_.push_back(std::move(it->second));  // destroyed at the next entry point: we may be inside its CQ poll
    links_.erase(it);
    Peer* p = l.peer ? find(l.peer) : nullptr;
    if (log && p && (was_up || l.dialer))
      was_up ? DIPC_LOG_WARN("verbs: link to {} lost: {}", l.who, why) : note(*p, fmt::format("{}: {}", l.who, why));
    else if (log)
      DIPC_LOG_WARN("verbs: closing connection {}: {}", l.who, why);
    if (!p) return;
    if (p->dialing == &l) p->dialing = nullptr;
    if (p->link == &l) p->link = nullptr;
    schedule_redial(*p);
    if (!was_up) return;
    fail_all(*p, ECONNRESET);
    if (upcalls_) handlers_.peer(p->id, false);
  }

  // ---- completions ----------------------------------------------------------------------------------------------

  // Reads every completion event, re-arms each CQ before draining it (a completion after the drain raises a new
  // event), and handles the completions. A busy-polling loop (busy_poll_us) polls the CQ itself until it sleeps:
  // the CQ is left unarmed until then (arm_all()), so completions meanwhile raise no event to read.
  void on_cq_events() {
    reap();
    const bool polled = loop_.busy_poll_us() > 0;
    for (;;) {
      ibv_cq* cq = nullptr;
      void* ctx = nullptr;
      if (ibv_get_cq_event(comp_ch_.get(), &cq, &ctx) != 0) break;
      ibv_ack_cq_events(cq, 1);
      auto it = cq_link_.find(cq);
      if (it == cq_link_.end()) continue;
      uint64_t lid = it->second;
      auto l = links_.find(lid);
      if (l == links_.end()) continue;
      l->second->armed = !polled;
      if (!polled) ibv_req_notify_cq(cq, 0);
      drain_cq(lid);
    }
  }

  // The loop is about to sleep: every unarmed CQ is armed, then drained once more (a completion that came between
  // the last poll and the arming raises no event). How many completions were handled.
  int arm_all() {
    reap();
    std::vector<uint64_t> ids;
    for (auto& [id, l] : links_) {
      if (l->armed || !l->cq) continue;
      ibv_req_notify_cq(l->cq.get(), 0);
      l->armed = true;
      ids.push_back(id);
    }
    int n = 0;
    for (uint64_t id : ids) n += drain_cq(id);
    return n;
  }

  // Every link's CQ, without waiting for an event (the EventLoop poller); how many completions were handled.
  int poll_all() {
    reap();
    std::vector<uint64_t> ids;
    ids.reserve(links_.size());
    for (auto& [id, l] : links_) ids.push_back(id);
    int n = 0;
    for (uint64_t id : ids) n += drain_cq(id);
    return n;
  }

  int drain_cq(uint64_t lid) {
    if (hold_completions_) return 0;  // verbs_test_hold_completions(): a completer slower than rdma_cm's events
    ibv_wc wc[32];
    int total = 0;
    for (;;) {
      auto it = links_.find(lid);
      if (it == links_.end()) return total;
      Link& l = *it->second;
      if (!l.cq) return total;  // a link still resolving its address has no CQ yet (the poller sees every link)
      int n = ibv_poll_cq(l.cq.get(), 32, wc);
      if (n <= 0) return total;
      total += n;
      for (int i = 0; i < n; ++i) {
        auto lit = links_.find(wr_link(wc[i].wr_id));
        if (lit == links_.end()) continue;  // the link closed meanwhile: its operations were failed already
        on_completion(*lit->second, wc[i]);
      }
      auto again = links_.find(lid);
      if (again != links_.end()) pump(*again->second);
    }
  }

  // Is a one-sided operation of this link's peer posted (outstanding, and no longer in the queue)?
  bool one_sided_posted(const Link& l) const {
    const Peer& p = peers_.at(l.peer);
    size_t queued = 0;
    for (const Op& o : p.out)
      if (!o.is_msg && o.seq) ++queued;
    size_t rma = 0;
    for (const auto& [seq, o] : p.outstanding)
      if (!o.reply) ++rma;
    return rma > queued;
  }

  // The peer disconnected while one-sided operations were posted on the link. It may have left because one of them
  // failed there (a key it no longer knows puts its queue pair in error), and the NAK that reports the remote access
  // error here can come after rdma_cm's DISCONNECTED event (seen on Soft-RoCE, whose completer runs in a kernel
  // work queue). Our queue pair is still connected, so its CQ is polled a bounded time (kDisconnectDrainMs) until
  // the signalled work posted has completed: an error completion closes the link itself, that operation failing as
  // what it is (EINVAL) and the rest ECONNRESET. A failed receive (flushed) is skipped: the link goes anyway. What
  // has not completed when the time is up was lost with the link: ECONNRESET (close_link).
  void await_one_sided(uint64_t lid) {
    const int64_t start = EventLoop::now_ms(), deadline = start + kDisconnectDrainMs;
    std::string who;
    int got = 0;
    auto done = [&] {
      if (got) DIPC_LOG_INFO("verbs: {} disconnected with one-sided operations posted: {} completions awaited ({} ms)",
                             who, got, EventLoop::now_ms() - start);
    };
    for (;;) {
      auto it = links_.find(lid);
      if (it == links_.end()) return done();
      Link& l = *it->second;
      who = l.who;
      if (!l.cq || l.state != LinkState::kUp || l.sig_batches.empty() || !one_sided_posted(l)) return done();
      ibv_wc wc[32];
      int n = ibv_poll_cq(l.cq.get(), 32, wc);
      if (n < 0) return done();
      got += n;
      for (int i = 0; i < n; ++i) {
        if (links_.find(lid) == links_.end()) return done();
        if (wr_type(wc[i].wr_id) == kWrRecv && wc[i].status != IBV_WC_SUCCESS) continue;
        on_completion(l, wc[i]);
      }
      if (n > 0) continue;
      if (EventLoop::now_ms() >= deadline) return done();
      std::this_thread::sleep_for(std::chrono::microseconds(50));  // the device's completer needs the CPU
    }
  }

  void on_completion(Link& l, const ibv_wc& wc) {
    WrType t = wr_type(wc.wr_id);
    std::vector<uint64_t> retired;  // unsignalled WRITEs this completion retires
    if (t != kWrRecv && !l.sig_batches.empty()) {
      l.sq_used -= std::min(l.sq_used, l.sig_batches.front().entries);
      retired = std::move(l.sig_batches.front().quiet);
      l.sig_batches.pop_front();
    }
    if (wc.status != IBV_WC_SUCCESS) {
      // A key the owner no longer knows, or out of its bounds: that operation fails with EINVAL; the RC queue pair
      // is in error now, so the link goes and everything else fails with ECONNRESET.
      if (t == kWrRma && (wc.status == IBV_WC_REM_ACCESS_ERR || wc.status == IBV_WC_REM_INV_REQ_ERR)) {
        uint64_t seq = wr_value(wc.wr_id);
        Peer& p = peers_.at(l.peer);
        auto it = p.outstanding.find(seq);
        if (it != p.outstanding.end() && it->second.atomic_slot)
          l.free_atomic.push_back(static_cast<uint32_t>(it->second.atomic_slot - l.atomic_buf.data()));
        complete(p, seq, EINVAL, 0);
      }
      std::string why = fmt::format("completion error: {} (vendor error {:#x})", ibv_wc_status_str(wc.status),
                                    wc.vendor_err);
      if (t == kWrRecv && l.state != LinkState::kUp) why += " during authentication";
      return close_link(l, why, true);  // the retired ones are still outstanding: they fail with the link
    }
    // Before this request's own completion: they were posted before it. (A callback may close the link: the rest
    // then failed with it, and complete() finds nothing.)
    uint64_t lid = l.id;
    for (uint64_t seq : retired) {
      if (links_.find(lid) == links_.end()) return;
      on_rma_done(l, seq);
    }
    if (links_.find(lid) == links_.end()) return;
    switch (t) {
      case kWrSend:
        l.free_send.push_back(static_cast<uint32_t>(wr_value(wc.wr_id)));
        return;
      case kWrRma:
        return on_rma_done(l, wr_value(wc.wr_id));
      case kWrRecv:
        return on_recv(l, static_cast<uint32_t>(wr_value(wc.wr_id)), wc.byte_len);
    }
  }

  void on_rma_done(Link& l, uint64_t seq) {
    Peer& p = peers_.at(l.peer);
    auto it = p.outstanding.find(seq);
    if (it == p.outstanding.end()) return;
    uint64_t old = 0;
    if (uint64_t* slot = it->second.atomic_slot) {
      old = *slot;
      l.free_atomic.push_back(static_cast<uint32_t>(slot - l.atomic_buf.data()));
    }
    complete(p, seq, 0, old);
  }

  void on_recv(Link& l, uint32_t slot, uint32_t len) {
    uint64_t lid = l.id;
    uint8_t* raw = l.recv_buf.data() + size_t(slot) * opt_.buffer_size;
    if (l.seal_rx && l.seal_rx->overhead()) {
      // Authenticated link: nothing of a message reaches the decoder before its tag checks out (decrypted in place
      // under "encrypt": the receive buffer is ours until re-posted).
      size_t extra = l.seal_rx->overhead();
      if (len < kMsgHeaderSize + extra) return close_link(l, "message shorter than its authentication tag", true);
      len -= static_cast<uint32_t>(extra);
      if (!l.seal_rx->open(raw, std::span<uint8_t>(raw + kMsgHeaderSize, len - kMsgHeaderSize), raw + len))
        return close_link(l, fmt::format("message {} failed authentication under link_security \"{}\": forged, "
                                         "altered, replayed or reordered on the path; dropping the connection",
                                         l.seal_rx->seq(), link_security_name(l.seal_rx->mode())),
                          true);
    }
    ByteView buf(raw, len);
    MsgHeader h;
    if (!decode_header(buf, h)) return close_link(l, "malformed message header", true);
    ByteView payload = buf.subspan(kMsgHeaderSize);
    l.credits += h.credits;
    l.last_rx_ms = EventLoop::now_ms();
    handle(l, h, payload);
    // Re-post the buffer once the upcall returned (it viewed the buffer); the link may have closed meanwhile.
    auto it = links_.find(lid);
    if (it == links_.end()) return;
    if (!post_recv(l, slot)) return close_link(l, "ibv_post_recv failed", true);
    if (h.kind != MsgKind::kCredit) ++l.to_return;  // a spare buffer is no credit: not returned
  }

  void handle(Link& l, const MsgHeader& h, ByteView payload) {
    if (h.kind == MsgKind::kCredit) {
      if (!payload.empty()) close_link(l, "credit message with a body", true);
      return;
    }
    if (l.state != LinkState::kUp) return on_handshake(l, h, payload);
    if (h.kind == MsgKind::kCont) {
      if (!l.rx_left || payload.size() != h.length || h.length > l.rx_left)
        return close_link(l, "unexpected continuation fragment", true);
      l.rx_body.insert(l.rx_body.end(), payload.begin(), payload.end());
      l.rx_left -= h.length;
      if (l.rx_left) return;
      Bytes body = std::move(l.rx_body);
      l.rx_body.clear();
      return deliver(l, l.rx_head, body);
    }
    if (l.rx_left) return close_link(l, "new message inside a fragmented one", true);
    if (h.kind == MsgKind::kHello) return close_link(l, "handshake message on an authenticated link", true);
    if (h.length > kMaxPayload) return close_link(l, fmt::format("message of {} bytes", h.length), true);
    if (payload.size() < h.length) {  // first fragment
      if (payload.size() != opt_.buffer_size - kMsgHeaderSize - (l.seal_rx ? l.seal_rx->overhead() : 0))
        return close_link(l, "short first fragment", true);
      l.rx_head = h;
      l.rx_body.assign(payload.begin(), payload.end());
      l.rx_left = h.length - payload.size();
      return;
    }
    if (payload.size() != h.length) return close_link(l, "message longer than its header says", true);
    deliver(l, h, payload);
  }

  void deliver(Link& l, const MsgHeader& h, ByteView body) {
    Peer& p = peers_.at(l.peer);
    switch (h.kind) {
      case MsgKind::kRequest: {
        uint64_t token = next_token_++;
        p.open.emplace(token, h.id);
        Handler* hd = upcalls_ ? handlers_.find(h.op) : nullptr;
        if (hd) return hd->on_request(p.id, h.op, body, ReplyToken{p.id, token});
        (void)reply(ReplyToken{p.id, token}, ENOSYS, {});
        return;
      }
      case MsgKind::kOneWay:
        if (Handler* hd = upcalls_ ? handlers_.find(h.op) : nullptr) hd->on_message(p.id, h.op, body);
        return;
      case MsgKind::kResponse: {
        auto it = p.outstanding.find(h.id);
        if (it == p.outstanding.end() || !it->second.reply)
          return close_link(l, fmt::format("response to unknown request {}", h.id), true);
        ReplyCb cb = std::move(it->second.reply);
        p.outstanding.erase(it);
        return cb(h.status ? Status::err(h.status) : Status::ok(), body);
      }
      default:
        return close_link(l, "unexpected message kind", true);
    }
  }

  void on_handshake(Link& l, const MsgHeader& h, ByteView payload) {
    // The proof SEND may beat the acceptor's ESTABLISHED event; the dialer has its hs once connected.
    if (h.kind != MsgKind::kHello || !l.hs || payload.size() != h.length)
      return close_link(l, "unexpected message before authentication", true);
    on_hello(l, h.op, payload);
  }

  const Config& cfg_;
  EventLoop& loop_;
  const ClusterKey& key_;
  const VerbsOptions opt_;
  HandlerTable handlers_;
  bool upcalls_ = false;
  bool running_ = false;
  bool corrupt_next_send_ = false;
  bool hold_completions_ = false;  // verbs_test_hold_completions()
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
  uint32_t max_inline_ = 0;
  uint64_t incarnation_ = 0;  // random: remote keys name it (verbs_wire.h)
  EventChannelPtr ch_;
  CmIdPtr bound_;     // bound to this node's address (port 0): finds the device
  CmIdPtr listener_;  // bound to address:port and listening, while started (when a lower-id peer dials us)
  ibv_context* ctx_ = nullptr;  // owned by rdma_cm
  PdPtr pd_;
  CompChannelPtr comp_ch_;
  uint8_t rd_atom_ = 1;
  bool atomics_ = false;
  bool odp_ = false;  // the DSM's regions are registered with IBV_ACCESS_ON_DEMAND (VerbsOptions::odp)
  VerbsDeviceInfo dev_info_;
  EventLoop::TimerId beat_timer_ = 0;
  EventLoop::PollerId poller_ = 0;
  int unauthenticated_ = 0;
  uint64_t next_link_ = 1;
  uint64_t next_token_ = 1;
  uint32_t next_region_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Link>> links_;
  std::vector<std::unique_ptr<Link>> dead_;
  std::unordered_map<ibv_cq*, uint64_t> cq_link_;
  std::unordered_map<NodeId, Peer> peers_;
  std::unordered_map<uint32_t, Region> regions_;  // declared after links: destroyed before the PD
};

}  // namespace

bool verbs_usable(const std::string& address, VerbsDeviceInfo* info) {
  sockaddr_storage ss{};
  if (!resolve(address, 0, ss)) return false;
  EventChannelPtr ch(rdma_create_event_channel());
  if (!ch) return false;
  rdma_cm_id* raw = nullptr;
  if (rdma_create_id(ch.get(), &raw, nullptr, RDMA_PS_TCP) != 0) return false;
  CmIdPtr id(raw);
  if (rdma_bind_addr(raw, reinterpret_cast<sockaddr*>(&ss)) != 0 || !raw->verbs) return false;
  ibv_port_attr pa{};
  if (ibv_query_port(raw->verbs, raw->port_num, &pa) != 0 || pa.state != IBV_PORT_ACTIVE) return false;
  if (info) {
    info->device = ibv_get_device_name(raw->verbs->device);
    info->port = raw->port_num;
    info->mtu = mtu_bytes(pa.active_mtu);
    info->numa_node = device_numa_node(raw->verbs);
  }
  return true;
}

Status parse_verbs_options(const Config& cfg, VerbsOptions& o, std::string* error) {
  SectionReader r(cfg, "verbs");
  bool ok = r.get("connect_timeout_ms", o.connect_timeout_ms, 1, int64_t{3600} * 1000) &&
            r.get("handshake_timeout_ms", o.handshake_timeout_ms, 1, int64_t{600} * 1000) &&
            r.get("reconnect_min_ms", o.reconnect_min_ms, 1, int64_t{600} * 1000) &&
            r.get("reconnect_max_ms", o.reconnect_max_ms, 1, int64_t{600} * 1000) &&
            r.get("credits", o.credits, 2, 4096) && r.get("buffer_size", o.buffer_size, 256, 1 << 20) &&
            r.get("max_queued_bytes", o.max_queued_bytes, int64_t{2} * kMaxPayload, int64_t{1} << 40) &&
            r.get("heartbeat_ms", o.heartbeat_ms, 0, int64_t{3600} * 1000) &&
            r.get("dead_peer_ms", o.dead_peer_ms, 0, int64_t{3600} * 1000) &&
            r.get("max_unauthenticated", o.max_unauthenticated, 1, 65535);
  std::string odp;
  ok = ok && r.get_string("odp", odp) && r.finish();
  std::string err = r.error();
  if (const char* env = getenv("DIPC_VERBS_ODP"); ok && env && *env) odp = env;
  if (ok && !odp.empty()) {
    if (odp == "on") o.odp = VerbsOptions::Odp::kOn;
    else if (odp == "off") o.odp = VerbsOptions::Odp::kOff;
    else {
      ok = false;
      err = "transport.verbs.odp (or DIPC_VERBS_ODP) must be \"on\" or \"off\", not \"" + odp + "\"";
    }
  }
  if (ok && o.reconnect_max_ms < o.reconnect_min_ms) {
    ok = false;
    err = "transport.verbs.reconnect_max_ms must not be below reconnect_min_ms";
  }
  if (ok && o.dead_peer_ms > 0 && o.heartbeat_ms > 0 && o.dead_peer_ms < 2 * o.heartbeat_ms) {
    ok = false;
    err = "transport.verbs.dead_peer_ms must be at least twice heartbeat_ms (or 0)";
  }
  if (!ok && error) *error = err;
  return ok ? Status::ok() : Status::err(EINVAL);
}

std::string verbs_local_address() {
  ifaddrs* ifs = nullptr;
  std::string r;
  if (getifaddrs(&ifs) != 0) return r;
  for (ifaddrs* i = ifs; i && r.empty(); i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof buf);
    if (std::string(buf) != "127.0.0.1" && verbs_usable(buf)) r = buf;
  }
  freeifaddrs(ifs);
  return r;
}

bool verbs_test_hold_completions(Transport& t, bool on) {
  auto* v = dynamic_cast<VerbsTransport*>(&t);
  if (v) v->hold_completions(on);
  return v != nullptr;
}

bool verbs_test_corrupt_next_send(Transport& t) {
  auto* v = dynamic_cast<VerbsTransport*>(&t);
  if (v) v->corrupt_next_send();
  return v != nullptr;
}

Result<std::unique_ptr<Transport>> make_verbs_transport(const Config& cfg, EventLoop& loop, const ClusterKey& key,
                                                        const VerbsOptions& opt) {
  auto t = std::make_unique<VerbsTransport>(cfg, loop, key, opt);
  if (Status s = t->open(); !s) return s;
  return std::unique_ptr<Transport>(std::move(t));
}

}  // namespace dipc::transport
