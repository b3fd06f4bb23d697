// Home: the semaphore sets and message queues created on this node (and the creation of every object here); the
// home holds the state and serialises every operation on it, so each object is linearizable.
#include "ipc/service.h"

#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>

#include <climits>
#include <memory>

#include "ipc/ids.h"

#include "ipc/service_internal.h"

namespace dipc::ipc {

using namespace service_detail;

int Service::create_local(ObjType type, const Creds& c, int32_t key, int32_t nsems, int32_t flg, int32_t& id,
                          uint64_t size) {
  uint64_t pages = (size + dsm_.page_size() - 1) / dsm_.page_size();
  limits(type == ObjType::kSem   ? LimitFiles::kSem
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
    kmsg_create(c, id, p.mode);
  } else {
    if (int e = alloc(shms_)) return e;
    // The home's frames are the segment's backing store. SHM_HUGETLB: its view is in huge pages on every node
    // (hugetlb_shm_check above made sure the size exists here).
    uint64_t huge = (flg & SHM_HUGETLB) ? hugetlb_page_bytes(flg) : 0;
    auto seg = dsm_.open(static_cast<uint32_t>(id), cfg_.self, size, 0, huge);
    if (!seg) {
      shms_.free.push_back(id_slot(id));
      return ENOMEM;
    }
    p.seq = static_cast<uint16_t>(id_seq(id));
    shms_.by_id[id] = std::make_unique<ShmSeg>(p, size, c.pid, now);
    shm_pages_ += pages;
  }
  if (key != IPC_PRIVATE) home_keys_[{static_cast<uint8_t>(type), key}] = id;
  if (type == ObjType::kShm && key != IPC_PRIVATE) shm_table_changed();
  return 0;
}

void Service::home_key_drop(ObjType type, int32_t key, int32_t id) {
  if (key == IPC_PRIVATE) return;
  auto it = home_keys_.find({static_cast<uint8_t>(type), key});
  if (it != home_keys_.end() && it->second == id) {
    home_keys_.erase(it);
    if (type == ObjType::kShm) shm_table_changed();
  }
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

bool Service::park_if_blocked(const Outcome& o, ObjType type, int32_t id, uint64_t token, ReplyFn& reply) {
  if (o.kind != Outcome::kBlocked) return false;
  pending_[token] = Pending{type, id, std::move(reply)};
  note_blocked(token);
  return true;
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
  if (!park_if_blocked(o, ObjType::kSem, r.id, h.token, reply)) reply(o.kind == Outcome::kDone ? 0 : o.err, {});
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
  if (e)
    reply(e, {});
  else
    reply(0, encode_body(resp));
  drain(*s);
}

void Service::home_msgsnd(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  MsgSndReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  if (static_cast<int64_t>(r.text.size()) > limits(LimitFiles::kMsgMax, true).msgmax) return reply(EINVAL, {});
  if (r.mtype < 1) return reply(EINVAL, {});
  MsgQueue* q = find_msg(r.id);
  if (!q) return reply(EINVAL, unknown_id());
  if (KernelMsgQueue* k = find_kmsg(r.id)) return kmsg_msgsnd(h, r, *q, *k, reply);
  q->set_limits(lim_);
  Outcome o = q->send(h.token, r.mtype, std::move(r.text), r.flg, ProcKey{h.creds.node, h.creds.pid}, h.creds, now_s());
  if (!park_if_blocked(o, ObjType::kMsg, r.id, h.token, reply)) reply(o.kind == Outcome::kDone ? 0 : o.err, {});
  drain(*q);
}

void Service::home_msgrcv(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  MsgRcvReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  if (r.maxsize > static_cast<uint64_t>(LONG_MAX)) return reply(EINVAL, {});
  if ((r.flg & MSG_COPY) && ((r.flg & MSG_EXCEPT) || !(r.flg & IPC_NOWAIT))) return reply(EINVAL, {});
  MsgQueue* q = find_msg(r.id);
  if (!q) return reply(EINVAL, unknown_id());
  if (KernelMsgQueue* k = find_kmsg(r.id)) return kmsg_msgrcv(h, r, *q, *k, reply);
  if (r.flg & MSG_COPY) q->set_limits(limits(LimitFiles::kMsgMax, true));
  Message m;
  Outcome o = q->recv(h.token, r.msgtyp, r.maxsize, r.flg, ProcKey{h.creds.node, h.creds.pid}, h.creds, now_s(), m);
  if (!park_if_blocked(o, ObjType::kMsg, r.id, h.token, reply))
    o.kind == Outcome::kDone ? reply(0, encode_body(MsgRcvResp{m.mtype, std::move(m.text)})) : reply(o.err, {});
  drain(*q);
}

void Service::home_msgctl(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  MsgCtlReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  MsgQueue* q = find_msg(r.id);
  if (!q) return reply(EINVAL, unknown_id());
  if (KernelMsgQueue* k = find_kmsg(r.id)) return kmsg_msgctl(h, r, *q, *k, reply);
  if (r.cmd == kMsgCtlKernel) return reply(0, encode_body(KernelIdResp{-1, 0}));
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
  } else {
    // A worker asleep in the kernel queue: as for the sets above.
    if (KernelMsgQueue* k = find_kmsg(it->second.id); k && k->cancel(token)) return;
    if (MsgQueue* q = find_msg(it->second.id)) q->cancel(token);
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
    if (auto k = kmsgs_.find(id); k != kmsgs_.end()) {
      kmsg_registry_.remove(k->second->kid());
      kmsgs_.erase(k);  // IPC_RMID on the kernel queue: local waiters and workers get EIDRM
    }
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
  home_key_drop(type, key, id);
  if (key != IPC_PRIVATE) notify(referee_for(key), kKeyUnbind, encode_body(KeyReq{type, key, 0, id}));
}

}  // namespace dipc::ipc
