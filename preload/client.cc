#include "preload/client.h"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "common/fd_passing.h"
#include "common/frame.h"
#include "common/spare_cpu.h"
#include "ipc/protocol.h"

namespace dipc::preload {

namespace {

constexpr int64_t kSecond = 1'000'000'000;
constexpr int64_t kRetryNs = kSecond;            // while no daemon answers: one connection attempt per second
constexpr int64_t kHelloNs = 5 * kSecond;        // the daemon answers kHello at once
constexpr int64_t kCancelGraceNs = 30 * kSecond;  // after kCancel, the request's answer must come within this
constexpr int64_t kRegisterNs = 10 * kSecond;     // a call that may block polls at most this long for kBlocked
// ... and for the first kRegisterHotNs of that poll it keeps its CPU (no sched_yield): a registration takes one round
// trip to the home (100-300 us here), well inside a time slice, while a yield under load puts the caller behind
// every runnable task: it was then runnable, not sleeping, when the answer came, got no wake-up and waited 7-15 ms
// for its turn (docs/PERFORMANCE.md, "Wake-ups"). Only when the daemon runs under a real-time policy (the default
// `sched = "auto"` with the right to it): a daemon under the normal policy would wait behind the polling caller
// until its slice ends (measured 1.75x slower), so then the poll yields from the start as before.
constexpr int64_t kRegisterHotNs = 1'000'000;
constexpr size_t kMaxConns = 256;
constexpr int64_t kReconnectStepNs = 50'000'000;  // between connection attempts while a call waits for a daemon

// Every open connection of the process (fd + 1; 0 = free), so a fork()ed child can close the inherited ones of all
// threads. Lock-free, so the child handler never waits on a lock another thread held at fork().
std::atomic<int> g_conn_fds[kMaxConns];

std::atomic<const ipc::ControlPage*> g_control{nullptr};
std::atomic<const ipc::ShmTable*> g_table{nullptr};  // in g_control's mapping, or nullptr
std::atomic<uint64_t> g_control_ino{0};  // which memfd g_control maps: a restarted daemon has a new one
std::atomic<int> g_incompatible{0};     // EPROTO: a daemon answered that this library cannot use
std::atomic<int64_t> g_retry_at{0};      // no connection attempt before this (CLOCK_MONOTONIC ns)
pthread_once_t g_once = PTHREAD_ONCE_INIT;
// DIPC_SPIN_US (default 100): poll this long, yielding the CPU between polls, before sleeping: an answer that
// comes within it costs no wake-up (a remote call's answer takes one network round trip). 0 turns it off.
const int64_t g_spin_ns = [] {
  const char* e = getenv("DIPC_SPIN_US");
  return e ? std::max(0L, atol(e)) * 1000 : 100'000;
}();
// DIPC_RETRY_MS (default 1000): how long a call on a distributed key or id keeps trying to reach a daemon that is
// gone (restarting) before it fails with EIO. It never goes to the kernel instead.
const int64_t g_retry_ns = [] {
  const char* e = getenv("DIPC_RETRY_MS");
  return e ? std::max(0L, atol(e)) * 1'000'000 : 1000 * int64_t{1'000'000};
}();

struct Conn {
  int fd = -1;
  int slot = -1;
  uid_t euid = 0;
  gid_t egid = 0;
  uint64_t next_id = 1;
  bool busy = false;
  bool daemon_rt = false;  // the daemon runs SCHED_FIFO/RR: it preempts a caller polling without yielding
  FrameParser parser;
  Bytes rbuf;

  Conn() = default;
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  ~Conn() { reset(); }

