// *_STAT, *_STAT_ANY and *_INFO over the cluster's distributed objects (the preload merges the kernel's answer):
// an index names (home, slot) without a lookup (protocol.h, stat_index), and the home answers for its slot.
#include <algorithm>

#include "ipc/service.h"

namespace dipc::ipc {

namespace {
template <typename T>
bool of_type(ObjType want, const T& e) {
  return e.type == want;
}
}  // namespace

uint32_t Service::node_rank(uint16_t node) const {
  auto it = std::lower_bound(node_ids_.begin(), node_ids_.end(), node);
  return static_cast<uint32_t>(it - node_ids_.begin());
}

void Service::client_ipc_info(const HomeHeader& h, uint16_t op, ByteView body, ReplyFn reply) {
  if (op == kIpcInfo) {
    IpcInfoReq req;
    if (!decode_body(body, req)) return reply(EINVAL, {});
    // Every node's objects, as `dipc ipcs` lists them; a node that does not answer contributes nothing.
    return list_objects([this, req, reply](ObjListResp all) {
      IpcInfoResp r;
      auto n = static_cast<uint32_t>(node_ids_.size());
      for (const ObjEntry& e : all.entries) {
        if (!of_type(req.type, e)) continue;
        ++r.count;
        r.a += req.type == ObjType::kShm ? (e.a + dsm_.page_size() - 1) / dsm_.page_size() : e.a;  // shm_tot: pages of this node
        r.b += e.b;
        r.max_index = std::max(r.max_index, stat_index(id_slot(e.id), node_rank(e.home), n));
      }
      if (req.type == ObjType::kSem) ksem_hidden(r);
      if (req.type == ObjType::kMsg) kmsg_hidden(r);
      reply(0, encode_body(r));
    });
  }
  IpcStatReq req;
  if (!decode_body(body, req) || req.index < kStatIndexBase) return reply(EINVAL, {});
  auto n = static_cast<uint32_t>(node_ids_.size());
  uint32_t rel = static_cast<uint32_t>(req.index - kStatIndexBase);
  uint32_t slot = rel / n;
  if (slot >= kSlots) return reply(EINVAL, {});
  uint16_t home = node_ids_[rel % n];
  Encoder e;
  h.encode(e);
  IpcStatReq{req.type, static_cast<int32_t>(slot), req.any}.encode(e);
  call(home, kStatSlot, e.take(), [reply](int st, ByteView b) { reply(st, Bytes(b.begin(), b.end())); });
}

void Service::home_stat_slot(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  IpcStatReq req;
  if (!decode_body(body, req)) return reply(EINVAL, {});
  auto slot = static_cast<uint32_t>(req.index);
  Creds c = h.creds;
  if (req.any) c.cap_ipc_owner = true;  // *_STAT_ANY: no read permission needed
  auto id_of = [&](const auto& slots) {
    return slot < slots.seq.size() ? make_id(cfg_.self, slots.seq[slot], slot) : 0;
  };
  Encoder e;
  int err = EINVAL;
  if (req.type == ObjType::kSem) {
    int32_t id = id_of(sems_);
    SemSet* s = find_sem(id);
    if (KernelSemSet* k = s ? find_ksem(id) : nullptr; k && !ksem_sync(id, *s, *k)) s = nullptr;
    if (s) {
      SemCtlResp r;
      if (!(err = s->stat(c, r.stat))) {
        IdResp{id}.encode(e);
        r.encode(e);
      }
    }
  } else if (req.type == ObjType::kMsg) {
    int32_t id = id_of(msgs_);
    if (MsgQueue* q = find_msg(id)) {
      MsgCtlResp r;
      KernelMsgQueue* k = find_kmsg(id);
      if (!(err = k ? kmsg_stat(id, *q, *k, c, r.stat) : q->stat(c, r.stat))) {
        IdResp{id}.encode(e);
        r.encode(e);
      }
    }
  } else {
    int32_t id = id_of(shms_);
    if (ShmSeg* g = find_shm(id)) {
      ShmCtlResp r;
      if (!(err = g->stat(c, r.stat))) {
        IdResp{id}.encode(e);
        r.encode(e);
      }
    }
  }
  if (err) return reply(err, {});
  reply(0, e.take());
}

}  // namespace dipc::ipc
