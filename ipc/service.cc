// The node service's plumbing: construction, local and remote calls through one dispatcher, link events, and the
// views of the whole node (`dipc status`, `dipc ipcs`). The roles live beside it: service_referee.cc (key -> id
// bindings), service_home.cc (the objects homed here), service_origin.cc (a local program's call on its way to the
// home), service_shm.cc (shared memory attaches and segments), service_info.cc (*_STAT/*_INFO), service_wait.cc
// (blocked means registered).
#include "ipc/service.h"

#include <algorithm>
#include <memory>
#include <sstream>
#include <tuple>

#include "common/log.h"
#include "ipc/ids.h"

#include "ipc/service_internal.h"

namespace dipc::ipc {

using namespace service_detail;

static_assert(transport::ops::kIpc.contains(kHello) && transport::ops::kIpc.contains(kObjList),
              "ipc ops travel in ipc's range of transport/ops.h");

Service::Service(const Config& cfg, EventLoop& loop, transport::Transport* tr, dsm::Manager& dsm, const Limits& lim)
    : cfg_(cfg), loop_(loop), tr_(tr), lim_(lim), dsm_(dsm) {
  for (const auto& n : cfg_.nodes) node_ids_.push_back(n.id);
  std::sort(node_ids_.begin(), node_ids_.end());
  for (uint16_t n : node_ids_)
    if (n != cfg_.self) rebuilding_.insert(n);
  if (cfg_.rebuild_wait_ms == 0) rebuilding_.clear();
  dsm_.set_shared_hook([this](uint64_t id) { shm_shared(id); });
  dsm_.set_notes_hook([this] { fence_and_drain_notes(); });
  if (!rebuilding_.empty())
    rebuild_timer_ = loop_.add_timer(cfg_.rebuild_wait_ms, [this] {
      rebuild_timer_ = 0;
      std::string late;
      for (uint16_t n : rebuilding_) late += (late.empty() ? "" : ", ") + std::to_string(n);
      DIPC_LOG_WARN("no key inventory from node(s) {} after {} ms: serving keys without them (a key of theirs may "
                    "now be created again)", late, cfg_.rebuild_wait_ms);
      rebuilding_.clear();
      rebuild_finish();
    });
}

Service::~Service() {
  dsm_.set_shared_hook(nullptr);
  dsm_.set_notes_hook(nullptr);
  if (rebuild_timer_) loop_.cancel_timer(rebuild_timer_);
  for (const auto& [id, k] : ksems_) ksem_registry_.remove(k->kid());
  ksems_.clear();  // removes the kernel sets: their waiters get EIDRM
  for (const auto& [id, k] : kmsgs_) kmsg_registry_.remove(k->kid());
  kmsgs_.clear();
}

// ---------------------------------------------------------------------------------------------------------------
// Plumbing: the same handlers serve local calls (direct) and remote ones (through the transport).

void Service::call(uint16_t node, uint16_t op, Bytes body, std::function<void(int, ByteView)> cb) {
  if (node == cfg_.self) {
    dispatch_request(node, op, body, [cb](int st, Bytes b) { cb(st, b); });
    return;
  }
  auto done = [cb](Status st, ByteView b) { cb(st.is_ok() ? 0 : map_transport(st), b); };
  Status s = issue(
      node, [this, node, op, body = std::move(body), done] { return tr_->request(node, op, body, done); },
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
  Status s = issue(
      node, [this, node, op, body = std::move(body)] { return tr_->send(node, op, body); }, log);
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

void Service::on_peer(transport::NodeId peer, bool up) {
  DIPC_LOG_INFO("link to node {} {}", peer, up ? "up" : "down");  // dsm::Manager saw it first (daemon/ order)
  if (up) return resync_with(peer);
  rebuild_done(peer, "is lost");
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
  for (const auto& [id, q] : msgs_.by_id) {
    auto [qnum, cbytes] = msg_counts(id, *q);
    entry(ObjType::kMsg, id, q->perm(), qnum, cbytes);
  }
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
    snprintf(line, sizeof line, "  msqid %-11d key 0x%08x messages %-6llu mode %03o owner %u%s\n", id,
             static_cast<unsigned>(q->perm().key), static_cast<unsigned long long>(msg_counts(id, *q).first),
             q->perm().mode & 0777, q->perm().uid, kmsgs_.count(id) ? " (kernel queue)" : "");
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
  os << "keys refereed: " << keys_.size();
  if (!rebuilding_.empty()) {
    os << " (rebuilding: waiting for the key inventory of node";
    for (uint16_t n : rebuilding_) os << " " << n;
    os << ")";
  }
  os << "\n";
  os << "blocked calls waiting here: " << pending_.size() << "\n";
  return os.str();
}

}  // namespace dipc::ipc