  void reset() {
    if (slot >= 0) g_conn_fds[slot].store(0);
    if (fd >= 0) close(fd);
    forget();
  }
  // Forgets the connection without closing it (the fork child handler closes every inherited fd itself).
  void forget() {
    fd = -1;
    slot = -1;
    next_id = 1;
    busy = false;
    daemon_rt = false;
    parser = FrameParser();
  }
  void adopt(int new_fd) {
    fd = new_fd;
    for (size_t i = 0; i < kMaxConns && slot < 0; ++i) {
      int expected = 0;
      if (g_conn_fds[i].compare_exchange_strong(expected, new_fd + 1)) slot = static_cast<int>(i);
    }
    euid = geteuid();
    egid = getegid();
  }
};

thread_local Conn t_conn;

// The child of fork() must not speak on its parent's connections: it reconnects with its own pid.
void atfork_child() {
  t_conn.forget();
  for (auto& s : g_conn_fds)
    if (int v = s.exchange(0)) close(v - 1);
}

int64_t left_ms(int64_t deadline) {
  int64_t left = deadline - now_ns();
  if (left <= 0) return 0;
  return std::min<int64_t>((left + 999'999) / 1'000'000, INT_MAX);
}

// Sends a whole frame; on failure returns the errno and how much went out.
int send_all(int fd, const Bytes& b, size_t& sent) {
  sent = 0;
  while (sent < b.size()) {
    ssize_t n = ::send(fd, b.data() + sent, b.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EPIPE;
    sent += static_cast<size_t>(n);
  }
  return 0;
}

enum class Read { kFrame, kTimeout, kSignal, kBroken };

// Waits for the next whole frame. `deadline` < 0: no limit. EINTR from poll ends the wait only when `signals`.
// A descriptor passed with SCM_RIGHTS goes to *passed_fd when asked for (the first one), else it is closed.
// Polls at least until `spin_until` (CLOCK_MONOTONIC ns) before it sleeps: without yielding the CPU until
// `hot_until`, yielding it between polls after that.
// `unblocked`: the caller blocked signals (SignalGate) and they are let in only inside ppoll with this mask.
Read read_frame(Conn& c, FrameParser::Frame& f, int64_t deadline, bool signals, int* passed_fd = nullptr,
                int64_t spin_until = 0, int64_t hot_until = 0, const sigset_t* unblocked = nullptr) {
  const timespec zero{0, 0};
  auto wait_in = [&](pollfd* p, int timeout_ms) {
    if (!unblocked) return poll(p, 1, timeout_ms);
    timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
    return ppoll(p, 1, timeout_ms < 0 ? nullptr : timeout_ms == 0 ? &zero : &ts, unblocked);
  };
  if (c.rbuf.empty()) c.rbuf.resize(64 << 10);
  for (;;) {
    if (c.parser.next(f)) return Read::kFrame;
    if (c.parser.failed()) return Read::kBroken;
    pollfd p{c.fd, POLLIN, 0};
    int timeout = deadline < 0 ? -1 : static_cast<int>(left_ms(deadline));
    int r = 0;
    // The optional spin (DIPC_SPIN_US) runs only while a CPU is spare: with every CPU busy a yield costs a time
    // slice. The poll until `spin_until` is not optional (a blocking call sleeps only once registered).
    int64_t until = std::max(g_spin_ns > 0 && spare_cpu() ? now_ns() + g_spin_ns : 0, spin_until);
    if (until > 0 && timeout != 0) {
      if (deadline >= 0) until = std::min(until, deadline);
      for (unsigned i = 1; (r = wait_in(&p, 0)) == 0;) {
        int64_t now = now_ns();
        if (now >= until) break;
        if (now < hot_until) continue;
        if (i++ % 16 == 0 && now >= spin_until && !spare_cpu()) break;
        sched_yield();  // let the daemon have the CPU
      }
    }
    if (r == 0) r = wait_in(&p, timeout);
    if (r < 0 && errno == EINTR) {
      if (signals) return Read::kSignal;
      continue;
    }
    if (r < 0) return Read::kBroken;
    if (r == 0) {
      if (deadline >= 0 && now_ns() >= deadline) return Read::kTimeout;
      continue;
    }
    for (;;) {  // drain what is there
      ssize_t n = recv_with_fds(c.fd, c.rbuf.data(), c.rbuf.size(), MSG_DONTWAIT, [&](int fd) {
        if (passed_fd && *passed_fd < 0)
          *passed_fd = fd;
        else
          close(fd);
      });
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      if (n <= 0) return Read::kBroken;
      c.parser.feed(c.rbuf.data(), static_cast<size_t>(n));
      if (static_cast<size_t>(n) < c.rbuf.size()) break;
    }
  }
}

// Says once on stderr why this process cannot use its node's daemon; *get calls fail with EPROTO from then on.
void incompatible(const char* why) {
  if (g_incompatible.exchange(EPROTO)) return;
  int saved = errno;
  std::string_view a = "dipc: the node's dipcd cannot be used by this program: ", b = why,
                   c = "; calls on distributed keys fail with EPROTO\n";
  for (std::string_view m : {a, b, c})
    if (write(STDERR_FILENO, m.data(), m.size()) < 0) break;
  errno = saved;
}

// Maps the daemon's control page unless this very memfd is already mapped. An older mapping (a previous daemon's)
// stays mapped: other threads may still be reading it.
bool map_control(int memfd) {
  struct stat st{};
  if (fstat(memfd, &st) != 0 || st.st_size < static_cast<off_t>(sizeof(ipc::ControlPage))) return false;
  uint64_t ino = static_cast<uint64_t>(st.st_ino) ^ (static_cast<uint64_t>(st.st_dev) << 48);
  if (g_control.load(std::memory_order_acquire) && g_control_ino.load() == ino) return true;
  const auto len = static_cast<size_t>(std::min<off_t>(st.st_size, off_t{1} << 20));  // the page and the table
  void* p = mmap(nullptr, len, PROT_READ, MAP_SHARED, memfd, 0);
  if (p == MAP_FAILED) return false;
  auto* page = static_cast<const ipc::ControlPage*>(p);
  ipc::ControlCheck check = page->check();
  if (check != ipc::ControlCheck::kOk) {
    munmap(p, len);
    incompatible(check == ipc::ControlCheck::kOtherByteOrder ? "its control page is in the other byte order"
                 : check == ipc::ControlCheck::kOtherVersion ? "its control page is of another version"
                                                              : "its control page has a bad magic number");
    return false;
  }
  const ipc::ShmTable* table = nullptr;
  if (uint32_t off = page->shm_table_off();
      off >= sizeof(ipc::ControlPage) && off % 8 == 0 && off <= len && len - off >= sizeof(ipc::ShmTable)) {
    auto* t = reinterpret_cast<const ipc::ShmTable*>(static_cast<const char*>(p) + off);
    if (t->valid()) table = t;
  }
  g_incompatible.store(0);
  // The inode last: another thread that finds it mapped already (above) also finds the page and its table.
  g_table.store(table, std::memory_order_release);
  g_control.store(page, std::memory_order_release);
  g_control_ino.store(ino);
  return true;
}

}  // namespace

namespace {

// Whether the process listening on a socket may be our daemon: root, the program's own effective uid (a daemon one
// runs oneself, as in a cluster simulated without root), or $DIPC_DAEMON_UID. Anyone else may have bound the name
// first (an abstract name is free for all) to read every call and forge the control page: refused, loudly.
bool trusted_daemon(int fd, const char* name) {
  ucred uc{};
  socklen_t len = sizeof uc;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0) return false;
  if (uc.uid == 0 || uc.uid == geteuid()) return true;
  const char* want = getenv("DIPC_DAEMON_UID");
  if (want && *want && strtoul(want, nullptr, 10) == uc.uid) return true;
  static std::atomic<bool> said{false};
  if (!said.exchange(true))
    dprintf(2,
            "libdipc: refusing the dipc socket %s: it is held by pid %d of uid %u, not by root or the daemon user "
            "($DIPC_DAEMON_UID); is someone squatting it?\n",
            name, static_cast<int>(uc.pid), static_cast<unsigned>(uc.uid));
  return false;
}

}  // namespace

int connect_socket() {
  const char* env = getenv("DIPC_SOCKET");
  std::string_view name = env && *env ? env : "@dipc";
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (name.size() >= sizeof a.sun_path) return -1;
  std::memcpy(a.sun_path, name.data(), name.size());
  bool abstract = name[0] == '@';
  if (abstract) a.sun_path[0] = '\0';
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + (abstract ? 0 : 1));
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int r;
  while ((r = connect(fd, reinterpret_cast<sockaddr*>(&a), len)) != 0 && errno == EINTR) {
  }
  if (r != 0 || !trusted_daemon(fd, env && *env ? env : "@dipc")) {
    close(fd);
    return -1;
  }
  return fd;
}

namespace {

// Connects and says hello: the daemon answers with HelloResp and its control page memfd (SCM_RIGHTS).
bool open_conn(Conn& c) {
  int fd = connect_socket();
  if (fd < 0) return false;
  c.adopt(fd);
  ucred uc{};
  socklen_t uclen = sizeof uc;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &uclen) == 0) {
    int policy = sched_getscheduler(uc.pid);
    c.daemon_rt = policy == SCHED_FIFO || policy == SCHED_RR;
  }
  Bytes req;
  uint64_t id = c.next_id++;
  append_frame(req, FrameHeader{FrameKind::kRequest, ipc::kHello, id, 0, 0}, ipc::encode_body(ipc::HelloReq{}));
  size_t sent;
  if (send_all(c.fd, req, sent) != 0) return false;
  FrameParser::Frame f;
  int memfd = -1;
  int64_t deadline = now_ns() + kHelloNs;
  Read r = read_frame(c, f, deadline, false, &memfd, deadline);  // answered at once: poll, never sleep
  ipc::HelloResp hr;
  bool ok = r == Read::kFrame && f.header.kind == FrameKind::kResponse && f.header.op == ipc::kHello &&
            f.header.id == id && f.header.status == 0 && ipc::decode_body(f.payload, hr);
  if (ok && hr.version != ipc::kProtocolVersion) {
    incompatible("it speaks another protocol version");
    ok = false;
  }
  ok = ok && memfd >= 0 && map_control(memfd);
  if (memfd >= 0) close(memfd);
  return ok;
}

// A connected socket for this thread's credentials, or false (no daemon). `throttled`: at most one attempt per
// second in the whole process (control(), asked on every *get).
bool ensure(Conn& c, bool throttled) {
  if (c.fd >= 0) {
    if (c.euid == geteuid() && c.egid == getegid()) return true;
    c.reset();  // the daemon must learn the new credentials from the kernel
  }
  if (throttled && now_ns() < g_retry_at.load(std::memory_order_relaxed)) return false;
  pthread_once(&g_once, [] { pthread_atfork(nullptr, nullptr, atfork_child); });
  int saved = errno;
  bool ok = open_conn(c);
  if (!ok) {
    c.reset();
    g_retry_at.store(now_ns() + kRetryNs, std::memory_order_relaxed);
  }
  errno = saved;
  return ok;
}

Bytes frame(FrameKind kind, uint16_t op, uint64_t id, const Bytes& body) {
  Bytes b;
  b.reserve(kFrameHeaderSize + body.size());
  append_frame(b, FrameHeader{kind, op, id, 0, 0}, body);
  return b;
}

// Waits for the answer to request `id`, cancelling it on a signal or at the deadline. Returns false on a broken
// connection or protocol error (the caller closes it).
bool await(Conn& c, uint16_t op, uint64_t id, const Wait& w, Reply& out, const sigset_t* unblocked) {
  int stopped = 0;  // EINTR or EAGAIN once cancelled
  int64_t deadline = w.deadline_ns;
  // A call that may block sleeps only once the home registered its wait (kBlocked): until then it polls, so a
  // program seen sleeping in semop/msgrcv/msgsnd is a registered waiter, as with the kernel.
  int64_t start = w.interruptible ? now_ns() : 0;
  int64_t register_by = w.interruptible ? start + kRegisterNs : 0;
  int64_t hot_until = w.interruptible && c.daemon_rt ? start + kRegisterHotNs : 0;
  FrameParser::Frame f;
  for (;;) {
    Read r = read_frame(c, f, deadline, w.interruptible && !stopped, nullptr, register_by, hot_until, unblocked);
    if (r == Read::kFrame && f.header.kind == FrameKind::kOneWay && f.header.op == ipc::kBlocked &&
        f.header.id == id) {
      register_by = 0;
      hot_until = 0;
      continue;
    }
    if (r == Read::kFrame) break;
    if (r == Read::kBroken) return false;
    if (r == Read::kTimeout && stopped) {  // no answer to the cancel: give up on this connection
      c.reset();
      out = Reply{stopped, {}};
      return true;
    }
    stopped = r == Read::kSignal ? EINTR : EAGAIN;
    size_t sent;
    if (send_all(c.fd, frame(FrameKind::kOneWay, ipc::kCancel, id, {}), sent) != 0) return false;
    deadline = now_ns() + kCancelGraceNs;
  }
  const FrameHeader& h = f.header;
  if (h.kind != FrameKind::kResponse || h.id != id || h.op != op) return false;
  out.status = h.status;
  out.body = std::move(f.payload);
  // Errors carry no body, except the unknown-id marker.
  if (out.status && !out.body.empty() && !out.unknown_id()) return false;
  if (stopped && out.status == ECANCELED) out.status = stopped;
  out.interrupted = stopped == EINTR;
  return true;
}

}  // namespace

