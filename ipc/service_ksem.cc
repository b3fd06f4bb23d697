// Semaphore sets homed here, backed by kernel sets (ipc/kernel_sem.h): the node's own programs operate on the kernel
// set directly; this file serves everything that still comes to the home: callers of other nodes (semop through
// the kernel set, blocking ones in a worker), IPC_STAT/IPC_SET/IPC_RMID, the *_STAT scans, and the kernel id.
#include <sys/ipc.h>
#include <sys/sem.h>
#include <unistd.h>

#include <cstring>
#include <ctime>

#include "common/log.h"
#include "ipc/service.h"

namespace dipc::ipc {

void Service::set_kernel_sems(bool enabled, std::string state_file) {
  kernel_sems_ = enabled && KernelSemSet::supported();
  if (enabled && !kernel_sems_)
    DIPC_LOG_INFO("semaphore sets stay in dipcd: this system cannot show a thread asleep in semtimedop()");
  ksem_registry_ = KernelSemRegistry(std::move(state_file));
  if (int n = ksem_registry_.remove_stale())
    DIPC_LOG_INFO("removed {} kernel semaphore sets a previous start of this daemon left", n);
}

KernelSemSet* Service::find_ksem(int32_t id) {
  auto it = ksems_.find(id);
  return it == ksems_.end() ? nullptr : it->second.get();
}

void Service::ksem_create(const Creds& c, int32_t id, int nsems, uint16_t mode) {
  if (!kernel_sems_) return;
  auto k = KernelSemSet::create(loop_, c, nsems, mode);
  if (!k) {
    DIPC_LOG_DEBUG("semaphore set {}: no kernel set ({}), operated through dipcd", id, strerror(errno));
    return;
  }
  ksem_registry_.add(k->kid());
  ksems_.emplace(id, std::move(k));
}

bool Service::ksem_sync(int32_t id, SemSet& s, KernelSemSet& k) {
  struct semid_ds ds {};
  if (k.stat(ds) != 0) {
    // Its owner removed the kernel set with the kernel id: the distributed set goes with it.
    DIPC_LOG_INFO("semaphore set {}: kernel set {} was removed directly; removing the set", id, k.kid());
    remove_object(ObjType::kSem, id);
    return false;
  }
  s.sync(ds.sem_perm.uid, ds.sem_perm.gid, static_cast<uint16_t>(ds.sem_perm.mode), ds.sem_otime, ds.sem_ctime);
  return true;
}

void Service::ksem_semop(const HomeHeader& h, const SemOpReq& r, SemSet& s, KernelSemSet& k, ReplyFn& reply) {
  // do_semtimedop()'s order: EFBIG, then permission (read access for wait-for-zero only). The caller is of another
  // node (or a program that could not use the kernel id): dipcd checks its rights, then acts with its own.
  bool alter = false;
  for (const auto& o : r.sops) {
    if (o.num >= static_cast<uint32_t>(s.nsems())) return reply(EFBIG, {});
    if (o.op != 0) alter = true;
  }
  int32_t id = r.id;
  if (!ksem_sync(id, s, k)) return reply(EINVAL, {});
  if (int e = ipc_check(s.perm(), h.creds, alter ? 0222 : 0444)) return reply(e, {});
  std::vector<struct sembuf> ops, undo_ops;
  bool all_nowait = true;
  for (const auto& o : r.sops) {
    struct sembuf b {};
    b.sem_num = o.num;
    b.sem_op = o.op;
    b.sem_flg = static_cast<short>(o.flg & ~SEM_UNDO);  // the adjustment is the caller's, kept here
    ops.push_back(b);
    if (o.flg & SEM_UNDO) undo_ops.push_back(b);
    if (!(o.flg & IPC_NOWAIT)) all_nowait = false;
  }
  ProcKey pk{h.creds.node, h.creds.pid};
  if (!undo_ops.empty() && k.check_undo(pk, undo_ops, limits(LimitFiles::kSem, true).semaem)) {
    // An adjustment out of range is ERANGE, unless an earlier op blocks first (the kernel then waits or says EAGAIN).
    std::vector<struct sembuf> with_undo;
    for (const auto& o : r.sops) with_undo.push_back(sembuf{o.num, o.op, o.flg});
    const Limits& lim = limits(LimitFiles::kSem, true);
    if (k.first_failure(pk, with_undo, lim.semaem, lim.semvmx) != EAGAIN) return reply(ERANGE, {});
  }
  int e = k.try_op(ops);
  if (e == 0) {
    k.set_remote_pid(ops, pk.pid);
    k.add_undo(pk, undo_ops);
    return reply(0, {});
  }
  if (e != EAGAIN || all_nowait) return reply(e == EIDRM ? EINVAL : e, {});
  // It must wait: a worker sleeps in the kernel with the caller's flags, in the kernel's FIFO with local waiters.
  uint64_t token = h.token;
  pending_[token] = Pending{ObjType::kSem, id, std::move(reply)};
  auto done = [this, token, id, pk, undo_ops](int err) {
    if (err == 0)
      if (KernelSemSet* ks = find_ksem(id)) ks->add_undo(pk, undo_ops);
    auto it = pending_.find(token);
    if (it == pending_.end()) return;
    ReplyFn fn = std::move(it->second.reply);
    pending_.erase(it);
    fn(err, {});
  };
  if (!k.start_wait(token, std::move(ops), pk.pid, [this, token] { note_blocked(token); }, done)) {
    DIPC_LOG_WARN("semaphore set {}: {} blocked operations of other nodes already wait; refusing one with ENOMEM",
                  id, KernelSemSet::kMaxWorkers);
    done(ENOMEM);
  }
}

void Service::ksem_semctl(const HomeHeader& h, const SemCtlReq& r, SemSet& s, KernelSemSet& k, ReplyFn& reply) {
  int32_t id = r.id;
  if (!ksem_sync(id, s, k)) return reply(EINVAL, {});
  const Creds& c = h.creds;
  SemCtlResp resp;
  int e = 0;
  // semctl_main()'s order: permission, then the index.
  auto check_semnum = [&](int flag) {
    if (int x = ipc_check(s.perm(), c, flag)) return x;
    return r.semnum < 0 || r.semnum >= s.nsems() ? EINVAL : 0;
  };
  switch (r.cmd) {
    case kSemCtlKernel:  // the kernel id means something only to programs of this node
      return reply(0, encode_body(SemKernelResp{c.node == cfg_.self ? k.kid() : -1, KernelSemSet::ipc_namespace(),
                                                static_cast<int32_t>(getpid())}));
    case kSemCtlUndoClear:
      if ((e = ipc_check(s.perm(), c, 0222))) return reply(e, {});
      k.clear_undo(r.semnum);
      return reply(0, {});
    case kSemCtlNsems:
      resp.ret = s.nsems();
      break;
    case IPC_RMID:
      e = s.check_rmid(c);
      if (!e) remove_object(ObjType::kSem, id);  // removes the kernel set: every waiter gets EIDRM
      return reply(e, {});
    case IPC_STAT:
      e = s.stat(c, resp.stat);
      break;
    case IPC_SET:
      e = s.set(r.uid, r.gid, r.mode, c, static_cast<int64_t>(time(nullptr)));
      if (!e) e = k.set(r.uid, r.gid, r.mode);
      break;
    case GETVAL:
    case GETPID:
    case GETNCNT:
    case GETZCNT:
      if (!(e = check_semnum(0444))) {
        int v = r.cmd == GETPID ? k.getpid_of(r.semnum) : k.ctl(r.semnum, r.cmd);
        if (v < 0)
          e = -v;
        else
          resp.ret = v;
      }
      break;
    case GETALL:
      if (!(e = ipc_check(s.perm(), c, 0444))) e = k.getall(resp.vals);
      break;
    case SETVAL: {  // semctl_setval()'s order: range, index, permission
      const Limits& lim = limits(LimitFiles::kSem);
      if (r.val > lim.semvmx || r.val < 0)
        e = ERANGE;
      else if (r.semnum < 0 || r.semnum >= s.nsems())
        e = EINVAL;
      else if (!(e = ipc_check(s.perm(), c, 0222))) {
        int v = k.ctl(r.semnum, SETVAL, r.val);
        if (v < 0) {
          e = -v;
        } else {
          k.clear_undo(r.semnum);
          k.set_remote_pid(std::vector<struct sembuf>{sembuf{static_cast<unsigned short>(r.semnum), 0, 0}}, c.pid);
        }
      }
      break;
    }
    case SETALL: {
      const Limits& lim = limits(LimitFiles::kSem);
      if ((e = ipc_check(s.perm(), c, 0222))) break;
      if (r.vals.size() != static_cast<size_t>(s.nsems())) {
        e = EINVAL;
        break;
      }
      for (uint16_t v : r.vals)
        if (v > lim.semvmx) e = ERANGE;
      if (!e && !(e = k.setall(r.vals))) {
        k.clear_undo(-1);
        k.set_remote_pid_all(c.pid);
      }
      break;
    }
    default:
      e = EINVAL;
  }
  if (e == EIDRM) e = EINVAL;  // removed meanwhile by its owner, directly
  if (e)
    reply(e, {});
  else
    reply(0, encode_body(resp));
}

void Service::ksem_hidden(IpcInfoResp& r) const {
  r.ns_ino = KernelSemSet::ipc_namespace();
  for (const auto& [id, k] : ksems_) {
    r.hidden.push_back(k->kid());
    r.hidden_a += static_cast<uint64_t>(k->nsems());
  }
}

}  // namespace dipc::ipc
