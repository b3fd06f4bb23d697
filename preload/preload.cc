// libdipc.so: interposes the libc System V IPC wrappers. Calls on distributed keys and ids go to the node's dipcd;
// everything else goes straight to the kernel. Nothing throws out of here: errors are errno and -1.
#include <dlfcn.h>
#include <stdarg.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "dipc/dipc.h"
#include "ipc/ids.h"
#include "ipc/protocol.h"
#include "preload/client.h"

using dipc::Bytes;
using dipc::preload::Reply;
using dipc::preload::Stop;
namespace ipc = dipc::ipc;

namespace {

union semun_arg {
  int val;
  struct semid_ds* buf;
  unsigned short* array;
  struct seminfo* info;
};

// One table of the real functions, filled once.
struct Real {
  int (*semget)(key_t, int, int);
  int (*semtimedop)(int, struct sembuf*, size_t, const struct timespec*);
  int (*semop)(int, struct sembuf*, size_t);
  int (*semctl)(int, int, int, ...);
  int (*msgget)(key_t, int);
  int (*msgsnd)(int, const void*, size_t, int);
  ssize_t (*msgrcv)(int, void*, size_t, long, int);
  int (*msgctl)(int, int, struct msqid_ds*);
};

Real load() {
  Real r;
  r.semget = reinterpret_cast<decltype(r.semget)>(dlsym(RTLD_NEXT, "semget"));
  r.semtimedop = reinterpret_cast<decltype(r.semtimedop)>(dlsym(RTLD_NEXT, "semtimedop"));
  r.semop = reinterpret_cast<decltype(r.semop)>(dlsym(RTLD_NEXT, "semop"));
  r.semctl = reinterpret_cast<decltype(r.semctl)>(dlsym(RTLD_NEXT, "semctl"));
  r.msgget = reinterpret_cast<decltype(r.msgget)>(dlsym(RTLD_NEXT, "msgget"));
  r.msgsnd = reinterpret_cast<decltype(r.msgsnd)>(dlsym(RTLD_NEXT, "msgsnd"));
  r.msgrcv = reinterpret_cast<decltype(r.msgrcv)>(dlsym(RTLD_NEXT, "msgrcv"));
  r.msgctl = reinterpret_cast<decltype(r.msgctl)>(dlsym(RTLD_NEXT, "msgctl"));
  return r;
}

const Real& real() {
  static const Real r = load();
  return r;
}

int fail(int e) {
  errno = e;
  return -1;
}

bool unknown_id(const Reply& r) {
  return r.status == EINVAL && r.body.size() == 1 && r.body[0] == ipc::kUnknownIdMarker;
}

// *get: distributed when the control page says so.
int do_get(uint16_t op, key_t key, int nsems, int flg, bool* handled) {
  *handled = false;
  const ipc::ControlPage* cp = dipc::preload::control();
  if (!cp || !cp->distributes(key, flg, IPC_DIPC)) return -1;
  Reply r;
  if (!dipc::preload::call(op, ipc::encode_body(ipc::GetReq{key, nsems, flg}), r)) return -1;
  *handled = true;
  if (r.status) return fail(r.status);
  ipc::IdResp id;
  if (!ipc::decode_body(r.body, id)) return fail(EIO);
  return id.id;
}

void put_perm(struct ipc_perm& out, const ipc::Perm& p) {
  out.__key = p.key;
  out.uid = p.uid;
  out.gid = p.gid;
  out.cuid = p.cuid;
  out.cgid = p.cgid;
  out.mode = p.mode;
  out.__seq = p.seq;
}

// Sends a by-id call. Returns false when the kernel should answer instead (no daemon, or an id it does not know).
bool by_id(uint16_t op, const Bytes& body, Reply& r, int64_t deadline = -1, Stop* stop = nullptr) {
  if (!dipc::preload::call(op, body, r, deadline, stop)) return false;
  return !unknown_id(r);
}

int sem_ctl(int id, int semnum, int cmd, semun_arg arg, bool* handled) {
  *handled = true;
  ipc::SemCtlReq q;
  q.id = id;
  q.semnum = semnum;
  q.cmd = cmd;
  Reply r;
  if (cmd == SETVAL) q.val = arg.val;
  if (cmd == IPC_SET) {
    if (!arg.buf) return fail(EFAULT);
    q.uid = arg.buf->sem_perm.uid;
    q.gid = arg.buf->sem_perm.gid;
    q.mode = arg.buf->sem_perm.mode;
  }
  if ((cmd == IPC_STAT && !arg.buf) || ((cmd == GETALL || cmd == SETALL) && !arg.array)) return fail(EFAULT);
  if (cmd == SETALL) {
    ipc::SemCtlReq n{id, 0, ipc::kSemCtlNsems, 0, {}, 0, 0, 0};
    ipc::SemCtlResp nr;
    if (!by_id(ipc::kSemCtl, ipc::encode_body(n), r)) return *handled = false, -1;
    if (r.status) return fail(r.status);
    if (!ipc::decode_body(r.body, nr)) return fail(EIO);
    q.vals.assign(arg.array, arg.array + nr.ret);
  }
  if (!by_id(ipc::kSemCtl, ipc::encode_body(q), r)) return *handled = false, -1;
  if (r.status) return fail(r.status);
  ipc::SemCtlResp resp;
  if (!r.body.empty() && !ipc::decode_body(r.body, resp)) return fail(EIO);
  switch (cmd) {
    case IPC_STAT:
      std::memset(arg.buf, 0, sizeof *arg.buf);
      put_perm(arg.buf->sem_perm, resp.stat.perm);
      arg.buf->sem_otime = resp.stat.otime;
      arg.buf->sem_ctime = resp.stat.ctime;
      arg.buf->sem_nsems = resp.stat.nsems;
      return 0;
    case GETALL:
      std::memcpy(arg.array, resp.vals.data(), resp.vals.size() * sizeof(unsigned short));
      return 0;
    case GETVAL:
    case GETPID:
    case GETNCNT:
    case GETZCNT:
      return resp.ret;
    default:
      return 0;
  }
}

int sem_timedop(int id, struct sembuf* sops, size_t nsops, const struct timespec* timeout, bool* handled) {
  *handled = true;
  // do_semtimedop()'s order: nsops, then the timeout, then the object.
  if (nsops < 1) return fail(EINVAL);
  if (nsops > ipc::kMaxSops) return fail(E2BIG);
  if (!sops) return fail(EFAULT);
  int64_t deadline = -1;
  if (timeout) {
    if (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000L) return fail(EINVAL);
    int64_t ms = timeout->tv_sec * 1000 + (timeout->tv_nsec + 999999) / 1000000;
    deadline = dipc::preload::now_ms() + ms;
  }
  ipc::SemOpReq q;
  q.id = id;
  for (size_t i = 0; i < nsops; ++i)
    q.sops.push_back(ipc::SemBuf{sops[i].sem_num, sops[i].sem_op, sops[i].sem_flg});
  Reply r;
  Stop stop = Stop::kNone;
  if (!by_id(ipc::kSemOp, ipc::encode_body(q), r, deadline, &stop)) return *handled = false, -1;
  if (r.status == ECANCELED) return fail(stop == Stop::kDeadline ? EAGAIN : EINTR);
  if (r.status) return fail(r.status);
  return 0;
}

}  // namespace