bool Reply::unknown_id() const {
  return status == EINVAL && body.size() == 1 && body[0] == ipc::kUnknownIdMarker;
}

int64_t answer_spin_ns() { return g_spin_ns; }

int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * kSecond + ts.tv_nsec;
}

int daemon_incompatible() { return g_incompatible.load(std::memory_order_relaxed); }

const ipc::ShmTable* shm_table(bool check_alive) {
  const ipc::ControlPage* cp = g_control.load(std::memory_order_acquire);
  const ipc::ShmTable* t = g_table.load(std::memory_order_acquire);
  Conn& c = t_conn;
  if (!cp || !t || c.fd < 0 || c.busy) return nullptr;
  // Both from the same daemon's memfd (another thread may be mapping a new one).
  if (reinterpret_cast<const char*>(t) != reinterpret_cast<const char*>(cp) + cp->shm_table_off()) return nullptr;
  if (!check_alive) return t;
  pollfd p{c.fd, POLLRDHUP, 0};  // the daemon that answers this thread is alive: its table is the live one
  return poll(&p, 1, 0) == 0 ? t : nullptr;
}

const ipc::ControlPage* control() {
  const ipc::ControlPage* p = g_control.load(std::memory_order_acquire);
  if (p || t_conn.busy) return p;
  (void)ensure(t_conn, true);
  return g_control.load(std::memory_order_acquire);
}

