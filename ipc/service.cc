#include "ipc/service.h"

#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <ctime>
#include <memory>
#include <set>
#include <sstream>
#include <tuple>

#include "common/log.h"
#include "ipc/ids.h"

namespace dipc::ipc {

static_assert(transport::ops::kIpc.contains(kHello) && transport::ops::kIpc.contains(kObjList),
              "ipc ops travel in ipc's range of transport/ops.h");

namespace {
int64_t now_s() { return static_cast<int64_t>(time(nullptr)); }

// A transport failure reaching a remote object is reported as EIO: no SysV call defines a better errno for an
// unreachable home node (README, "What differs from local SysV IPC").
int map_transport(const Status& st) {
  int c = st.code();
  return (c == ECONNRESET || c == EHOSTUNREACH || c == ECONNREFUSED || c == ETIMEDOUT) ? EIO : c;
}

Bytes unknown_id() { return Bytes{kUnknownIdMarker}; }
bool is_unknown_id(int st, ByteView b) { return st == EINVAL && b.size() == 1 && b[0] == kUnknownIdMarker; }
uint16_t token_node(uint64_t token) { return static_cast<uint16_t>(token >> 48); }
}  // namespace

Service::Service(const Config& cfg, EventLoop& loop, transport::Transport* tr, dsm::Manager& dsm, const Limits& lim)
    : cfg_(cfg), loop_(loop), tr_(tr), lim_(lim), dsm_(dsm) {
  for (const auto& n : cfg_.nodes) node_ids_.push_back(n.id);
  std::sort(node_ids_.begin(), node_ids_.end());
}

Service::~Service() {
  for (const auto& [id, k] : ksems_) ksem_registry_.remove(k->kid());
  ksems_.clear();  // removes the kernel sets: their waiters get EIDRM
}

uint16_t Service::referee_for(int32_t key) const {
  return node_ids_[static_cast<uint32_t>(key) % node_ids_.size()];
}

// ---------------------------------------------------------------------------------------------------------------
// Plumbing: the same handlers serve local calls (direct) and remote ones (through the transport).

void Service::call(uint16_t node, uint16_t op, Bytes body, std::function<void(int, ByteView)> cb) {
  if (node == cfg_.self) {
    dispatch_request(node, op, body, [cb](int st, Bytes b) { cb(st, b); });
    return;
  }
  auto done = [cb](Status st, ByteView b) { cb(st.is_ok() ? 0 : map_transport(st), b); };
  Status s = issue(node, [this, node, op, body = std::move(body), done] { return tr_->request(node, op, body, done); },
                   [cb](Status st) { cb(map_transport(st), {}); });
  if (!s) cb(map_transport(s), {});
}

Status Service::issue(uint16_t node, std::function<Status()> op, std::function<void(Status)> failed) {
  Status s = op();
  if (!s.retryable()) return s;
  // No resources: the transport runs it again, in order, when it has room (transport.h, BACK-PRESSURE).
  return tr_->pending_add(node, [op = std::move(op), failed = std::move(failed)] {
    Status r = op();
    if (!r && !r.retryable() && failed) failed(r);
    return r;
  });
}

void Service::notify(uint16_t node, uint16_t op, Bytes body) {
  if (node == cfg_.self) {
    dispatch_message(node, op, body);
    return;
  }
  auto log = [op, node](Status st) { DIPC_LOG_WARN("message {} to node {} not sent: {}", op, node, st.str()); };
  Status s = issue(node, [this, node, op, body = std::move(body)] { return tr_->send(node, op, body); }, log);
  if (!s) log(s);
}

void Service::on_request(transport::NodeId from, uint16_t op, ByteView body, transport::ReplyToken token) {
  dispatch_request(from, op, body, [this, token](int st, Bytes b) { (void)tr_->reply(token, st, std::move(b)); });
}

void Service::on_message(transport::NodeId from, uint16_t op, ByteView body) { dispatch_message(from, op, body); }

void Service::dispatch_request(uint16_t from, uint16_t op, ByteView body, std::function<void(int, Bytes)> reply) {
  if (op == kKeyAcquire) {
    KeyReq req;
    if (!decode_body(body, req)) return reply(EPROTO, {});
    return referee_acquire(from, req, std::move(reply));
  }
  if (op == kObjList) {  // no HomeHeader: a listing checks no permission (like ipcs)
    if (!body.empty()) return reply(EPROTO, {});
    ObjListResp r;
    r.entries = local_objects();
    return reply(0, encode_body(r));
  }
  Decoder d(body);
  HomeHeader h;
  if (!h.decode(d) || h.creds.node != from) {
    DIPC_LOG_WARN("node {}: malformed or misattributed request {}", from, op);
    return reply(EPROTO, {});
  }
  size_t hdr = body.size() - d.remaining();
  home_request(op, h, body.subspan(hdr), std::move(reply));
}

void Service::dispatch_message(uint16_t from, uint16_t op, ByteView body) {
  switch (op) {
    case kShmDestroy: {
      ShmDestroyMsg m;
      if (decode_body(body, m) && id_node(m.id) == from) dsm_.destroy(static_cast<uint32_t>(m.id));
      return;
    }
    case kKeyBind:
    case kKeyRelease:
    case kKeyUnbind: {
      KeyReq req;
      if (decode_body(body, req)) referee_update(from, op, req);
      return;
    }
    case kBlockedNote:
      return on_blocked_note(from, body);
    case kHomeCancel: {
      HomeCancelMsg m;
      if (decode_body(body, m) && token_node(m.token) == from) home_cancel(m.token);
      return;
    }
    case kProcExit: {
      ProcExitMsg m;
      if (!decode_body(body, m)) return;
      ProcKey pk{from, m.pid};
      for (auto& [id, k] : ksems_) k->apply_undo(pk, limits(LimitFiles::kSem).semvmx);
      for (auto& [id, s] : sems_.by_id) {
        if (!s->has_undo(pk)) continue;
        s->apply_undo(pk, now_s());
        drain(*s);
      }
      return;
    }
    default:
      DIPC_LOG_WARN("node {}: unknown message {}", from, op);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Local clients.

void Service::client_request(const Creds& c, uint16_t op, ByteView body, uint64_t token, ReplyFn reply) {
  HomeHeader h{c, global_token(token)};
  h.creds.node = cfg_.self;
  if (op == kSemGet || op == kMsgGet || op == kShmGet) {
    GetReq req;
    if (!decode_body(body, req)) return reply(EINVAL, {});
    ObjType t = op == kSemGet ? ObjType::kSem : op == kMsgGet ? ObjType::kMsg : ObjType::kShm;
    return do_get(t, h.creds, req, std::move(reply), 0);
  }
  if (op == kIpcInfo || op == kIpcStat) return client_ipc_info(h, op, body, std::move(reply));
  if (op < kSemOp || (op > kMsgCtl && op != kShmCtl) || op == kMsgGet) return reply(EINVAL, {});
  Decoder peek(body);
  int32_t id = peek.i32();
  if (!peek.ok()) return reply(EINVAL, {});
  uint16_t home = id_node(id);
  if (!is_dipc_id(id) || !cfg_.node(home)) return reply(EINVAL, unknown_id());
  if (home == cfg_.self) return home_request(op, h, body, std::move(reply));

  Encoder e;
  h.encode(e);
  e.raw(body);
  uint64_t gt = h.token;
  inflight_[gt] = home;
  // The answer is on the caller's critical path: poll for it a while rather than sleep (bounded, yields the CPU).
  if (cfg_.answer_poll_us) loop_.poll_until_us(EventLoop::now_us() + cfg_.answer_poll_us);
  auto done = [this, gt, reply](Status st, ByteView b) {
    inflight_.erase(gt);
    reply(st.is_ok() ? 0 : map_transport(st), Bytes(b.begin(), b.end()));
  };
  Status s = issue(home, [this, home, op, body = e.take(), done] { return tr_->request(home, op, body, done); },
                   [done](Status st) { done(st, {}); });
  if (!s) done(s, {});
}

void Service::client_cancel(uint64_t token) {
  uint64_t gt = global_token(token);
  auto it = inflight_.find(gt);
  if (it != inflight_.end())
    notify(it->second, kHomeCancel, encode_body(HomeCancelMsg{gt}));
  else
    home_cancel(gt);
}

// ---------------------------------------------------------------------------------------------------------------
// Shared memory: the home keeps the segment's bookkeeping (ShmSeg); every node that attaches it keeps a DSM
// segment (dsm::Manager) whose view the local processes map.

void Service::client_shmat(const Creds& c, ByteView body, FdReplyFn reply) {
  ShmAtReq req;
  if (!decode_body(body, req)) return reply(EINVAL, {}, -1);
  uint16_t home = id_node(req.id);
  if (!is_dipc_id(req.id) || !cfg_.node(home)) return reply(EINVAL, unknown_id(), -1);
  Creds cc = c;
  cc.node = cfg_.self;
  Encoder e;
  HomeHeader{cc, 0}.encode(e);
  req.encode(e);
  call(home, kShmAt, e.take(), [this, req, home, reply](int st, ByteView b) {
    ShmAtResp r;
    if (st) return reply(st, Bytes(b.begin(), b.end()), -1);
    if (!decode_body(b, r) || r.mapped == 0 || r.block == 0) return reply(EIO, {}, -1);
    auto seg = dsm_.open(static_cast<uint32_t>(req.id), home, r.size, r.block);
    if (!seg) return reply(seg.status().code() == EINVAL ? EINVAL : ENOMEM, {}, -1);
    if ((*seg)->mapped_size() != r.mapped || (*seg)->block_size() != r.block) return reply(EIO, {}, -1);
    // A read-only attach gets a read-only descriptor: the program cannot map it writable.
    std::string path = "/proc/self/fd/" + std::to_string((*seg)->view_fd());
    int fd = (req.flg & SHM_RDONLY) ? open(path.c_str(), O_RDONLY | O_CLOEXEC) : fcntl((*seg)->view_fd(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return reply(EMFILE, {}, -1);
    r.mapped = (*seg)->mapped_size();
    reply(0, encode_body(r), fd);
  });
}

void Service::client_shm_attached(const Creds& c, uint64_t conn, ByteView body, int uffd, ReplyFn reply) {
  ShmAttachReq req;
  if (!decode_body(body, req)) {
    close(uffd);
    return reply(EINVAL, {});
  }
  dsm::Segment* seg = dsm_.find(static_cast<uint32_t>(req.id));
  if (!seg) {
    close(uffd);
    return reply(EINVAL, {});
  }
  uint64_t aid = next_attach_++;
  if (Status st = seg->add_attach(aid, uffd, req.addr, req.len, req.flg & SHM_RDONLY); !st) return reply(st.code(), {});
  Creds cc = c;
  cc.node = cfg_.self;
  attaches_[conn].push_back(LocalAttach{aid, req.id, req.addr, cc});
  Encoder e;
  HomeHeader{cc, 0}.encode(e);
  req.encode(e);
  call(id_node(req.id), kShmAttached, e.take(), [this, conn, aid, id = req.id, reply](int st, ByteView) {
    if (st) {
      if (dsm::Segment* s = dsm_.find(static_cast<uint32_t>(id))) s->remove_attach(aid);
      auto it = attaches_.find(conn);
      if (it != attaches_.end()) std::erase_if(it->second, [aid](const LocalAttach& a) { return a.attach == aid; });
    }
    reply(st, {});
  });
}

void Service::shm_detach_at_home(const Creds& c, int32_t id, ReplyFn reply) {
  Encoder e;
  HomeHeader{c, 0}.encode(e);
  ShmAttachReq{id, 0, 0, 0}.encode(e);
  call(id_node(id), kShmDt, e.take(), [reply](int st, ByteView) { reply(st, {}); });
}

void Service::client_shmdt(const Creds& c, uint64_t conn, ByteView body, ReplyFn reply) {
  ShmAttachReq req;
  if (!decode_body(body, req)) return reply(EINVAL, {});
  auto it = attaches_.find(conn);
  if (it == attaches_.end()) return reply(EINVAL, {});
  auto a = std::find_if(it->second.begin(), it->second.end(),
                        [&](const LocalAttach& x) { return x.id == req.id && x.addr == req.addr; });
  if (a == it->second.end()) return reply(EINVAL, {});
  if (dsm::Segment* s = dsm_.find(static_cast<uint32_t>(a->id))) s->remove_attach(a->attach);
  Creds cc = c;
  cc.node = cfg_.self;
  int32_t id = a->id;
  it->second.erase(a);
  if (it->second.empty()) attaches_.erase(it);
  shm_detach_at_home(cc, id, std::move(reply));
}

void Service::client_conn_closed(uint64_t conn) {
  auto it = attaches_.find(conn);
  if (it == attaches_.end()) return;
  std::vector<LocalAttach> list = std::move(it->second);
  attaches_.erase(it);
  for (const auto& a : list) {
    if (dsm::Segment* s = dsm_.find(static_cast<uint32_t>(a.id))) s->remove_attach(a.attach);
    shm_detach_at_home(a.creds, a.id, [](int, Bytes) {});
  }
}

ShmSeg* Service::find_shm(int32_t id) {
  auto it = shms_.by_id.find(id);
  return it == shms_.by_id.end() ? nullptr : it->second.get();
}

void Service::home_shmat(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  ShmAtReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  ShmSeg* s = find_shm(r.id);
  if (!s) return reply(EINVAL, unknown_id());
  if (int e = s->attach_check(h.creds, r.flg)) return reply(e, {});
  dsm::Segment* seg = dsm_.find(static_cast<uint32_t>(r.id));
  reply(0, encode_body(ShmAtResp{s->size(), seg ? seg->mapped_size() : 0, seg ? seg->block_size() : 0}));
}

void Service::home_shm_attach(uint16_t op, const HomeHeader& h, ByteView body, ReplyFn& reply) {
  ShmAttachReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  ShmSeg* s = find_shm(r.id);
  if (!s) return reply(EINVAL, {});
  if (op == kShmAttached) {
    // The attach's rights are checked again here: kShmAt granted a mode, this names the mode actually mapped.
    if (int e = s->attach_check(h.creds, r.flg)) return reply(e, {});
    s->attached(h.creds.pid, now_s());
  } else {
    s->detached(h.creds.pid, now_s());
    shm_destroy_if_gone(r.id);
  }
  reply(0, {});
}

void Service::home_shmctl(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  ShmCtlReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  ShmSeg* s = find_shm(r.id);
  if (!s) return reply(EINVAL, unknown_id());
  int e = 0;
  switch (r.cmd) {
    case IPC_STAT: {
      ShmCtlResp resp;
      e = s->stat(h.creds, resp.stat);
      return e ? reply(e, {}) : reply(0, encode_body(resp));
    }
    case IPC_SET:
      return reply(s->set(r.uid, r.gid, r.mode, h.creds, now_s()), {});
    case IPC_RMID: {
      int32_t key = s->perm().key;
      bool was_removed = s->removed();
      e = s->rmid(h.creds);
      if (!e && !was_removed && key != IPC_PRIVATE)
        notify(referee_for(key), kKeyUnbind, encode_body(KeyReq{ObjType::kShm, key, 0, r.id}));
      reply(e, {});
      if (!e) shm_destroy_if_gone(r.id);
      return;
    }
    case SHM_LOCK:
    case SHM_UNLOCK:
      return reply(s->lock(h.creds, r.cmd == SHM_LOCK, now_s()), {});
    default:
      return reply(EINVAL, {});
  }
}

void Service::shm_destroy_if_gone(int32_t id) {
  auto it = shms_.by_id.find(id);
  if (it == shms_.by_id.end() || !it->second->gone()) return;
  shm_pages_ -= (it->second->size() + dsm_.page_size() - 1) / dsm_.page_size();
  shms_.by_id.erase(it);
  shms_.free.push_back(id_slot(id));
  for (uint16_t n : node_ids_)
    if (n == cfg_.self || tr_->peer_up(n)) notify(n, kShmDestroy, encode_body(ShmDestroyMsg{id}));
}

void Service::process_exited(int32_t pid) {
  for (uint16_t n : node_ids_)
    if (n == cfg_.self || tr_->peer_up(n)) notify(n, kProcExit, encode_body(ProcExitMsg{pid}));
}

// ---------------------------------------------------------------------------------------------------------------
// *get: resolve a key cluster-wide through its referee, or create.

void Service::do_get(ObjType type, const Creds& c, const GetReq& req, ReplyFn reply, int attempts) {
  if (type == ObjType::kSem && (req.nsems < 0 || req.nsems > limits(LimitFiles::kSem).semmsl)) return reply(EINVAL, {});
  if (req.key == IPC_PRIVATE) {
    int32_t id = 0;
    int e = create_local(type, c, req.key, req.nsems, req.flg, id, req.size);
    return e ? reply(e, {}) : reply(0, encode_body(IdResp{id}));
  }
  uint16_t referee = referee_for(req.key);
  KeyReq kr{type, req.key, req.flg, 0};
  call(referee, kKeyAcquire, encode_body(kr), [this, type, c, req, reply, attempts, referee](int st, ByteView b) {
    KeyResp kresp;
    if (st) return reply(st, {});
    if (!decode_body(b, kresp)) return reply(EIO, {});
    if (kresp.verdict == KeyVerdict::kCreate) {
      int32_t id = 0;
      int e = create_local(type, c, req.key, req.nsems, req.flg, id, req.size);
      notify(referee, e ? kKeyRelease : kKeyBind, encode_body(KeyReq{type, req.key, 0, id}));
      return e ? reply(e, {}) : reply(0, encode_body(IdResp{id}));
    }
    // Found: the home checks permissions and size, as ipc_check_perms() and sem_more_checks() do.
    int32_t id = kresp.id;
    Encoder e;
    HomeHeader{c, 0}.encode(e);
    OpenReq{type, id, req.nsems, req.flg, req.size}.encode(e);
    call(id_node(id), kOpen, e.take(), [this, type, c, req, reply, attempts, id](int st2, ByteView b2) {
      // The object was removed between the referee's answer and ours: ask again (its unbind is on the way).
      if (is_unknown_id(st2, b2) && attempts < 50) return do_get(type, c, req, reply, attempts + 1);
      if (st2) return reply(st2, {});
      reply(0, encode_body(IdResp{id}));
    });
  });
}

int Service::create_local(ObjType type, const Creds& c, int32_t key, int32_t nsems, int32_t flg, int32_t& id,
                          uint64_t size) {
  uint64_t pages = (size + dsm_.page_size() - 1) / dsm_.page_size();
  limits(type == ObjType::kSem ? LimitFiles::kSem
         : type == ObjType::kMsg ? LimitFiles::kMsgMax | LimitFiles::kMsgMnb | LimitFiles::kMsgMni
                                 : LimitFiles::kShm);
  if (type == ObjType::kSem) {
    if (nsems == 0) return EINVAL;
    if (used_sems_ + nsems > lim_.semmns || static_cast<int>(sems_.by_id.size()) >= lim_.semmni) return ENOSPC;
  } else if (type == ObjType::kMsg) {
    if (static_cast<int>(msgs_.by_id.size()) >= lim_.msgmni) return ENOSPC;
  } else {
    // newseg(): SHMMIN (1) .. shmmax, then shmall (pages) and shmmni.
    if (size < 1 || size > lim_.shmmax) return EINVAL;
    if (shm_pages_ + pages < shm_pages_ || shm_pages_ + pages > lim_.shmall) return ENOSPC;
    if (flg & SHM_HUGETLB)
      if (int e = hugetlb_shm_check(c, size, flg)) return e;
    if (static_cast<int>(shms_.by_id.size()) >= lim_.shmmni) return ENOSPC;
  }
  auto alloc = [&](auto& slots) -> int {
    uint32_t slot;
    if (slots.next < kSlots) {  // fresh slots first, then the one freed longest ago
      slot = slots.next++;
      slots.seq.push_back(static_cast<uint16_t>(first_gen(incarnation_)));
    } else if (!slots.free.empty()) {
      slot = slots.free.front();
      slots.free.pop_front();
      slots.seq[slot] = static_cast<uint16_t>(next_gen(slots.seq[slot]));
    } else {
      return ENOSPC;
    }
    id = make_id(cfg_.self, slots.seq[slot], slot);
    return 0;
  };
  Perm p;
  p.key = key;
  p.uid = p.cuid = c.uid;
  p.gid = p.cgid = c.gid;
  p.mode = static_cast<uint16_t>(flg & 0777);
  int64_t now = now_s();
  if (type == ObjType::kSem) {
    if (int e = alloc(sems_)) return e;
    p.seq = static_cast<uint16_t>(id_seq(id));
    sems_.by_id[id] = std::make_unique<SemSet>(p, nsems, lim_, now);
    used_sems_ += nsems;
    ksem_create(c, id, nsems, p.mode);
  } else if (type == ObjType::kMsg) {
    if (int e = alloc(msgs_)) return e;
    p.seq = static_cast<uint16_t>(id_seq(id));
    msgs_.by_id[id] = std::make_unique<MsgQueue>(p, lim_, now);
  } else {
    if (int e = alloc(shms_)) return e;
    // The home's frames are the segment's backing store.
    auto seg = dsm_.open(static_cast<uint32_t>(id), cfg_.self, size);
    if (!seg) {
      shms_.free.push_back(id_slot(id));
      return ENOMEM;
    }
    p.seq = static_cast<uint16_t>(id_seq(id));
    shms_.by_id[id] = std::make_unique<ShmSeg>(p, size, c.pid, now);
    shm_pages_ += pages;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Referee: one authority per key serialises creation.

void Service::referee_acquire(uint16_t from, const KeyReq& req, std::function<void(int, Bytes)> reply) {
  auto k = std::make_pair(static_cast<uint8_t>(req.type), req.key);
  auto it = keys_.find(k);
  if (it == keys_.end()) {
    if (!(req.flg & IPC_CREAT)) return reply(ENOENT, {});
    Reservation r;
    r.node = from;
    keys_.emplace(k, std::move(r));
    return reply(0, encode_body(KeyResp{KeyVerdict::kCreate, 0}));
  }
  Reservation& r = it->second;
  if (!r.bound) {
    r.waiting.push_back(Acquire{from, req, std::move(reply)});
    return;
  }
  if ((req.flg & IPC_CREAT) && (req.flg & IPC_EXCL)) return reply(EEXIST, {});
  reply(0, encode_body(KeyResp{KeyVerdict::kFound, r.id}));
}

void Service::referee_update(uint16_t from, uint16_t op, const KeyReq& req) {
  auto k = std::make_pair(static_cast<uint8_t>(req.type), req.key);
  auto it = keys_.find(k);
  if (it == keys_.end()) return;
  Reservation& r = it->second;
  std::vector<Acquire> waiting;
  if (op == kKeyBind && !r.bound && r.node == from) {
    r.bound = true;
    r.id = req.id;
    waiting.swap(r.waiting);
  } else if (op == kKeyRelease && !r.bound && r.node == from) {
    waiting.swap(r.waiting);
    keys_.erase(it);
  } else if (op == kKeyUnbind && r.bound && r.id == req.id && id_node(req.id) == from) {
    waiting.swap(r.waiting);
    keys_.erase(it);
  } else {
    return;
  }
  for (auto& a : waiting) referee_acquire(a.from, a.req, std::move(a.reply));
}

void Service::on_peer(transport::NodeId peer, bool up) {
  DIPC_LOG_INFO("link to node {} {}", peer, up ? "up" : "down");  // dsm::Manager saw it first (daemon/ order)
  if (up) return resync_with(peer);
  // Creations the lost node had reserved will never be bound.
  for (auto it = keys_.begin(); it != keys_.end();) {
    if (!it->second.bound && it->second.node == peer) {
      auto waiting = std::move(it->second.waiting);
      it = keys_.erase(it);
      for (auto& a : waiting) referee_acquire(a.from, a.req, std::move(a.reply));
    } else {
      ++it;
    }
  }
  // Blocked calls of the lost node's processes can no longer be answered: withdraw them, applying nothing.
  std::vector<uint64_t> lost;
  for (auto& [token, p] : pending_)
    if (token_node(token) == peer) lost.push_back(token);
  for (uint64_t t : lost) home_cancel(t);
}

void Service::resync_with(uint16_t peer) {
  // Bindings to the peer's objects as they are now: those the answer does not confirm are dropped (bindings made
  // while the answer is on its way are left alone).
  auto before = std::make_shared<std::map<std::pair<uint8_t, int32_t>, int32_t>>();
  for (const auto& [k, r] : keys_)
    if (r.bound && id_node(r.id) == peer) (*before)[k] = r.id;
  Status s = tr_->request(peer, kObjList, {}, [this, peer, before](Status st, ByteView b) {
    ObjListResp resp;
    if (!st || !decode_body(b, resp)) {  // the link went down again: the next up retries
      DIPC_LOG_DEBUG("key resync with node {}: {}", peer, st.str());
      return;
    }
    size_t learnt = 0, dropped = 0;
    std::set<std::pair<uint8_t, int32_t>> live;
    for (const ObjEntry& e : resp.entries) {
      if (e.key == IPC_PRIVATE || id_node(e.id) != peer || referee_for(e.key) != cfg_.self) continue;
      if (e.type == ObjType::kShm && (e.mode & SHM_DEST)) continue;  // removed: its key is free
      auto k = std::make_pair(static_cast<uint8_t>(e.type), e.key);
      live.insert(k);
      auto it = keys_.find(k);
      if (it == keys_.end()) {
        Reservation r;
        r.node = peer;
        r.bound = true;
        r.id = e.id;
        keys_.emplace(k, std::move(r));
        ++learnt;
      } else if (it->second.bound && it->second.id != e.id) {
        DIPC_LOG_WARN("key {:#x} is bound to id {} but node {} also hosts id {} with it; keeping the first",
                      e.key, it->second.id, peer, e.id);
      }
    }
    for (const auto& [k, id] : *before) {
      auto it = keys_.find(k);
      if (it != keys_.end() && it->second.bound && it->second.id == id && !live.count(k)) {
        DIPC_LOG_INFO("key {:#x}: id {} is gone from node {} (restarted): unbound", k.second, id, peer);
        keys_.erase(it);
        ++dropped;
      }
    }
    if (learnt || dropped) DIPC_LOG_INFO("keys of node {}: {} learnt, {} dropped", peer, learnt, dropped);
    std::set<int32_t> segs;
    for (const ObjEntry& e : resp.entries)
      if (e.type == ObjType::kShm) segs.insert(e.id);
    std::set<int32_t> gone;
    for (auto& [conn, list] : attaches_)
      std::erase_if(list, [&](const LocalAttach& a) {
        if (id_node(a.id) != peer || segs.count(a.id)) return false;
        kill(a.creds.pid, SIGBUS);  // before its faults are released: it never runs on the lost data
        gone.insert(a.id);
        return true;
      });
    for (int32_t id : gone) {
      DIPC_LOG_WARN("segment {} is gone with its home node {} (restarted): its local processes get SIGBUS", id, peer);
      dsm_.destroy(static_cast<uint32_t>(id));
    }
  });
  (void)s;  // not sent (link already down): the next up retries
}

// ---------------------------------------------------------------------------------------------------------------
// Home: the objects themselves.

SemSet* Service::find_sem(int32_t id) {
  auto it = sems_.by_id.find(id);
  return it == sems_.by_id.end() ? nullptr : it->second.get();
}

MsgQueue* Service::find_msg(int32_t id) {
  auto it = msgs_.by_id.find(id);
  return it == msgs_.by_id.end() ? nullptr : it->second.get();
}

void Service::home_request(uint16_t op, const HomeHeader& h, ByteView body, ReplyFn reply) {
  switch (op) {
    case kOpen:
      return home_open(h, body, reply);
    case kSemOp:
      return home_semop(h, body, reply);
    case kSemCtl:
      return home_semctl(h, body, reply);
    case kMsgSnd:
      return home_msgsnd(h, body, reply);
    case kMsgRcv:
      return home_msgrcv(h, body, reply);
    case kMsgCtl:
      return home_msgctl(h, body, reply);
    case kShmAt:
      return home_shmat(h, body, reply);
    case kShmAttached:
    case kShmDt:
      return home_shm_attach(op, h, body, reply);
    case kShmCtl:
      return home_shmctl(h, body, reply);
    case kStatSlot:
      return home_stat_slot(h, body, reply);
    default:
      return reply(EINVAL, {});
  }
}

void Service::home_open(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  OpenReq r;
  if (!decode_body(body, r)) return reply(EPROTO, {});
  const Perm* perm = nullptr;
  SemSet* s = nullptr;
  if (r.type == ObjType::kSem) {
    s = find_sem(r.id);
    if (s) perm = &s->perm();
  } else if (r.type == ObjType::kMsg) {
    if (MsgQueue* q = find_msg(r.id)) perm = &q->perm();
  } else if (ShmSeg* g = find_shm(r.id)) {
    if (g->removed()) return reply(EINVAL, unknown_id());  // its key is private now: ask the referee again
    if (int e = g->open_check(h.creds, r.size, r.flg)) return reply(e, {});
    return reply(0, encode_body(IdResp{r.id}));
  }
  if (!perm) return reply(EINVAL, unknown_id());
  if (int e = ipc_check(*perm, h.creds, r.flg)) return reply(e, {});
  if (s && r.nsems > s->nsems()) return reply(EINVAL, {});
  reply(0, encode_body(IdResp{r.id}));
}

void Service::home_semop(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  SemOpReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  if (r.sops.empty()) return reply(EINVAL, {});
  if (static_cast<int>(r.sops.size()) > limits(LimitFiles::kSem, true).semopm) return reply(E2BIG, {});
  SemSet* s = find_sem(r.id);
  if (!s) return reply(EINVAL, unknown_id());
  if (KernelSemSet* k = find_ksem(r.id)) return ksem_semop(h, r, *s, *k, reply);
  Outcome o = s->semop(h.token, r.sops, ProcKey{h.creds.node, h.creds.pid}, h.creds, now_s());
  if (o.kind == Outcome::kBlocked) {
    pending_[h.token] = Pending{ObjType::kSem, r.id, std::move(reply)};
    note_blocked(h.token);
  } else
    reply(o.kind == Outcome::kDone ? 0 : o.err, {});
  drain(*s);
}

void Service::home_semctl(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  SemCtlReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  SemSet* s = find_sem(r.id);
  if (!s) return reply(EINVAL, unknown_id());
  if (KernelSemSet* k = find_ksem(r.id)) return ksem_semctl(h, r, *s, *k, reply);
  if (r.cmd == kSemCtlKernel) return reply(0, encode_body(SemKernelResp{-1, 0}));
  if (r.cmd == kSemCtlUndoClear) return reply(0, {});
  const Creds& c = h.creds;
  SemCtlResp resp;
  int e = 0;
  int64_t now = now_s();
  switch (r.cmd) {
    case IPC_RMID:
      e = s->check_rmid(c);
      if (!e) remove_object(ObjType::kSem, r.id);
      return reply(e, {});
    case IPC_STAT:
      e = s->stat(c, resp.stat);
      break;
    case IPC_SET:
      e = s->set(r.uid, r.gid, r.mode, c, now);
      break;
    case GETVAL:
      e = s->getval(r.semnum, c, resp.ret);
      break;
    case GETPID:
      e = s->getpid(r.semnum, c, resp.ret);
      break;
    case GETNCNT:
      e = s->getncnt(r.semnum, c, resp.ret);
      break;
    case GETZCNT:
      e = s->getzcnt(r.semnum, c, resp.ret);
      break;
    case GETALL:
      e = s->getall(c, resp.vals);
      break;
    case kSemCtlNsems:
      resp.ret = s->nsems();
      break;
    case SETVAL:
      e = s->setval(r.semnum, r.val, c, c.pid, now);
      break;
    case SETALL:
      e = s->setall(r.vals, c, c.pid, now);
      break;
    default:
      e = EINVAL;
  }
  if (e) reply(e, {});
  else reply(0, encode_body(resp));
  drain(*s);
}

void Service::home_msgsnd(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  MsgSndReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  if (static_cast<int64_t>(r.text.size()) > limits(LimitFiles::kMsgMax, true).msgmax) return reply(EINVAL, {});
  if (r.mtype < 1) return reply(EINVAL, {});
  MsgQueue* q = find_msg(r.id);
  if (!q) return reply(EINVAL, unknown_id());
  q->set_limits(lim_);
  Outcome o = q->send(h.token, r.mtype, std::move(r.text), r.flg, ProcKey{h.creds.node, h.creds.pid}, h.creds,
                      now_s());
  if (o.kind == Outcome::kBlocked) {
    pending_[h.token] = Pending{ObjType::kMsg, r.id, std::move(reply)};
    note_blocked(h.token);
  } else
    reply(o.kind == Outcome::kDone ? 0 : o.err, {});
  drain(*q);
}

void Service::home_msgrcv(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  MsgRcvReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  if (r.maxsize > static_cast<uint64_t>(LONG_MAX)) return reply(EINVAL, {});
  if ((r.flg & MSG_COPY) && ((r.flg & MSG_EXCEPT) || !(r.flg & IPC_NOWAIT))) return reply(EINVAL, {});
  MsgQueue* q = find_msg(r.id);
  if (!q) return reply(EINVAL, unknown_id());
  if (r.flg & MSG_COPY) q->set_limits(limits(LimitFiles::kMsgMax, true));
  Message m;
  Outcome o = q->recv(h.token, r.msgtyp, r.maxsize, r.flg, ProcKey{h.creds.node, h.creds.pid}, h.creds, now_s(), m);
  if (o.kind == Outcome::kBlocked) {
    pending_[h.token] = Pending{ObjType::kMsg, r.id, std::move(reply)};
    note_blocked(h.token);
  } else if (o.kind == Outcome::kDone)
    reply(0, encode_body(MsgRcvResp{m.mtype, std::move(m.text)}));
  else
    reply(o.err, {});
  drain(*q);
}

void Service::home_msgctl(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  MsgCtlReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  MsgQueue* q = find_msg(r.id);
  if (!q) return reply(EINVAL, unknown_id());
  MsgCtlResp resp;
  int e = 0;
  switch (r.cmd) {
    case IPC_RMID:
      e = q->check_rmid(h.creds);
      if (!e) remove_object(ObjType::kMsg, r.id);
      return reply(e, {});
    case IPC_STAT:
      e = q->stat(h.creds, resp.stat);
      if (e) return reply(e, {});
      return reply(0, encode_body(resp));
    case IPC_SET:
      q->set_limits(limits(LimitFiles::kMsgMnb));
      e = q->set(r.uid, r.gid, r.mode, r.qbytes, h.creds, now_s());
      reply(e, {});
      return drain(*q);
    default:
      return reply(EINVAL, {});
  }
}

void Service::drain(SemSet& s) {
  for (const auto& c : s.take_completed()) {
    auto it = pending_.find(c.token);
    if (it == pending_.end()) continue;
    ReplyFn fn = std::move(it->second.reply);
    pending_.erase(it);
    fn(c.err, {});
  }
}

void Service::drain(MsgQueue& q) {
  for (auto& c : q.take_completed()) {
    auto it = pending_.find(c.token);
    if (it == pending_.end()) continue;
    ReplyFn fn = std::move(it->second.reply);
    pending_.erase(it);
    if (c.err == 0 && c.is_recv)
      fn(0, encode_body(MsgRcvResp{c.msg.mtype, std::move(c.msg.text)}));
    else
      fn(c.err, {});
  }
}

void Service::home_cancel(uint64_t token) {
  auto it = pending_.find(token);
  if (it == pending_.end()) return;  // already answered: the caller gets that answer
  if (it->second.type == ObjType::kSem) {
    // A worker asleep in the kernel set: interrupted; its answer (ECANCELED, or what it got first) follows.
    if (KernelSemSet* k = find_ksem(it->second.id); k && k->cancel(token)) return;
    if (SemSet* s = find_sem(it->second.id)) s->cancel(token);
  } else if (MsgQueue* q = find_msg(it->second.id)) {
    q->cancel(token);
  }
  ReplyFn fn = std::move(it->second.reply);
  pending_.erase(it);
  fn(ECANCELED, {});
}

void Service::remove_object(ObjType type, int32_t id) {
  std::vector<uint64_t> waiters;
  int32_t key = 0;
  if (type == ObjType::kSem) {
    auto it = sems_.by_id.find(id);
    waiters = it->second->remove_waiters();
    key = it->second->perm().key;
    used_sems_ -= it->second->nsems();
    if (auto k = ksems_.find(id); k != ksems_.end()) {
      ksem_registry_.remove(k->second->kid());
      ksems_.erase(k);  // IPC_RMID on the kernel set: local waiters and workers get EIDRM
    }
    sems_.by_id.erase(it);
    sems_.free.push_back(id_slot(id));
  } else {
    auto it = msgs_.by_id.find(id);
    waiters = it->second->remove_waiters();
    key = it->second->perm().key;
    msgs_.by_id.erase(it);
    msgs_.free.push_back(id_slot(id));
  }
  for (uint64_t t : waiters) {
    auto p = pending_.find(t);
    if (p == pending_.end()) continue;
    ReplyFn fn = std::move(p->second.reply);
    pending_.erase(p);
    fn(EIDRM, {});
  }
  if (key != IPC_PRIVATE) notify(referee_for(key), kKeyUnbind, encode_body(KeyReq{type, key, 0, id}));
}

std::pair<uint32_t, uint32_t> Service::peer_counts() const {
  uint32_t total = 0, up = 0;
  for (uint16_t n : node_ids_) {
    if (n == cfg_.self) continue;
    ++total;
    if (tr_ && tr_->peer_up(n)) ++up;
  }
  return {total, up};
}

std::vector<ObjEntry> Service::local_objects() const {
  std::vector<ObjEntry> out;
  auto entry = [&](ObjType t, int32_t id, const Perm& p, uint64_t a, uint64_t b) {
    out.push_back(ObjEntry{t, id, p.key, p.uid, p.gid, p.cuid, p.cgid, p.mode, cfg_.self, a, b});
  };
  for (const auto& [id, s] : sems_.by_id) entry(ObjType::kSem, id, s->perm(), static_cast<uint64_t>(s->nsems()), 0);
  for (const auto& [id, q] : msgs_.by_id) entry(ObjType::kMsg, id, q->perm(), q->qnum(), q->cbytes());
  for (const auto& [id, g] : shms_.by_id) entry(ObjType::kShm, id, g->perm(), g->size(), g->nattch());
  return out;
}

void Service::list_objects(std::function<void(ObjListResp)> done) {
  struct Gather {
    ObjListResp resp;
    std::vector<uint16_t> waiting;  // peers asked that have not answered yet
    std::function<void(ObjListResp)> done;
    EventLoop::TimerId timer{};
    bool finished = false;
  };
  auto g = std::make_shared<Gather>();
  g->resp.entries = local_objects();
  g->done = std::move(done);
  auto finish = [this](const std::shared_ptr<Gather>& gs) {
    Gather& st = *gs;
    if (st.finished) return;
    st.finished = true;
    loop_.cancel_timer(st.timer);
    for (uint16_t n : st.waiting) st.resp.unreachable.push_back(n);
    std::sort(st.resp.unreachable.begin(), st.resp.unreachable.end());
    auto key = [](const ObjEntry& e) { return std::make_tuple(static_cast<uint8_t>(e.type), e.home, e.id); };
    std::sort(st.resp.entries.begin(), st.resp.entries.end(),
              [&](const ObjEntry& x, const ObjEntry& y) { return key(x) < key(y); });
    auto cb = std::move(st.done);
    cb(std::move(st.resp));
  };
  std::vector<uint16_t> ask;
  for (uint16_t n : node_ids_) {
    if (n == cfg_.self) continue;
    if (tr_ && tr_->peer_up(n))
      ask.push_back(n);
    else
      g->resp.unreachable.push_back(n);
  }
  g->waiting = ask;
  if (ask.empty()) return finish(g);
  g->timer = loop_.add_timer(kObjListTimeoutMs, [g, finish] { finish(g); });
  for (uint16_t n : ask) {
    auto answered = [g, n, finish](int st, ByteView b) {
      if (g->finished) return;
      auto it = std::find(g->waiting.begin(), g->waiting.end(), n);
      if (it == g->waiting.end()) return;
      g->waiting.erase(it);
      ObjListResp r;
      if (st == 0 && decode_body(b, r)) {
        for (ObjEntry& e : r.entries)
          if (e.home == n) g->resp.entries.push_back(e);  // a peer speaks only for the objects it hosts
      } else {
        g->resp.unreachable.push_back(n);
      }
      if (g->waiting.empty()) finish(g);
    };
    Status s = tr_->request(n, kObjList, {}, [answered](Status st, ByteView b) { answered(st.code(), b); });
    if (!s) answered(s.code() ? s.code() : EIO, {});
    if (g->finished) return;
  }
}

std::string Service::status_text() const {
  std::ostringstream os;
  os << "node " << cfg_.me().name << " (id " << cfg_.self << ", " << cfg_.me().address << ":" << cfg_.me().port
     << ", transport " << (tr_ ? tr_->name() : "none") << ")\n";
  if (!placement_.empty()) os << "placement: " << placement_ << "\n";
  os << "peers:\n";
  for (const auto& n : cfg_.nodes) {
    if (n.id == cfg_.self) continue;
    std::string via = tr_ ? tr_->peer_info(n.id) : std::string();
    os << "  " << n.name << " (id " << n.id << ", " << n.address << ":" << n.port << ") "
       << (via.empty() ? "" : "via " + via + " ") << (tr_ && tr_->peer_up(n.id) ? "up" : "down") << "\n";
  }
  os << "semaphore sets hosted: " << sems_.by_id.size() << "\n";
  char line[160];
  for (const auto& [id, s] : sems_.by_id) {
    snprintf(line, sizeof line, "  semid %-11d key 0x%08x nsems %-5d mode %03o owner %u\n", id,
             static_cast<unsigned>(s->perm().key), s->nsems(), s->perm().mode & 0777, s->perm().uid);
    os << line;
  }
  os << "message queues hosted: " << msgs_.by_id.size() << "\n";
  for (const auto& [id, q] : msgs_.by_id) {
    snprintf(line, sizeof line, "  msqid %-11d key 0x%08x messages %-6zu mode %03o owner %u\n", id,
             static_cast<unsigned>(q->perm().key), q->qnum(), q->perm().mode & 0777, q->perm().uid);
    os << line;
  }
  os << "shared memory segments hosted: " << shms_.by_id.size() << "\n";
  for (const auto& [id, g] : shms_.by_id) {
    snprintf(line, sizeof line, "  shmid %-11d key 0x%08x size %-12llu nattch %-4llu mode %03o owner %u%s\n", id,
             static_cast<unsigned>(g->perm().key), static_cast<unsigned long long>(g->size()),
             static_cast<unsigned long long>(g->nattch()), g->perm().mode & 0777, g->perm().uid,
             g->removed() ? " (removed)" : "");
    os << line;
  }
  os << dsm_.status_text();
  os << "keys refereed: " << keys_.size() << "\n";
  os << "blocked calls waiting here: " << pending_.size() << "\n";
  return os.str();
}

}  // namespace dipc::ipc
