#include "preload/client.h"

#include <poll.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "common/frame.h"
#include "common/unix_socket.h"
#include "ipc/protocol.h"

namespace dipc::preload {

namespace {

constexpr int64_t kRetryMs = 1000;          // at most one connection attempt per second while no daemon answers
constexpr int64_t kCancelGraceMs = 30000;   // after a cancel, the answer must come within this

struct Conn {
  int fd = -1;
  uid_t euid = 0;
  gid_t egid = 0;
  uint64_t next_id = 1;
  FrameParser parser;
};

thread_local Conn t_conn;
std::atomic<const ipc::ControlPage*> g_control{nullptr};
std::atomic<int64_t> g_last_fail{-kRetryMs};
pthread_once_t g_once = PTHREAD_ONCE_INIT;

void reset(Conn& c) {
  if (c.fd >= 0) close(c.fd);
  c.fd = -1;
  c.parser = FrameParser();
}

// In a fork()ed child the inherited socket belongs to the parent: drop our copy without a word on it.
void atfork_child() { reset(t_conn); }
void init_once() { pthread_atfork(nullptr, nullptr, atfork_child); }

bool send_all(int fd, const uint8_t* p, size_t n) {
  while (n) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads until a whole frame arrives or the deadline passes. Returns 1 (frame), 0 (deadline), -1 (EINTR), -2 (broken).
int read_frame(Conn& c, FrameParser::Frame& f, int64_t deadline_ms, int* fd_out = nullptr) {
  for (;;) {
    if (c.parser.next(f)) return 1;
    if (c.parser.failed()) return -2;
    int timeout = -1;
    if (deadline_ms >= 0) {
      int64_t left = deadline_ms - now_ms();
      if (left <= 0) return 0;
      timeout = static_cast<int>(left);
    }
    pollfd p{c.fd, POLLIN, 0};
    int r = poll(&p, 1, timeout);
    if (r < 0 && errno == EINTR) return -1;
    if (r < 0) return -2;
    if (r == 0) continue;
    uint8_t buf[16384];
    iovec iov{buf, sizeof buf};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    ssize_t n = recvmsg(c.fd, &m, MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return -2;
    for (cmsghdr* cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
      if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(cm), sizeof fd);
        if (fd_out && *fd_out < 0)
          *fd_out = fd;
        else
          close(fd);
      }
    }
    c.parser.feed(buf, static_cast<size_t>(n));
  }
}

bool connect_daemon(Conn& c) {
  pthread_once(&g_once, init_once);
  if (c.fd >= 0) {
    if (c.euid == geteuid() && c.egid == getegid()) return true;
    reset(c);  // credentials changed: the daemon must learn the new ones from the kernel
  }
  int64_t now = now_ms();
  if (now - g_last_fail.load(std::memory_order_relaxed) < kRetryMs) return false;
  int saved = errno;
  auto fd = unix_connect(default_socket_name());
  if (!fd) {
    g_last_fail.store(now, std::memory_order_relaxed);
    errno = saved;
    return false;
  }
  c.fd = *fd;
  c.euid = geteuid();
  c.egid = getegid();
  Bytes req;
  append_frame(req, FrameHeader{FrameKind::kRequest, ipc::kHello, c.next_id++, 0, 0},
               ipc::encode_body(ipc::HelloReq{}));
  FrameParser::Frame f;
  int memfd = -1;
  ipc::HelloResp hr;
  bool ok = send_all(c.fd, req.data(), req.size());
  while (ok) {
    int r = read_frame(c, f, now_ms() + 5000, &memfd);
    if (r == -1) continue;
    ok = r == 1 && f.header.status == 0 && ipc::decode_body(f.payload, hr) && memfd >= 0;
    break;
  }
  if (ok && !g_control.load()) {
    void* p = mmap(nullptr, sizeof(ipc::ControlPage), PROT_READ, MAP_SHARED, memfd, 0);
    const ipc::ControlPage* expected = nullptr;
    if (p == MAP_FAILED || static_cast<const ipc::ControlPage*>(p)->magic != ipc::kControlMagic) {
      if (p != MAP_FAILED) munmap(p, sizeof(ipc::ControlPage));
      ok = false;
    } else if (!g_control.compare_exchange_strong(expected, static_cast<const ipc::ControlPage*>(p))) {
      munmap(p, sizeof(ipc::ControlPage));  // another thread mapped it first
    }
  }
  if (memfd >= 0) close(memfd);
  if (!ok) {
    reset(c);
    g_last_fail.store(now, std::memory_order_relaxed);
  }
  errno = saved;
  return ok;
}

}  // namespace

int64_t now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

const ipc::ControlPage* control() {
  if (!g_control.load(std::memory_order_acquire)) connect_daemon(t_conn);
  return g_control.load(std::memory_order_acquire);
}

bool call(uint16_t op, const Bytes& body, Reply& out, int64_t deadline_ms, Stop* stopped) {
  Conn& c = t_conn;
  if (!connect_daemon(c)) return false;
  uint64_t id = c.next_id++;
  Bytes req;
  append_frame(req, FrameHeader{FrameKind::kRequest, op, id, 0, 0}, body);
  if (!send_all(c.fd, req.data(), req.size())) {
    reset(c);
    out = Reply{EIO, {}};
    return true;
  }
  bool cancellable = stopped != nullptr;
  bool cancelled = false;
  FrameParser::Frame f;
  for (;;) {
    int r = read_frame(c, f, deadline_ms);
    if (r == 1) {
      if (f.header.kind != FrameKind::kResponse || f.header.id != id) continue;  // stale answer: skip
      out.status = f.header.status;
      out.body = std::move(f.payload);
      return true;
    }
    if (r == -2 || (r == 0 && cancelled)) {
      reset(c);
      out = Reply{cancelled && stopped && *stopped == Stop::kSignal ? EINTR : EIO, {}};
      return true;
    }
    if (r == -1 && (!cancellable || cancelled)) continue;  // not interruptible, or already cancelling
    // A signal or the deadline: withdraw the call, then wait (bounded) for its one answer.
    if (stopped) *stopped = r == -1 ? Stop::kSignal : Stop::kDeadline;
    Bytes cancel;
    append_frame(cancel, FrameHeader{FrameKind::kOneWay, ipc::kCancel, id, 0, 0}, {});
    if (!send_all(c.fd, cancel.data(), cancel.size())) {
      reset(c);
      out = Reply{EIO, {}};
      return true;
    }
    cancelled = true;
    deadline_ms = now_ms() + kCancelGraceMs;
  }
}

}  // namespace dipc::preload