namespace {
// Says once per process why distributed calls fail.
void say_no_daemon() {
  static std::atomic<bool> said{false};
  if (said.exchange(true)) return;
  const char* env = getenv("DIPC_SOCKET");
  dprintf(2, "libdipc: no dipcd answers on %s: calls on distributed objects fail with EIO\n",
          env && *env ? env : "@dipc");
}
}  // namespace

namespace {

// An interruptible call (one that may block) keeps signals blocked from the moment its request leaves until it
// returns, and lets them in only while it waits in ppoll: a signal that arrives once the call has started then
// always interrupts it (EINTR, the call withdrawn at its home) as the kernel's pending-signal check before it sleeps
// does, even while the program still polls for "blocked" instead of sleeping. A handler never runs half-way through
// the exchange with the daemon.
class SignalGate {
 public:
  void block() {
    if (blocked_) return;
    sigset_t all;
    sigfillset(&all);
    blocked_ = pthread_sigmask(SIG_BLOCK, &all, &old_) == 0;
  }
  void restore() {
    if (!blocked_) return;
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
    errno = saved;
    blocked_ = false;
  }
  const sigset_t* unblocked() const { return blocked_ ? &old_ : nullptr; }
  ~SignalGate() { restore(); }

 private:
  sigset_t old_{};
  bool blocked_ = false;
};

// The mask a CallGate of this thread let signals in with, while one is closed.
thread_local const sigset_t* t_gate_unblocked = nullptr;

}  // namespace

