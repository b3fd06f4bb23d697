// One System V message queue, as Linux ipc/msg.c implements it: pure state, no I/O, no threads, time passed in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <vector>

#include "ipc/sem_set.h"  // Outcome
#include "ipc/types.h"

namespace dipc::ipc {

struct MsgStat {
  Perm perm;
  int64_t stime = 0, rtime = 0, ctime = 0;
  uint64_t cbytes = 0, qnum = 0, qbytes = 0;
  int32_t lspid = 0, lrpid = 0;
};

struct Message {
  int64_t mtype = 0;
  std::vector<uint8_t> text;
};

class MsgQueue {
 public:
  MsgQueue(const Perm& perm, const Limits& lim, int64_t now);
  const Perm& perm() const { return perm_; }
  void set_limits(const Limits& lim) { lim_ = lim; }  // the home's limits now (msgmax, msgmnb)
  size_t qnum() const { return msgs_.size(); }
  uint64_t cbytes() const { return cbytes_; }

  Outcome send(uint64_t token, int64_t mtype, std::vector<uint8_t> text, int msgflg, const ProcKey& proc,
               const Creds& c, int64_t now);
  // MSG_COPY (IPC_NOWAIT required, MSG_EXCEPT refused: the caller checks both): msgtyp is an index; copies.
  Outcome recv(uint64_t token, int64_t msgtyp, size_t maxsize, int msgflg, const ProcKey& proc, const Creds& c,
               int64_t now, Message& out);
  struct Completion {
    uint64_t token;
    int err;
    bool is_recv;
    Message msg;  // successful receivers only
  };
  std::vector<Completion> take_completed();  // in completion order; drains
  bool cancel(uint64_t token);               // false if not pending
  std::vector<uint64_t> remove_waiters();    // IPC_RMID: receivers first, then senders; the caller answers EIDRM
  int stat(const Creds& c, MsgStat& out) const;
  int set(uint32_t uid, uint32_t gid, uint16_t mode, uint64_t qbytes, const Creds& c, int64_t now);
  int check_rmid(const Creds& c) const;
  // A queue backed by a kernel queue (kernel_msg.h): the owner and mode as the kernel queue has them now.
  void sync(uint32_t uid, uint32_t gid, uint16_t mode) {
    perm_.uid = uid;
    perm_.gid = gid;
    perm_.mode = static_cast<uint16_t>((perm_.mode & ~0777) | (mode & 0777));
  }
  size_t pending_receivers() const { return receivers_.size(); }
  size_t pending_senders() const { return senders_.size(); }

 private:
  struct Receiver {
    uint64_t token;
    int64_t msgtyp;
    size_t maxsize;
    int msgflg;
    ProcKey proc;
    Creds creds;
  };
  struct Sender {
    uint64_t token;
    Message msg;
    ProcKey proc;
    Creds creds;
  };
  // msg_fits_inqueue(): both the bytes and the message count are bounded by qbytes.
  bool fits(size_t size) const { return cbytes_ + size <= qbytes_ && msgs_.size() + 1 <= qbytes_; }
  std::list<Message>::iterator find(int64_t msgtyp, int msgflg);
  Outcome copy(int64_t index, size_t maxsize, int msgflg, Message& out) const;
  bool pipelined_send(Message& m, int64_t now);
  void enqueue(Message m, const ProcKey& sender, int64_t now);
  void wake_senders(int64_t now);

  Perm perm_;
  Limits lim_;
  std::list<Message> msgs_;
  uint64_t cbytes_ = 0, qbytes_ = 0;
  int64_t stime_ = 0, rtime_ = 0, ctime_ = 0;
  int32_t lspid_ = 0, lrpid_ = 0;
  std::list<Receiver> receivers_;
  std::list<Sender> senders_;
  std::vector<Completion> completed_;
};

}  // namespace dipc::ipc
