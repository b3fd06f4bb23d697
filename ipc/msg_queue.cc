#include "ipc/msg_queue.h"

#include <sys/ipc.h>
#include <sys/msg.h>

#include <algorithm>
#include <cstdint>

namespace dipc::ipc {

namespace {
// convert_mode() + testmsg(): 0 any; > 0 that type (MSG_EXCEPT: any other); < 0 any type <= |msgtyp|.
bool type_matches(int64_t mtype, int64_t msgtyp, int msgflg) {
  if (msgtyp == 0) return true;
  if (msgtyp > 0) return (msgflg & MSG_EXCEPT) ? mtype != msgtyp : mtype == msgtyp;
  return mtype <= (msgtyp == INT64_MIN ? INT64_MAX : -msgtyp);
}
}  // namespace

MsgQueue::MsgQueue(const Perm& perm, const Limits& lim, int64_t now)
    : perm_(perm), lim_(lim), qbytes_(static_cast<uint64_t>(lim.msgmnb)), ctime_(now) {}

// find_msg(): the first match; for a negative msgtyp the first message of the lowest matching type.
std::list<Message>::iterator MsgQueue::find(int64_t msgtyp, int msgflg) {
  auto best = msgs_.end();
  for (auto it = msgs_.begin(); it != msgs_.end(); ++it) {
    if (!type_matches(it->mtype, msgtyp, msgflg)) continue;
    if (msgtyp >= 0 || it->mtype == 1) return it;
    if (best == msgs_.end() || it->mtype < best->mtype) best = it;
  }
  return best;
}

// pipelined_send(): give a new message straight to the oldest matching receiver. A matching receiver whose buffer
// is too small (and has no MSG_NOERROR) is woken with E2BIG and the next one is tried.
bool MsgQueue::pipelined_send(Message& m, int64_t now) {
  for (auto it = receivers_.begin(); it != receivers_.end();) {
    if (!type_matches(m.mtype, it->msgtyp, it->msgflg)) {
      ++it;
      continue;
    }
    if (m.text.size() > it->maxsize && !(it->msgflg & MSG_NOERROR)) {
      completed_.push_back(Completion{it->token, E2BIG, true, {}});
      it = receivers_.erase(it);
      continue;
    }
    if (m.text.size() > it->maxsize) m.text.resize(it->maxsize);  // do_msg_fill() copies at most bufsz
    lrpid_ = it->proc.pid;
    rtime_ = now;
    completed_.push_back(Completion{it->token, 0, true, std::move(m)});
    receivers_.erase(it);
    return true;
  }
  return false;
}

void MsgQueue::enqueue(Message m, const ProcKey& sender, int64_t now) {
  lspid_ = sender.pid;
  stime_ = now;
  if (pipelined_send(m, now)) return;
  cbytes_ += m.text.size();
  msgs_.push_back(std::move(m));
}

// do_msgsnd(): a sender that fits goes ahead even if others are blocked (no fairness, as in Linux).
Outcome MsgQueue::send(uint64_t token, int64_t mtype, std::vector<uint8_t> text, int msgflg, const ProcKey& proc,
                       const Creds& c, int64_t now) {
  if (text.size() > static_cast<size_t>(lim_.msgmax) || mtype < 1) return {Outcome::kError, EINVAL};
  if (int e = ipc_check(perm_, c, 0222)) return {Outcome::kError, e};
  Message m{mtype, std::move(text)};
  if (!fits(m.text.size())) {
    if (msgflg & IPC_NOWAIT) return {Outcome::kError, EAGAIN};
    senders_.push_back(Sender{token, std::move(m), proc, c});
    return {Outcome::kBlocked, 0};
  }
  enqueue(std::move(m), proc, now);
  return {Outcome::kDone, 0};
}

Outcome MsgQueue::recv(uint64_t token, int64_t msgtyp, size_t maxsize, int msgflg, const ProcKey& proc,
                       const Creds& c, int64_t now, Message& out) {
  if (int e = ipc_check(perm_, c, 0444)) return {Outcome::kError, e};
  if (msgflg & MSG_COPY) return copy(msgtyp, maxsize, msgflg, out);
  auto it = find(msgtyp, msgflg);
  if (it == msgs_.end()) {
    if (msgflg & IPC_NOWAIT) return {Outcome::kError, ENOMSG};
    receivers_.push_back(Receiver{token, msgtyp, maxsize, msgflg, proc, c});
    return {Outcome::kBlocked, 0};
  }
  // do_msgrcv(): a too long message stays queued unless MSG_NOERROR lets it be truncated.
  if (it->text.size() > maxsize && !(msgflg & MSG_NOERROR)) return {Outcome::kError, E2BIG};
  out = std::move(*it);
  msgs_.erase(it);
  cbytes_ -= out.text.size();
  if (out.text.size() > maxsize) out.text.resize(maxsize);
  lrpid_ = proc.pid;
  rtime_ = now;
  wake_senders(now);
  return {Outcome::kDone, 0};
}

// do_msgrcv() with MSG_COPY (the caller checked IPC_NOWAIT and no MSG_EXCEPT): a copy of the message at index
// `index`, the queue untouched (no lrpid, no rtime). A message longer than the buffer is E2BIG, or with MSG_NOERROR
// EINVAL (copy_msg() refuses to truncate); the copy buffer is also bounded by msgmax.
Outcome MsgQueue::copy(int64_t index, size_t maxsize, int msgflg, Message& out) const {
  if (index < 0 || static_cast<uint64_t>(index) >= msgs_.size()) return {Outcome::kError, ENOMSG};
  const Message& m = *std::next(msgs_.begin(), static_cast<std::ptrdiff_t>(index));
  if (m.text.size() > maxsize && !(msgflg & MSG_NOERROR)) return {Outcome::kError, E2BIG};
  if (m.text.size() > std::min(maxsize, static_cast<size_t>(lim_.msgmax))) return {Outcome::kError, EINVAL};
  out = m;
  return {Outcome::kDone, 0};
}

// ss_wakeup() + the woken do_msgsnd() loop: in FIFO order, every blocked sender whose message now fits re-checks
// its permission (IPC_SET may have revoked it: EACCES) and sends. Senders that still do not fit keep waiting.
void MsgQueue::wake_senders(int64_t now) {
  for (auto it = senders_.begin(); it != senders_.end();) {
    if (!fits(it->msg.text.size())) {
      ++it;
      continue;
    }
    int e = ipc_check(perm_, it->creds, 0222);
    if (!e) enqueue(std::move(it->msg), it->proc, now);
    completed_.push_back(Completion{it->token, e, false, {}});
    it = senders_.erase(it);
  }
}

std::vector<MsgQueue::Completion> MsgQueue::take_completed() {
  std::vector<Completion> out;
  out.swap(completed_);
  return out;
}

bool MsgQueue::cancel(uint64_t token) {
  auto r = std::find_if(receivers_.begin(), receivers_.end(), [&](const Receiver& x) { return x.token == token; });
  if (r != receivers_.end()) {
    receivers_.erase(r);
    return true;
  }
  auto s = std::find_if(senders_.begin(), senders_.end(), [&](const Sender& x) { return x.token == token; });
  if (s != senders_.end()) {
    senders_.erase(s);
    return true;
  }
  return false;
}

std::vector<uint64_t> MsgQueue::remove_waiters() {
  std::vector<uint64_t> out;
  for (const auto& r : receivers_) out.push_back(r.token);
  for (const auto& s : senders_) out.push_back(s.token);
  receivers_.clear();
  senders_.clear();
  return out;
}

int MsgQueue::stat(const Creds& c, MsgStat& out) const {
  if (int e = ipc_check(perm_, c, 0444)) return e;
  out.perm = perm_;
  out.stime = stime_;
  out.rtime = rtime_;
  out.ctime = ctime_;
  out.cbytes = cbytes_;
  out.qnum = msgs_.size();
  out.qbytes = qbytes_;
  out.lspid = lspid_;
  out.lrpid = lrpid_;
  return 0;
}

// msgctl_down(IPC_SET): then expunge_all(-EAGAIN) makes every waiting receiver retry, which fails with EACCES if
// the new mode denies it read access (the others find nothing and wait again, in the same order), and ss_wakeup()
// lets senders that now fit go ahead.
int MsgQueue::set(uint32_t uid, uint32_t gid, uint16_t mode, uint64_t qbytes, const Creds& c, int64_t now) {
  if (int e = ipc_owner_check(perm_, c)) return e;
  if (qbytes > static_cast<uint64_t>(lim_.msgmnb) && !c.cap_sys_resource) return EPERM;
  perm_.uid = uid;
  perm_.gid = gid;
  perm_.mode = static_cast<uint16_t>((perm_.mode & ~0777) | (mode & 0777));
  qbytes_ = qbytes;
  ctime_ = now;
  for (auto it = receivers_.begin(); it != receivers_.end();) {
    if (ipc_check(perm_, it->creds, 0444) == 0) {
      ++it;
      continue;
    }
    completed_.push_back(Completion{it->token, EACCES, true, {}});
    it = receivers_.erase(it);
  }
  wake_senders(now);
  return 0;
}

int MsgQueue::check_rmid(const Creds& c) const { return ipc_owner_check(perm_, c); }

}  // namespace dipc::ipc