CallGate::CallGate() {
  if (t_gate_unblocked) return;  // an outer gate of this thread already holds them
  sigset_t all;
  sigfillset(&all);
  blocked_ = pthread_sigmask(SIG_BLOCK, &all, &old_) == 0;
  if (blocked_) t_gate_unblocked = &old_;
}

void CallGate::release() {
  if (!blocked_) return;
  blocked_ = false;
  t_gate_unblocked = nullptr;
  int saved = errno;
  pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  errno = saved;
}

bool CallGate::signal_pending() const {
  if (!blocked_) return false;
  sigset_t pending;
  if (sigpending(&pending) != 0) return false;
  for (int s = 1; s < NSIG; ++s) {
    if (sigismember(&pending, s) != 1 || sigismember(&old_, s) == 1) continue;
    struct sigaction sa {};
    // Only a handler interrupts a call; an ignored signal never does, a fatal one ends the process at release().
    if (sigaction(s, nullptr, &sa) == 0 && sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN) return true;
  }
  return false;
}

namespace {

void call_impl(uint16_t op, const Bytes& body, Reply& out, const Wait& wait, const Accept& accept) {
  // A call from a signal handler that interrupted another call on this thread gets a connection of its own, and
  // its own signal gate (the handler's mask is not the outer call's).
  const bool nested = t_conn.busy;
  const sigset_t* outer = nested ? nullptr : t_gate_unblocked;
  SignalGate gate;
  Conn tmp;
  Conn& c = nested ? tmp : t_conn;
  Bytes req;
  uint64_t id = 0;
  int64_t give_up = -1;
  for (int attempt = 0;; ++attempt) {
    // No daemon: keep trying for DIPC_RETRY_MS (a restart), then EIO. Never the kernel.
    while (!ensure(c, false)) {
      int64_t now = now_ns();
      if (give_up < 0) give_up = now + g_retry_ns;
      if (now >= give_up) {
        say_no_daemon();
        out = Reply{EIO, {}};
        return;
      }
      timespec step{0, static_cast<long>(std::min(kReconnectStepNs, give_up - now))};  // < 1 s: fits a 32-bit long
      while (clock_nanosleep(CLOCK_MONOTONIC, 0, &step, &step) == EINTR) {
      }
    }
    id = c.next_id++;
    req = frame(FrameKind::kRequest, op, id, body);
    if (wait.interruptible && !outer) gate.block();
    size_t sent;
    int e = send_all(c.fd, req, sent);
    if (e == 0) break;
    gate.restore();
    c.reset();
    // The daemon closed the connection before reading anything (it restarted): the request is safe to resend.
    if (attempt == 0 && sent == 0 && (e == EPIPE || e == ECONNRESET)) continue;
    out = Reply{EIO, {}};
    return;
  }
  struct Busy {
    Conn& c;
    explicit Busy(Conn& cc) : c(cc) { c.busy = true; }
    ~Busy() { c.busy = false; }
  } busy(c);
  bool ok = await(c, op, id, wait, out, outer ? outer : gate.unblocked()) &&
            (out.status || !accept || accept(out.body));
  if (!ok) {
    c.reset();
    out = Reply{EIO, {}};
  }
}

}  // namespace

void call(uint16_t op, const Bytes& body, Reply& out, const Wait& wait, const Accept& accept) {
  call_impl(op, body, out, wait, accept);
}

}  // namespace dipc::preload
