#include "ipc/kernel_msg.h"

#include <sys/ipc.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace dipc::ipc {

namespace {

#if defined(SYS_msgsnd) && defined(SYS_msgrcv) && defined(SYS_setgroups)
constexpr bool kSupported = true;
constexpr long kMsgsnd = SYS_msgsnd;
constexpr long kMsgrcv = SYS_msgrcv;
constexpr long kSetgroups = SYS_setgroups;
#else
constexpr bool kSupported = false;
constexpr long kMsgsnd = -1;
constexpr long kMsgrcv = -1;
constexpr long kSetgroups = -1;
#endif

// A worker thread takes the caller's effective ids (supplementary groups, gid, uid: raw system calls, so this thread
// alone), so the kernel checks the caller's rights on every wake-up (IPC_SET may take them away: EACCES), as it
// would its own process's. A caller of uid 0 (the one whose capabilities dipc honours, README) keeps dipcd's; a
// daemon that is not root made the queue as itself (kernel_create_as), so it acts as the queue's owner.
int become(const Creds& c) {
  if (c.uid == 0 || geteuid() != 0) return 0;
  std::vector<gid_t> groups(c.groups.begin(), c.groups.end());
  if (syscall(kSetgroups, groups.size(), groups.data()) != 0) return errno;
  if (syscall(SYS_setresgid, -1, c.gid, -1) != 0) return errno;
  if (syscall(SYS_setresuid, -1, c.uid, -1) != 0) return errno;
  return 0;
}

// The kernel's EINVAL for a queue removed before the worker slept is EIDRM to the caller (its request came first);
// any other EINVAL (msgmax lowered meanwhile) stays.
int removed_or(int kid, int e) {
  if (e != EINVAL) return e;
  struct msqid_ds ds {};
  if (msgctl(kid, IPC_STAT, &ds) != 0 && (errno == EINVAL || errno == EIDRM)) return EIDRM;
  return e;
}

// msgsnd()'s buffer: the type as a long, then the text.
std::vector<uint8_t> message_buffer(int64_t mtype, const Bytes& text) {
  std::vector<uint8_t> b(sizeof(long) + text.size());
  long t = static_cast<long>(mtype);
  std::memcpy(b.data(), &t, sizeof t);
  if (!text.empty()) std::memcpy(b.data() + sizeof t, text.data(), text.size());
  return b;
}

void take_message(const uint8_t* buf, size_t n, Message& out) {
  long t;
  std::memcpy(&t, buf, sizeof t);
  out.mtype = t;
  out.text.assign(buf + sizeof t, buf + sizeof t + n);
}

}  // namespace

bool KernelMsgQueue::supported() {
  if (!kSupported || !kernel_workers_possible()) return false;
  static const bool ok = [] {
    int kid = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    if (kid < 0) return false;
    return kernel_sleep_visible(
        kMsgrcv,
        [kid] {
          long buf[2];
          (void)syscall(kMsgrcv, kid, buf, sizeof(long), 0L, 0);  // until the queue is removed
        },
        [kid] { msgctl(kid, IPC_RMID, nullptr); });
  }();
  return ok;
}

std::unique_ptr<KernelMsgQueue> KernelMsgQueue::create(EventLoop& loop, const Creds& c, uint16_t mode) {
  if (!kSupported) {
    errno = ENOSYS;
    return nullptr;
  }
  int kid = kernel_create_as(c, [&] { return msgget(IPC_PRIVATE, IPC_CREAT | (mode & 0777)); });
  if (kid < 0) return nullptr;
  return std::unique_ptr<KernelMsgQueue>(new KernelMsgQueue(loop, kid));
}

KernelMsgQueue::~KernelMsgQueue() {
  msgctl(kid_, IPC_RMID, nullptr);  // every waiter, the workers too, returns EIDRM; waits_ waits for them
}

