// Referee: every key has one referee node (the key hashed over the configured nodes); it maps keys to ids and
// serialises creation, so an IPC_CREAT|IPC_EXCL race between nodes has exactly one winner.
#include "ipc/service.h"

#include <signal.h>
#include <sys/ipc.h>
#include <sys/shm.h>

#include <memory>
#include <set>

#include "common/log.h"
#include "ipc/ids.h"

#include "ipc/service_internal.h"

namespace dipc::ipc {

using namespace service_detail;

uint16_t Service::referee_for(int32_t key) const { return node_ids_[static_cast<uint32_t>(key) % node_ids_.size()]; }

// ---------------------------------------------------------------------------------------------------------------
// Referee: one authority per key serialises creation.

void Service::referee_acquire(uint16_t from, const KeyReq& req, std::function<void(int, Bytes)> reply) {
  if (!rebuilding_.empty()) {  // this start does not know the live keys yet
    parked_.push_back(Acquire{from, req, std::move(reply)});
    return;
  }
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

void Service::rebuild_done(uint16_t peer, const char* why) {
  if (!rebuilding_.erase(peer)) return;
  DIPC_LOG_DEBUG("key map rebuild: node {} {}, {} to go", peer, why, rebuilding_.size());
  if (!rebuilding_.empty()) return;
  if (rebuild_timer_) loop_.cancel_timer(rebuild_timer_);
  rebuild_timer_ = 0;
  DIPC_LOG_INFO("key map rebuilt from every peer: {} keys, {} lookups were waiting", keys_.size(), parked_.size());
  rebuild_finish();
}

void Service::rebuild_finish() {
  std::vector<Acquire> parked;
  parked.swap(parked_);
  for (auto& a : parked) referee_acquire(a.from, a.req, std::move(a.reply));
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
      // Answered, but with an error or garbage: it cannot tell us more (a lost link ends the wait in on_peer).
      if (tr_->peer_up(peer)) rebuild_done(peer, "answered no key inventory");
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
        DIPC_LOG_WARN("key {:#x} is bound to id {} but node {} also hosts id {} with it; keeping the first", e.key,
                      it->second.id, peer, e.id);
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
    rebuild_done(peer, "sent its key inventory");
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

}  // namespace dipc::ipc
