// Origin: a local program's call leaves here for the object's home (or its key's referee) and the answer comes
// back; blocked calls the program gives up on are cancelled at the home.
#include "ipc/service.h"

#include <sys/ipc.h>

#include "ipc/ids.h"

#include "ipc/service_internal.h"

namespace dipc::ipc {

using namespace service_detail;

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
  Status s = issue(
      home, [this, home, op, body = e.take(), done] { return tr_->request(home, op, body, done); },
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
  if (type == ObjType::kSem && (req.nsems < 0 || req.nsems > limits(LimitFiles::kSem).semmsl)) return reply(EINVAL, {});
  if (req.key == IPC_PRIVATE) {
    int32_t id = 0;
    int e = create_local(type, c, req.key, req.nsems, req.flg, id, req.size);
    return e ? reply(e, {}) : reply(0, encode_body(IdResp{id}));
  }
  // A live object of this home under the key: it is the key's binding (its referee forgets it only after our
  // IPC_RMID), so the answer is the one the referee and the home would give, without their round trips.
  if (auto it = home_keys_.find({static_cast<uint8_t>(type), req.key}); it != home_keys_.end()) {
    if ((req.flg & IPC_CREAT) && (req.flg & IPC_EXCL)) return reply(EEXIST, {});
    Encoder e;
    OpenReq{type, it->second, req.nsems, req.flg, req.size}.encode(e);
    Bytes body = e.take();
    return home_open(HomeHeader{c, 0}, body, reply);
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

}  // namespace dipc::ipc