extern "C" {

int semget(key_t key, int nsems, int semflg) {
  bool handled;
  int r = do_get(ipc::kSemGet, key, nsems, semflg, &handled);
  return handled ? r : real().semget(key, nsems, semflg);
}

int semtimedop(int semid, struct sembuf* sops, size_t nsops, const struct timespec* timeout) {
  if (ipc::is_dipc_id(semid)) {
    bool handled;
    int r = sem_timedop(semid, sops, nsops, timeout, &handled);
    if (handled) return r;
  }
  return real().semtimedop(semid, sops, nsops, timeout);
}

int semop(int semid, struct sembuf* sops, size_t nsops) {
  if (ipc::is_dipc_id(semid)) {
    bool handled;
    int r = sem_timedop(semid, sops, nsops, nullptr, &handled);
    if (handled) return r;
  }
  return real().semop(semid, sops, nsops);
}

int semctl(int semid, int semnum, int cmd, ...) {
  semun_arg arg{};
  switch (cmd) {
    case SETVAL:
    case IPC_STAT:
    case IPC_SET:
    case GETALL:
    case SETALL:
    case IPC_INFO:
    case SEM_INFO:
    case SEM_STAT:
    case SEM_STAT_ANY: {
      va_list ap;
      va_start(ap, cmd);
      arg = va_arg(ap, semun_arg);
      va_end(ap);
      break;
    }
    default:
      break;
  }
  bool object_cmd = cmd != IPC_INFO && cmd != SEM_INFO && cmd != SEM_STAT && cmd != SEM_STAT_ANY;
  if (object_cmd && ipc::is_dipc_id(semid)) {
    bool handled;
    int r = sem_ctl(semid, semnum, cmd, arg, &handled);
    if (handled) return r;
  }
  return real().semctl(semid, semnum, cmd, arg);
}

int msgget(key_t key, int msgflg) {
  bool handled;
  int r = do_get(ipc::kMsgGet, key, 0, msgflg, &handled);
  return handled ? r : real().msgget(key, msgflg);
}

int msgsnd(int msqid, const void* msgp, size_t msgsz, int msgflg) {
  if (ipc::is_dipc_id(msqid)) {
    if (static_cast<ssize_t>(msgsz) < 0 || msgsz > ipc::kMaxMsgText) return fail(EINVAL);
    if (!msgp) return fail(EFAULT);
    ipc::MsgSndReq q;
    q.id = msqid;
    std::memcpy(&q.mtype, msgp, sizeof(long));
    const uint8_t* text = static_cast<const uint8_t*>(msgp) + sizeof(long);
    q.text.assign(text, text + msgsz);
    q.flg = msgflg;
    Reply r;
    Stop stop = Stop::kNone;
    if (by_id(ipc::kMsgSnd, ipc::encode_body(q), r, -1, &stop)) {
      if (r.status == ECANCELED) return fail(EINTR);
      return r.status ? fail(r.status) : 0;
    }
  }
  return real().msgsnd(msqid, msgp, msgsz, msgflg);
}

ssize_t msgrcv(int msqid, void* msgp, size_t msgsz, long msgtyp, int msgflg) {
  if (ipc::is_dipc_id(msqid)) {
    if (static_cast<ssize_t>(msgsz) < 0) return fail(EINVAL);
    if (!msgp) return fail(EFAULT);
    ipc::MsgRcvReq q{msqid, msgsz, msgtyp, msgflg};
    Reply r;
    Stop stop = Stop::kNone;
    if (by_id(ipc::kMsgRcv, ipc::encode_body(q), r, -1, &stop)) {
      if (r.status == ECANCELED) return fail(EINTR);
      if (r.status) return fail(r.status);
      ipc::MsgRcvResp m;
      if (!ipc::decode_body(r.body, m) || m.text.size() > msgsz) return fail(EIO);
      long mtype = static_cast<long>(m.mtype);
      std::memcpy(msgp, &mtype, sizeof mtype);
      std::memcpy(static_cast<uint8_t*>(msgp) + sizeof(long), m.text.data(), m.text.size());
      return static_cast<ssize_t>(m.text.size());
    }
  }
  return real().msgrcv(msqid, msgp, msgsz, msgtyp, msgflg);
}

int msgctl(int msqid, int cmd, struct msqid_ds* buf) {
  bool object_cmd = cmd != IPC_INFO && cmd != MSG_INFO && cmd != MSG_STAT && cmd != MSG_STAT_ANY;
  if (object_cmd && ipc::is_dipc_id(msqid)) {
    if ((cmd == IPC_STAT || cmd == IPC_SET) && !buf) return fail(EFAULT);
    ipc::MsgCtlReq q;
    q.id = msqid;
    q.cmd = cmd;
    if (cmd == IPC_SET) {
      q.uid = buf->msg_perm.uid;
      q.gid = buf->msg_perm.gid;
      q.mode = buf->msg_perm.mode;
      q.qbytes = buf->msg_qbytes;
    }
    Reply r;
    if (by_id(ipc::kMsgCtl, ipc::encode_body(q), r)) {
      if (r.status) return fail(r.status);
      if (cmd == IPC_STAT) {
        ipc::MsgCtlResp resp;
        if (!ipc::decode_body(r.body, resp)) return fail(EIO);
        std::memset(buf, 0, sizeof *buf);
        put_perm(buf->msg_perm, resp.stat.perm);
        buf->msg_stime = resp.stat.stime;
        buf->msg_rtime = resp.stat.rtime;
        buf->msg_ctime = resp.stat.ctime;
        buf->__msg_cbytes = resp.stat.cbytes;
        buf->msg_qnum = resp.stat.qnum;
        buf->msg_qbytes = resp.stat.qbytes;
        buf->msg_lspid = resp.stat.lspid;
        buf->msg_lrpid = resp.stat.lrpid;
      }
      return 0;
    }
  }
  return real().msgctl(msqid, cmd, buf);
}

}  // extern "C"
