// Message queues homed here, backed by kernel queues (ipc/kernel_msg.h): the node's own programs call msgsnd/msgrcv
// on the kernel queue directly; this file serves everything that still comes to the home: callers of other nodes
// (through the kernel queue, blocking ones in a worker), IPC_STAT/IPC_SET/IPC_RMID, the MSG_STAT scans, and the
// kernel id.
#include <sys/ipc.h>
#include <sys/msg.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>

#include "common/log.h"
#include "ipc/service.h"

namespace dipc::ipc {

void Service::set_kernel_msgs(bool enabled, std::string state_file) {
  kernel_msgs_ = enabled && KernelMsgQueue::supported();
  if (enabled && !kernel_msgs_)
    DIPC_LOG_INFO("message queues stay in dipcd: this system cannot show a thread asleep in msgrcv()");
  kmsg_registry_ = KernelMsgRegistry(std::move(state_file), ObjType::kMsg);
  if (int n = kmsg_registry_.remove_stale())
    DIPC_LOG_INFO("removed {} kernel message queues a previous start of this daemon left", n);
}

KernelMsgQueue* Service::find_kmsg(int32_t id) {
  auto it = kmsgs_.find(id);
  return it == kmsgs_.end() ? nullptr : it->second.get();
}

void Service::kmsg_create(const Creds& c, int32_t id, uint16_t mode) {
  if (!kernel_msgs_) return;
  auto k = KernelMsgQueue::create(loop_, c, mode);
  if (!k) {
    DIPC_LOG_DEBUG("message queue {}: no kernel queue ({}), operated through dipcd", id, strerror(errno));
    return;
  }
  kmsg_registry_.add(k->kid());
  kmsgs_.emplace(id, std::move(k));
}

bool Service::kmsg_sync(int32_t id, MsgQueue& q, KernelMsgQueue& k, struct msqid_ds& ds) {
  if (k.stat(ds) != 0) {
    // Its owner removed the kernel queue with the kernel id: the distributed queue goes with it.
    DIPC_LOG_INFO("message queue {}: kernel queue {} was removed directly; removing the queue", id, k.kid());
    remove_object(ObjType::kMsg, id);
    return false;
  }
  q.sync(ds.msg_perm.uid, ds.msg_perm.gid, static_cast<uint16_t>(ds.msg_perm.mode));
  return true;
}

int Service::kmsg_stat(int32_t id, MsgQueue& q, KernelMsgQueue& k, const Creds& c, MsgStat& out) {
  struct msqid_ds ds {};
  if (!kmsg_sync(id, q, k, ds)) return EINVAL;
  if (int e = q.stat(c, out)) return e;  // the permission check and the distributed key, creator, seq
  out.stime = ds.msg_stime;
  out.rtime = ds.msg_rtime;
  out.ctime = ds.msg_ctime;
  out.cbytes = ds.__msg_cbytes;
  out.qnum = ds.msg_qnum;
  out.qbytes = ds.msg_qbytes;
  out.lspid = ds.msg_lspid;
  out.lrpid = ds.msg_lrpid;
  return 0;
}

void Service::kmsg_msgsnd(const HomeHeader& h, MsgSndReq& r, MsgQueue& q, KernelMsgQueue& k, ReplyFn& reply) {
  // do_msgsnd()'s order after the size and type checks (home_msgsnd): the queue, then the caller's right to write.
  // The caller is of another node (or a program that could not use the kernel id): dipcd checks its rights, then
  // acts with its own.
  int32_t id = r.id;
  struct msqid_ds ds {};
  if (!kmsg_sync(id, q, k, ds)) return reply(EINVAL, {});
  if (int e = ipc_check(q.perm(), h.creds, 0222)) return reply(e, {});
  int e = k.try_send(r.mtype, r.text, r.flg, h.creds.pid);
  if (e == 0) return reply(0, {});
  if (e != EAGAIN || (r.flg & IPC_NOWAIT)) return reply(e == EIDRM ? EINVAL : e, {});
  // It must wait: a worker sleeps in the kernel's msgsnd() as the caller, among the local senders.
  uint64_t token = h.token;
  pending_[token] = Pending{ObjType::kMsg, id, std::move(reply)};
  auto done = [this, token](int err) {
    auto it = pending_.find(token);
    if (it == pending_.end()) return;
    ReplyFn fn = std::move(it->second.reply);
    pending_.erase(it);
    fn(err, {});
  };
  if (!k.start_send(token, h.creds, r.mtype, std::move(r.text), r.flg, [this, token] { note_blocked(token); }, done)) {
    DIPC_LOG_WARN("message queue {}: {} blocked calls of other nodes already wait; refusing one with ENOMEM", id,
                  KernelMsgQueue::kMaxWorkers);
    done(ENOMEM);
  }
}

void Service::kmsg_msgrcv(const HomeHeader& h, const MsgRcvReq& r, MsgQueue& q, KernelMsgQueue& k, ReplyFn& reply) {
  int32_t id = r.id;
  struct msqid_ds ds {};
  if (!kmsg_sync(id, q, k, ds)) return reply(EINVAL, {});
  if (int e = ipc_check(q.perm(), h.creds, 0444)) return reply(e, {});
  // What the answer can carry: a longer message is E2BIG, or truncated with MSG_NOERROR (README).
  size_t maxsize = static_cast<size_t>(std::min<uint64_t>(r.maxsize, kMaxMsgText));
  Message m;
  int e = k.try_recv(maxsize, r.msgtyp, r.flg, h.creds.pid, m);
  if (e == 0) return reply(0, encode_body(MsgRcvResp{m.mtype, std::move(m.text)}));
  if (e != ENOMSG || (r.flg & IPC_NOWAIT)) return reply(e == EIDRM ? EINVAL : e, {});
  uint64_t token = h.token;
  pending_[token] = Pending{ObjType::kMsg, id, std::move(reply)};
  auto done = [this, token](int err, Message got) {
    auto it = pending_.find(token);
    if (it == pending_.end()) return;
    ReplyFn fn = std::move(it->second.reply);
    pending_.erase(it);
    if (err)
      fn(err, {});
    else
      fn(0, encode_body(MsgRcvResp{got.mtype, std::move(got.text)}));
  };
  if (!k.start_recv(token, h.creds, maxsize, r.msgtyp, r.flg, [this, token] { note_blocked(token); }, done)) {
    DIPC_LOG_WARN("message queue {}: {} blocked calls of other nodes already wait; refusing one with ENOMEM", id,
                  KernelMsgQueue::kMaxWorkers);
    done(ENOMEM, {});
  }
}

void Service::kmsg_msgctl(const HomeHeader& h, const MsgCtlReq& r, MsgQueue& q, KernelMsgQueue& k, ReplyFn& reply) {
  int32_t id = r.id;
  const Creds& c = h.creds;
  switch (r.cmd) {
    case kMsgCtlKernel:  // the kernel id means something only to programs of this node
      return reply(0, encode_body(KernelIdResp{c.node == cfg_.self ? k.kid() : -1, kernel_ipc_namespace(),
                                               static_cast<int32_t>(getpid())}));
    case IPC_RMID: {
      struct msqid_ds ds {};
      if (!kmsg_sync(id, q, k, ds)) return reply(EINVAL, {});
      int e = q.check_rmid(c);
      if (!e) remove_object(ObjType::kMsg, id);  // removes the kernel queue: every waiter gets EIDRM
      return reply(e, {});
    }
    case IPC_STAT: {
      MsgCtlResp resp;
      if (int e = kmsg_stat(id, q, k, c, resp.stat)) return reply(e, {});
      return reply(0, encode_body(resp));
    }
    case IPC_SET: {
      struct msqid_ds ds {};
      if (!kmsg_sync(id, q, k, ds)) return reply(EINVAL, {});
      // msgctl_down()'s checks with the caller's rights (owner: EPERM; msg_qbytes past msgmnb without
      // CAP_SYS_RESOURCE: EPERM), then the kernel queue changed by dipcd; the kernel wakes its waiters, which
      // check their rights again.
      q.set_limits(limits(LimitFiles::kMsgMnb));
      int e = q.set(r.uid, r.gid, r.mode, r.qbytes, c, static_cast<int64_t>(time(nullptr)));
      if (!e) e = k.set(r.uid, r.gid, r.mode, r.qbytes);
      return reply(e == EIDRM ? EINVAL : e, {});
    }
    default:
      return reply(EINVAL, {});
  }
}

void Service::kmsg_hidden(IpcInfoResp& r) const {
  r.ns_ino = kernel_ipc_namespace();
  for (const auto& [id, k] : kmsgs_) {
    struct msqid_ds ds {};
    if (k->stat(ds) != 0) continue;
    r.hidden.push_back(k->kid());
    r.hidden_a += ds.msg_qnum;
    r.hidden_b += ds.__msg_cbytes;
  }
}

std::pair<uint64_t, uint64_t> Service::msg_counts(int32_t id, const MsgQueue& q) const {
  auto it = kmsgs_.find(id);
  if (it == kmsgs_.end()) return {q.qnum(), q.cbytes()};
  struct msqid_ds ds {};
  if (it->second->stat(ds) != 0) return {0, 0};
  return {ds.msg_qnum, ds.__msg_cbytes};
}

}  // namespace dipc::ipc