int KernelMsgQueue::stat(struct msqid_ds& out) const {
  if (msgctl(kid_, IPC_STAT, &out) != 0) return errno;
  pid_t self = getpid();
  if (out.msg_lspid == self) out.msg_lspid = remote_pid_[0].load();
  // A message the kernel handed straight to a waiting receiver (pipelined_send()) records that receiver's thread
  // id: a worker's, here.
  if (out.msg_lrpid == self || (out.msg_lrpid != 0 && out.msg_lrpid == remote_pid_[2].load()))
    out.msg_lrpid = remote_pid_[1].load();
  return 0;
}

int KernelMsgQueue::set(uint32_t uid, uint32_t gid, uint16_t mode, uint64_t qbytes) {
  struct msqid_ds ds {};
  if (msgctl(kid_, IPC_STAT, &ds) != 0) return errno;
  ds.msg_perm.uid = uid;
  ds.msg_perm.gid = gid;
  ds.msg_perm.mode = mode & 0777;
  ds.msg_qbytes = static_cast<msglen_t>(qbytes);
  return msgctl(kid_, IPC_SET, &ds) == 0 ? 0 : errno;
}

int KernelMsgQueue::try_send(int64_t mtype, const Bytes& text, int flg, int32_t pid) {
  std::vector<uint8_t> b = message_buffer(mtype, text);
  if (syscall(kMsgsnd, kid_, b.data(), text.size(), flg | IPC_NOWAIT) != 0) return errno;
  remote_pid_[0].store(pid);
  return 0;
}

int KernelMsgQueue::try_recv(size_t maxsize, int64_t msgtyp, int flg, int32_t pid, Message& out) {
  static std::vector<uint8_t> buf;  // the loop thread's, kept between calls
  if (buf.size() < sizeof(long) + maxsize) buf.resize(sizeof(long) + maxsize);
  long n = syscall(kMsgrcv, kid_, buf.data(), maxsize, static_cast<long>(msgtyp), flg | IPC_NOWAIT);
  if (n < 0) return errno;
  take_message(buf.data(), static_cast<size_t>(n), out);
  if (!(flg & MSG_COPY)) remote_pid_[1].store(pid);
  return 0;
}

bool KernelMsgQueue::start_send(uint64_t token, const Creds& c, int64_t mtype, Bytes text, int flg,
                                std::function<void()> registered, std::function<void(int)> done) {
  int kid = kid_;
  std::atomic<int32_t>* pids = remote_pid_.get();  // lives until waits_ saw this call return
  size_t size = text.size();
  auto call = [kid, pids, c, flg, size, b = message_buffer(mtype, text), switched = false, bad = 0]() mutable {
    if (!switched) {
      switched = true;
      bad = become(c);
    }
    if (bad) return bad;
    if (syscall(kMsgsnd, kid, b.data(), size, flg) == 0) {
      pids[0].store(c.pid);  // before anyone can read msg_lspid through dipcd
      return 0;
    }
    return removed_or(kid, errno);
  };
  return waits_.start(token, kMsgsnd, std::move(call), std::move(registered), std::move(done));
}

bool KernelMsgQueue::start_recv(uint64_t token, const Creds& c, size_t maxsize, int64_t msgtyp, int flg,
                                std::function<void()> registered, std::function<void(int, Message)> done) {
  int kid = kid_;
  std::atomic<int32_t>* pids = remote_pid_.get();
  auto got = std::make_shared<Message>();
  auto call = [kid, pids, c, maxsize, msgtyp, flg, got, b = std::vector<uint8_t>(), switched = false,
               bad = 0]() mutable {
    if (!switched) {
      switched = true;
      bad = become(c);
      b.resize(sizeof(long) + maxsize);
    }
    if (bad) return bad;
    long n = syscall(kMsgrcv, kid, b.data(), maxsize, static_cast<long>(msgtyp), flg);
    if (n >= 0) {
      take_message(b.data(), static_cast<size_t>(n), *got);
      pids[2].store(static_cast<int32_t>(syscall(SYS_gettid)));
      pids[1].store(c.pid);
      return 0;
    }
    return removed_or(kid, errno);
  };
  auto finished = [got, done = std::move(done)](int e) { done(e, e == 0 ? std::move(*got) : Message{}); };
  return waits_.start(token, kMsgrcv, std::move(call), std::move(registered), std::move(finished));
}

}  // namespace dipc::ipc
