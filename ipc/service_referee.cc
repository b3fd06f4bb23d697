// ipc::Service, referee side: one authority per key serialises creation; a lost node's reservations.
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <ctime>
#include <memory>
#include <sstream>
#include <tuple>

#include "common/log.h"
#include "ipc/ids.h"
#include "ipc/service.h"
#include "ipc/service_util.h"

namespace dipc::ipc {

using namespace detail;

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
  if (up) return;
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

}  // namespace dipc::ipc
