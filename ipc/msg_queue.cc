#include "ipc/msg_queue.h"

#include <sys/ipc.h>
#include <sys/msg.h>

#include <cstdint>

namespace dipc::ipc {

namespace {
// testmsg() with convert_mode(): 0 any, > 0 equal (MSG_EXCEPT: not equal), < 0 lowest type <= |msgtyp|.
bool type_matches(int64_t mtype, int64_t msgtyp, int msgflg) {
  if (msgtyp == 0) return true;
  if (msgtyp > 0) return (msgflg & MSG_EXCEPT) ? mtype != msgtyp : mtype == msgtyp;
  int64_t limit = msgtyp == INT64_MIN ? INT64_MAX : -msgtyp;
  return mtype <= limit;
}
}  // namespace

MsgQueue::MsgQueue(const Perm& perm, const Limits& lim, int64_t now)
    : perm_(perm), lim_(lim), qbytes_(static_cast<uint64_t>(lim.msgmnb)), ctime_(now) {}

std::list<Message>::iterator MsgQueue::find(int64_t msgtyp, int msgflg) {
  auto best = msgs_.end();
  for (auto it = msgs_.begin(); it != msgs_.end(); ++it) {
    if (!type_matches(it->mtype, msgtyp, msgflg)) continue;
    if (msgtyp >= 0) return it;
    // Negative msgtyp (SEARCH_LESSEQUAL): the first message of the lowest type <= |msgtyp|.
    if (best == msgs_.end() || it->mtype < best->mtype) best = it;
    if (best->mtype == 1) break;
  }
  return best;
}

bool MsgQueue::pipelined_send(Message& m, const ProcKey& sender, int64_t now) {
  (void)sender;
  for (auto it = receivers_.begin(); it != receivers_.end(); ++it) {
    if (!type_matches(m.mtype, it->msgtyp, it->msgflg)) continue;
    Receiver r = *it;
    receivers_.erase(it);
    if (r.maxsize < m.text.size() && !(r.msgflg & MSG_NOERROR)) {
      // The receiver's buffer is too small: it fails with E2BIG and the message looks for another taker.
      completed_.push_back(Completion{r.token, E2BIG, true, {}});
      return pipelined_send(m, sender, now);
    }
    if (m.text.size() > r.maxsize) m.text.resize(r.maxsize);
    lrpid_ = r.proc.pid;
    rtime_ = now;
    completed_.push_back(Completion{r.token, 0, true, std::move(m)});
    return true;
  }
  return false;
}

void MsgQueue::enqueue(Message m, const ProcKey& sender, int64_t now) {
  lspid_ = sender.pid;
  stime_ = now;
  if (pipelined_send(m, sender, now)) return;
  cbytes_ += m.text.size();
  msgs_.push_back(std::move(m));
}

Outcome MsgQueue::send(uint64_t token, int64_t mtype, std::vector<uint8_t> text, int msgflg, const ProcKey& proc,
                       const Creds& c, int64_t now) {
  if (mtype < 1 || text.size() > static_cast<size_t>(lim_.msgmax)) return {Outcome::kError, EINVAL};
  if (int e = ipc_check(perm_, c, 0222)) return {Outcome::kError, e};
  Message m{mtype, std::move(text)};
  // do_msgsnd(): a sender that fits goes ahead; otherwise IPC_NOWAIT fails and others wait in FIFO order.
  if (!fits(m.text.size())) {
    if (msgflg & IPC_NOWAIT) return {Outcome::kError, EAGAIN};
    senders_.push_back(Sender{token, std::move(m), proc});
    return {Outcome::kBlocked, 0};
  }
  enqueue(std::move(m), proc, now);
  return {Outcome::kDone, 0};
}

Outcome MsgQueue::recv(uint64_t token, int64_t msgtyp, size_t maxsize, int msgflg, const ProcKey& proc,
                       const Creds& c, int64_t now, Message& out) {
  if (msgflg & MSG_COPY) return {Outcome::kError, ENOSYS};
  if (int e = ipc_check(perm_, c, 0444)) return {Outcome::kError, e};
  auto it = find(msgtyp, msgflg);
  if (it != msgs_.end()) {
    if (it->text.size() > maxsize && !(msgflg & MSG_NOERROR)) return {Outcome::kError, E2BIG};
    out = std::move(*it);
    cbytes_ -= out.text.size();
    msgs_.erase(it);
    if (out.text.size() > maxsize) out.text.resize(maxsize);
    lrpid_ = proc.pid;
    rtime_ = now;
    wake_senders(now);
    return {Outcome::kDone, 0};
  }
  if (msgflg & IPC_NOWAIT) return {Outcome::kError, ENOMSG};
  receivers_.push_back(Receiver{token, msgtyp, maxsize, msgflg, proc});
  return {Outcome::kBlocked, 0};
}

// ss_wakeup()/do_msgsnd(): every blocked sender retries, in FIFO order; those whose message now fits go ahead.
void MsgQueue::wake_senders(int64_t now) {
  for (auto it = senders_.begin(); it != senders_.end();) {
    if (!fits(it->msg.text.size())) {
      ++it;
      continue;
    }
    Sender snd = std::move(*it);
    it = senders_.erase(it);
    enqueue(std::move(snd.msg), snd.proc, now);
    completed_.push_back(Completion{snd.token, 0, false, {}});
  }
}

std::vector<MsgQueue::Completion> MsgQueue::take_completed() {
  std::vector<Completion> out;
  out.swap(completed_);
  return out;
}

bool MsgQueue::cancel(uint64_t token) {
  for (auto it = receivers_.begin(); it != receivers_.end(); ++it)
    if (it->token == token) {
      receivers_.erase(it);
      return true;
    }
  for (auto it = senders_.begin(); it != senders_.end(); ++it)
    if (it->token == token) {
      senders_.erase(it);
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

int MsgQueue::set(uint32_t uid, uint32_t gid, uint16_t mode, uint64_t qbytes, const Creds& c, int64_t now) {
  if (int e = ipc_owner_check(perm_, c)) return e;
  if (qbytes > static_cast<uint64_t>(lim_.msgmnb) && !c.cap_sys_resource) return EPERM;
  perm_.uid = uid;
  perm_.gid = gid;
  perm_.mode = static_cast<uint16_t>((perm_.mode & ~0777) | (mode & 0777));
  qbytes_ = qbytes;
  ctime_ = now;
  wake_senders(now);
  return 0;
}

int MsgQueue::check_rmid(const Creds& c) const { return ipc_owner_check(perm_, c); }

}  // namespace dipc::ipc
