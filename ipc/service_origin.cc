// ipc::Service, origin side: calls of local programs, forwarded to the object's home; *get.
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


void Service::process_exited(int32_t pid) {
  for (uint16_t n : node_ids_)
    if (n == cfg_.self || tr_->peer_up(n)) notify(n, kProcExit, encode_body(ProcExitMsg{pid}));
}

// ---------------------------------------------------------------------------------------------------------------
// *get: resolve a key cluster-wide through its referee, or create.

void Service::do_get(ObjType type, const Creds& c, const GetReq& req, ReplyFn reply, int attempts) {
  if (type == ObjType::kSem && (req.nsems < 0 || req.nsems > lim_.semmsl)) return reply(EINVAL, {});
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
  uint64_t pages = (size + dsm::kPageSize - 1) / dsm::kPageSize;
  if (type == ObjType::kSem) {
    if (nsems == 0) return EINVAL;
    if (used_sems_ + nsems > lim_.semmns || static_cast<int>(sems_.by_id.size()) >= lim_.semmni) return ENOSPC;
  } else if (type == ObjType::kMsg) {
    if (static_cast<int>(msgs_.by_id.size()) >= lim_.msgmni) return ENOSPC;
  } else {
    // newseg(): SHMMIN (1) .. shmmax, then shmall (pages) and shmmni.
    if (size < 1 || size > lim_.shmmax) return EINVAL;
    if (shm_pages_ + pages < shm_pages_ || shm_pages_ + pages > lim_.shmall) return ENOSPC;
    if (static_cast<int>(shms_.by_id.size()) >= lim_.shmmni) return ENOSPC;
  }
  auto alloc = [&](auto& slots) -> int {
    uint32_t slot;
    if (!slots.free.empty()) {
      slot = slots.free.back();
      slots.free.pop_back();
      slots.seq[slot] = static_cast<uint8_t>((slots.seq[slot] + 1) & kSeqMask);
    } else {
      if (slots.next >= kSlots) return ENOSPC;
      slot = slots.next++;
      slots.seq.push_back(0);
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

}  // namespace dipc::ipc
