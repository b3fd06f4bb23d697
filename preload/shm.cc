#include "preload/shm.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd_passing.h"
#include "common/frame.h"
#include "common/spare_cpu.h"
#include "ipc/protocol.h"
#include "preload/client.h"
#include "preload/shm_target.h"

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_MISSING_SHMEM
#define UFFD_FEATURE_MISSING_SHMEM (1 << 5)
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

namespace dipc::preload {

namespace {

constexpr int64_t kReplyNs = 30 * 1'000'000'000LL;  // dipcd answers within this, a home node's round trip included
constexpr uint64_t kUffdFeatures = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;

void* failed(int e) {
  errno = e;
  return MAP_FAILED;  // shmat's error value, (void*)-1
}

// One line on stderr, without stdio: it may run in a fork()ed child.
void warn(std::string_view msg) {
  int saved = errno;
  while (!msg.empty()) {
    ssize_t n = write(STDERR_FILENO, msg.data(), msg.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    msg.remove_prefix(static_cast<size_t>(n));
  }
  errno = saved;
}

// A connection to dipcd that carries attaches. One per process normally; a process that changed its effective
// uid/gid gets a new one (dipcd checks permissions with the SO_PEERCRED of the connection) and keeps the old one
// open while attaches made through it remain.
struct ShmConn {
  int fd = -1;
  // The note channel (kShmNotes): one end of a SOCK_SEQPACKET pair whose other end dipcd holds outside its loop and
  // reads when something depends on the notes (docs/ARCHITECTURE.md, "The note channel"). -1: notes go on fd.
  int notes = -1;
  uint64_t next_utok = 1;  // names the userfaultfds this connection handed dipcd for keeps
  uid_t euid = 0;
  gid_t egid = 0;
  uint64_t next_id = 1;
  FrameParser parser;
  std::deque<int> fds;  // descriptors received and not yet claimed by their kShmAt response
  size_t attaches = 0;
  // The view memfds of segments attached through this connection, kept after their attach so that the next attach
  // of the segment in the same mode is one round trip (kShmAttached, which checks the rights at the home, with the
  // inode so that dipcd refuses a view that is no longer the segment's: ESTALE). Dropped when an answered detach
  // learns that the segment is removed, or the oldest beyond kKeptViews; a removed segment's view holds no memory
  // either way (dipcd empties its view when it drops the segment: Segment::~Segment).
  struct View {
    int id = 0;
    bool rdonly = false;
    int fd = -1;
    uint64_t dev = 0, ino = 0;
    size_t mapped = 0;
    bool huge = false;  // SHM_HUGETLB: never kept (a kept hugetlbfs memfd would hold its huge pages reserved)
    // The userfaultfd of the last attach through this view, kept with it (dipcd holds the other copy under `utok`,
    // dormant while no attach uses it): the next attach registers its range on it and only sends a note
    // (docs/ARCHITECTURE.md, "One userfaultfd from one attach to the next"). -1: none.
    int uffd = -1;
    uint64_t utok = 0;
    bool uffd_live = false;  // an attach uses it now
  };
  std::deque<View> views;
  bool watched = false;  // in the watcher's poll set (it watches every open connection)

  ShmConn() = default;
  ShmConn(const ShmConn&) = delete;
  ShmConn& operator=(const ShmConn&) = delete;
  ~ShmConn() { drop(); }

  // Sends a one-way note on the channel; false when there is none or it is full (EAGAIN): the caller makes the
  // synchronous call instead.
  bool note(uint16_t op, const Bytes& body) {
    if (notes < 0) return false;
    Bytes b;
    append_frame(b, FrameHeader{FrameKind::kOneWay, op, next_id++, 0, 0}, body);
    for (;;) {
      ssize_t n = send(notes, b.data(), b.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      return n == static_cast<ssize_t>(b.size());
    }
  }

  // Closes the view's kept userfaultfd; with `tell`, dipcd forgets its dormant copy (a note, best effort: past its
  // bound dipcd drops the oldest dormant one all the same).
  void release_uffd(View& v, bool tell = true) {
    if (v.uffd < 0) return;
    close(v.uffd);
    if (tell && !v.uffd_live) (void)note(ipc::kShmForget, ipc::encode_body(ipc::ShmAttachReq{v.id, 0, 0, 0, 0, v.utok}));
    v.uffd = -1;
    v.utok = 0;
    v.uffd_live = false;
  }

  // Closes it without a word: dipcd then detaches everything attached through it.
  void drop() {
    if (fd >= 0) close(fd);
    fd = -1;
    if (notes >= 0) close(notes);
    notes = -1;
    for (int f : fds) close(f);
    fds.clear();
    drop_views(0, true);
    parser = FrameParser();
  }

  // Forgets the kept views of segment `id` (all with `all`).
  void drop_views(int id, bool all = false) {
    std::erase_if(views, [&](View& v) {
      if (!all && v.id != id) return false;
      close(v.fd);
      release_uffd(v, !all);
      return true;
    });
  }
};
constexpr size_t kKeptViews = 8;

struct Attach {
  uintptr_t addr = 0;
  size_t len = 0;
  int id = 0;
  int flg = 0;
  ShmConn* conn = nullptr;
  const dipc_shm_target* target = nullptr;  // mapped in another process (dipc-exec's program); nullptr: this one
  uint64_t utok = 0;  // registered on the kept userfaultfd of this token (ShmConn::View::utok)
};

struct State {
  std::mutex mu;  // serializes attaches, detaches and their round trips; held across fork() (the atfork handlers)
  std::vector<std::unique_ptr<ShmConn>> conns;
  std::vector<Attach> attaches;
  int fork_pipe[2] = {-1, -1};  // during fork(): the child says on it that its inherited attaches are counted
};

State& state() {
  static State* s = new State;  // never destroyed: a detach may still run from an exit handler
  return *s;
}

// ---- userfaultfd ----

std::atomic<bool> g_user_only{false};    // unprivileged: only user-mode faults can be handled
std::atomic<bool> g_no_features{false};  // the kernel refused kUffdFeatures

// userfaultfd(flags) of this process's memory, or of the target's.
int uffd_of(const dipc_shm_target* t, int flags) {
  return t ? t->userfaultfd(t->ctx, flags) : static_cast<int>(syscall(SYS_userfaultfd, flags));
}

int new_uffd(const dipc_shm_target* t) {
  if (!g_user_only.load()) {
    int fd = uffd_of(t, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0 || errno != EPERM) return fd;
    fd = uffd_of(t, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0) {
      errno = EPERM;
      return -1;
    }
    if (!g_user_only.exchange(true))
      warn("dipc: userfaultfd is limited to user-mode faults here: system calls that access a distributed shared "
           "memory segment (read(2) into it...) will fail; grant CAP_SYS_PTRACE or set "
           "vm.unprivileged_userfaultfd=1\n");
    return fd;
  }
  return uffd_of(t, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
}

// A userfaultfd past its UFFDIO_API handshake, or -1 with errno.
int make_uffd(const dipc_shm_target* t = nullptr) {
  for (;;) {
    int fd = new_uffd(t);
    if (fd < 0) return -1;
    bool full = !g_no_features.load();
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = full ? kUffdFeatures : 0;
    if (ioctl(fd, UFFDIO_API, &api) == 0) return fd;
    int e = errno;
    close(fd);  // a fresh descriptor for the retry: some kernels allow one UFFDIO_API per descriptor
    if (!full) {
      errno = e;
      return -1;
    }
    g_no_features.store(true);
  }
}

// Says once per process why shmat fails when this process cannot have a working userfaultfd: without one dipcd
// cannot resolve the segment's faults, so the attach fails rather than handing out memory nobody keeps coherent.
std::atomic<bool> g_told_no_uffd{false};
void tell_no_uffd(const char* step, int e) {
  if (g_told_no_uffd.exchange(true)) return;
  std::string msg = std::string("dipc: shmat of a distributed shared memory segment fails: ") + step + ": " +
                    strerrorname_np(e) + " (" + strerror(e) +
                    "); dipc resolves its page faults through userfaultfd with missing and write-protect faults "
                    "(Linux >= 5.7), which this process cannot use (an older kernel, qemu-user, or a seccomp "
                    "filter that refuses the userfaultfd system call)\n";
  warn(msg);
}

// Faults on a missing page go to dipcd; so do writes to a write-protected page, unless the attach is read-only.
bool register_range(int uffd, uintptr_t addr, size_t len, int flg) {
  uffdio_register r{};
  r.range.start = addr;
  r.range.len = len;
  r.mode = UFFDIO_REGISTER_MODE_MISSING | ((flg & SHM_RDONLY) ? 0 : UFFDIO_REGISTER_MODE_WP);
  while (ioctl(uffd, UFFDIO_REGISTER, &r) != 0)
    if (errno != EINTR) return false;
  return true;
}

// mmap/munmap in this process or in the target.
void* map_in(const dipc_shm_target* t, void* addr, size_t len, int prot, int flags, int fd) {
  return t ? t->map(t->ctx, addr, len, prot, flags, fd) : mmap(addr, len, prot, flags, fd, 0);
}
void unmap_in(const dipc_shm_target* t, void* p, size_t len) {
  if (t)
    (void)t->unmap(t->ctx, p, len);
  else
    munmap(p, len);
}

// ---- the connection ----

// A blocking connection to dipcd (client.cc's), with a send timeout.
int connect_daemon() {
  int fd = connect_socket();
  if (fd < 0) return -1;
  timeval tv{kReplyNs / 1'000'000'000, 0};
  if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

void open_note_channel(ShmConn& c);

// The caller's effective uid and gid, read once per call (each is a system call, ~0.5 us here: docs/PERFORMANCE.md,
// "Local-home speed, fifth pass").
struct Caller {
  uid_t uid = geteuid();
  gid_t gid = getegid();
};

// The live connection for the caller's credentials, made if needed; nullptr when no daemon answers.
ShmConn* conn_for_caller(State& s, const Caller& me = Caller{}) {
  const uid_t u = me.uid;
  const gid_t g = me.gid;
  for (auto& c : s.conns)
    if (c->fd >= 0 && c->euid == u && c->egid == g) return c.get();
  s.conns.reserve(s.conns.size() + 1);
  int saved = errno;
  int fd = connect_daemon();
  errno = saved;
  if (fd < 0) return nullptr;
  auto c = std::make_unique<ShmConn>();
  c->fd = fd;
  c->euid = u;
  c->egid = g;
  s.conns.push_back(std::move(c));
  ShmConn* n = s.conns.back().get();
  open_note_channel(*n);
  return n->fd >= 0 ? n : nullptr;
}

// Forgets connections nothing needs any more: closed ones and other credentials' ones, once without attaches.
void prune(State& s, const Caller& me = Caller{}) {
  const uid_t u = me.uid;
  const gid_t g = me.gid;
  std::erase_if(s.conns, [&](const std::unique_ptr<ShmConn>& c) {
    return c->attaches == 0 && (c->fd < 0 || c->euid != u || c->egid != g);
  });
}

// An attach whose coherence nobody keeps any more (its dipcd is gone) is replaced, at the same address, by a shared
// mapping of an empty memfd: every access raises SIGBUS, as on a removed device, instead of computing on a private
// copy. shmdt of it still works.
void poison(const Attach& at) {
  static int empty = memfd_create("dipc-lost", MFD_CLOEXEC);
  int prot = PROT_READ | ((at.flg & SHM_RDONLY) ? 0 : PROT_WRITE);
  void* p = empty < 0 ? MAP_FAILED
                      : mmap(reinterpret_cast<void*>(at.addr), at.len, prot, MAP_SHARED | MAP_FIXED, empty, 0);
  if (p == MAP_FAILED) mprotect(reinterpret_cast<void*>(at.addr), at.len, PROT_NONE);  // SIGSEGV at least
}

// The connection broke or spoke nonsense: nothing on it can be trusted any more. Its attaches raise SIGBUS from now
// on (README, "What differs"). Called with state().mu held.
void lost(ShmConn& c, const char* why) {
  if (c.attaches > 0) {
    std::vector<const dipc_shm_target*> targets;
    size_t mine = 0;
    for (const Attach& at : state().attaches) {
      if (at.conn != &c) continue;
      if (!at.target) {
        poison(at);
        ++mine;
      } else if (std::find(targets.begin(), targets.end(), at.target) == targets.end()) {
        targets.push_back(at.target);
      }
    }
    if (mine)
      warn(std::string("dipc: ") + why + ": " + std::to_string(mine) +
           " shared memory attaches of this process are no longer coherent; accesses to them raise SIGBUS\n");
    for (const dipc_shm_target* t : targets) {  // the target cannot be poisoned from here: its owner acts
      size_t n = static_cast<size_t>(std::count_if(state().attaches.begin(), state().attaches.end(),
                                                   [&](const Attach& at) { return at.conn == &c && at.target == t; }));
      t->lost(t->ctx, n);
    }
  }
  c.drop();
}

// ---- the watcher: a thread that notices when dipcd closes a connection with attaches (it died) ----

std::atomic<pid_t> g_watcher_pid{0};  // the process whose watcher runs (a fork()ed child starts its own)
std::atomic<int> g_wake_fd{-1};       // eventfd: the set of connections changed

void* watch(void*) {
  State& s = state();
  for (;;) {
    std::vector<pollfd> p;
    p.push_back(pollfd{g_wake_fd.load(), POLLIN, 0});
    {
      std::lock_guard lock(s.mu);
      for (auto& c : s.conns) {
        c->watched = c->fd >= 0;
        if (c->fd >= 0) p.push_back(pollfd{c->fd, POLLRDHUP, 0});
      }
    }
    if (poll(p.data(), p.size(), -1) < 0) continue;  // EINTR
    if (p[0].revents & POLLIN) {
      uint64_t v;
      (void)!read(p[0].fd, &v, sizeof v);
    }
    for (size_t i = 1; i < p.size(); ++i) {
      if (!(p[i].revents & (POLLHUP | POLLRDHUP | POLLERR))) continue;
      std::lock_guard lock(s.mu);
      for (auto& c : s.conns) {
        pollfd again{c->fd, POLLRDHUP, 0};  // the same connection still, and still closed by dipcd
        if (c->fd == p[i].fd && poll(&again, 1, 0) == 1 && (again.revents & (POLLHUP | POLLRDHUP | POLLERR)))
          lost(*c, "dipcd closed the connection (the daemon died?)");  // without attaches: only closed
      }
    }
  }
  return nullptr;
}

// Starts this process's watcher if needed, and makes it look at the connections again. Attaches through a
// connection the watcher already watches need no wake-up (it costs the watcher's wake-up on every attach).
void watch_conns(const ShmConn* c = nullptr) {
  if (c && c->watched && g_watcher_pid.load() == getpid()) return;
  pid_t me = getpid();
  if (g_watcher_pid.load() != me) {
    int old = g_wake_fd.exchange(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (old >= 0) close(old);  // a fork()ed child's copy of its parent's
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);  // the program's signals are not for this thread
    pthread_t t;
    if (g_wake_fd.load() >= 0 && pthread_create(&t, &attr, watch, nullptr) == 0) g_watcher_pid.store(me);
    pthread_sigmask(SIG_SETMASK, &saved, nullptr);
    pthread_attr_destroy(&attr);
  }
  uint64_t one = 1;
  if (int fd = g_wake_fd.load(); fd >= 0) (void)!write(fd, &one, sizeof one);
}

// Sends one request, `pass_fd` (if >= 0) riding on its first byte. Returns its id, or 0 (the stream is then broken).
// With `one_way`, a note nobody answers (kShmDt of a segment homed on this node).
// `pass_fd2`: a second descriptor after the first (the one-way attach's view).
uint64_t send_request(ShmConn& c, uint16_t op, const Bytes& body, int pass_fd, bool one_way = false,
                      int pass_fd2 = -1) {
  uint64_t id = c.next_id++;
  Bytes b;
  append_frame(b, FrameHeader{one_way ? FrameKind::kOneWay : FrameKind::kRequest, op, id, 0, 0}, body);
  size_t off = 0;
  const int fds[2] = {pass_fd, pass_fd2};
  const size_t nfds = pass_fd < 0 ? 0 : pass_fd2 < 0 ? 1 : 2;
  while (off < b.size()) {
    ssize_t n = send_with_fds(c.fd, b.data() + off, b.size() - off, fds, off == 0 ? nfds : 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return 0;  // includes EAGAIN: SO_SNDTIMEO ran out
    off += static_cast<size_t>(n);
  }
  return id;
}

enum class Got { kFrame, kTimeout, kBroken };

// Waits for the response to request `id`, skipping late answers to requests given up on earlier. A successful
// kShmAt response comes with the node's view memfd (sent with the frame's first byte, so it is here once the frame
// is): it goes to `passed_fd`.
Got await_response(ShmConn& c, uint16_t op, uint64_t id, FrameParser::Frame& f, int& passed_fd) {
  int64_t deadline = now_ns() + kReplyNs;
  uint8_t buf[4096];
  for (;;) {
    while (c.parser.next(f)) {
      const FrameHeader& h = f.header;
      if (h.kind != FrameKind::kResponse || h.id > id) return Got::kBroken;
      int fd = -1;
      if (h.op == ipc::kShmAt && h.status == 0) {
        if (c.fds.empty()) return Got::kBroken;
        fd = c.fds.front();
        c.fds.pop_front();
      }
      if (h.id < id) {
        if (fd >= 0) close(fd);
        continue;
      }
      if (h.op != op) {
        if (fd >= 0) close(fd);
        return Got::kBroken;
      }
      passed_fd = fd;
      return Got::kFrame;
    }
    if (c.parser.failed()) return Got::kBroken;
    int64_t left = deadline - now_ns();
    if (left <= 0) return Got::kTimeout;
    pollfd p{c.fd, POLLIN, 0};
    int r = 0;
    // dipcd answers within microseconds when the segment's home is this node: poll a while, yielding the CPU, rather
    // than sleep, when a CPU is spare (as client.cc does for the other calls).
    if (int64_t spin = answer_spin_ns(); spin > 0 && spare_cpu())
      for (int64_t until = std::min(now_ns() + spin, deadline); (r = poll(&p, 1, 0)) == 0 && now_ns() < until;)
        sched_yield();
    if (r == 0) r = poll(&p, 1, static_cast<int>(std::min<int64_t>((left + 999'999) / 1'000'000, INT_MAX)));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Got::kBroken;
    if (r == 0) continue;
    bool truncated = false;
    ssize_t n = recv_with_fds(c.fd, buf, sizeof buf, MSG_DONTWAIT, [&](int fd) { c.fds.push_back(fd); }, &truncated);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0 || truncated) return Got::kBroken;  // closed, or a descriptor was lost
    c.parser.feed(buf, static_cast<size_t>(n));
  }
}

struct Answer {
  int status = 0;
  Bytes body;
  int fd = -1;
};

// One request and its answer. Returns 0, or ETIMEDOUT (no answer in time: the connection and its attaches stay,
// the late answer is skipped), or EIO (the connection broke and is closed).
int roundtrip(ShmConn& c, uint16_t op, const Bytes& body, int pass_fd, Answer& out) {
  if (c.fd < 0) return EIO;
  uint64_t id = send_request(c, op, body, pass_fd);
  if (!id) {
    lost(c, "cannot send to dipcd");
    return EIO;
  }
  FrameParser::Frame f;
  Got g = await_response(c, op, id, f, out.fd);
  if (g == Got::kTimeout) return ETIMEDOUT;
  if (g == Got::kBroken) {
    lost(c, "connection to dipcd lost");
    return EIO;
  }
  out.status = f.header.status;
  out.body = std::move(f.payload);
  return 0;
}

Bytes attach_body(int id, uintptr_t addr, size_t len, int flg, uint64_t view_ino = 0, uint64_t utok = 0) {
  return ipc::encode_body(ipc::ShmAttachReq{id, addr, len, flg, view_ino, utok});
}

// DIPC_SHM_NOTES=0: see detached().
const bool g_shm_notes = [] {
  const char* e = getenv("DIPC_SHM_NOTES");
  return !(e && std::string_view(e) == "0");
}();

// DIPC_SHM_NOTE_CHANNEL=0 in the program's environment: the notes go on the connection dipcd polls, each waking it,
// and every attach gets a userfaultfd of its own (the fourth pass's path, for a before/after figure in one build).
const bool g_note_channel = [] {
  const char* e = getenv("DIPC_SHM_NOTE_CHANNEL");
  return !(e && std::string_view(e) == "0");
}();

// Hands dipcd the connection's note channel (one round trip, once per connection). Without one (switched off, or
// refused) the notes go on the connection itself.
void open_note_channel(ShmConn& c) {
  if (!g_note_channel || !g_shm_notes) return;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0) return;
  // Test-only: a small send buffer fills the channel after a few notes (the synchronous fallback, tested).
  if (const char* b = getenv("DIPC_SHM_NOTE_SNDBUF")) {
    int v = atoi(b);
    (void)setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
  }
  Answer ans;
  int e = roundtrip(c, ipc::kShmNotes, {}, sv[1], ans);
  close(sv[1]);
  if (e == 0 && ans.status == 0 && c.fd >= 0) {
    shutdown(sv[0], SHUT_RD);  // dipcd never writes on it
    c.notes = sv[0];
  } else {
    close(sv[0]);
  }
}

// ---- fork ----

// The child inherits the mappings but not their userfaultfd registrations (the kernel drops them without
// UFFD_FEATURE_EVENT_FORK), nor may it speak on its parent's connections. Before fork() returns in it, it hands dipcd
// a userfaultfd of its own for every inherited attach; dipcd counts them in shm_nattch, as Linux does. fork() returns
// in the parent only once the child is done (fork_pipe), as Linux counts the child's attaches before fork()
// returns: a parent that detaches at once must not destroy a removed segment its child still has attached.
// An attach that cannot be registered all the same is unmapped in the child (an access faults with SIGSEGV): the
// child never computes on a view that is not kept coherent.
void reattach_in_child(State& s) {
  for (auto& c : s.conns) c->drop();  // our copies only: the parent's connections and attaches are untouched
  s.conns.clear();
  std::erase_if(s.attaches, [](const Attach& at) { return at.target != nullptr; });  // another process's memory
  if (s.attaches.empty()) return;
  ShmConn* c = conn_for_caller(s);
  if (!c) {
    s.conns.push_back(std::make_unique<ShmConn>());  // a closed one, to own the attaches
    c = s.conns.back().get();
  }
  c->attaches = s.attaches.size();
  size_t bad = 0;
  std::vector<bool> failed_ones(s.attaches.size());
  for (size_t i = 0; i < s.attaches.size(); ++i) {
    Attach& at = s.attaches[i];
    at.conn = c;
    at.utok = 0;  // the parent's kept userfaultfd is the parent's (the child closed its copy with the views)
    int uffd = make_uffd();
    if (uffd < 0 || !register_range(uffd, at.addr, at.len, at.flg)) {
      if (uffd >= 0) close(uffd);
      ++bad;
      failed_ones[i] = true;
      continue;
    }
    Answer ans;
    if (roundtrip(*c, ipc::kShmAttached, attach_body(at.id, at.addr, at.len, at.flg), uffd, ans) != 0 || ans.status) {
      ++bad;
      failed_ones[i] = true;
    }
    close(uffd);
  }
  if (c->fd >= 0) watch_conns();
  if (!bad) return;
  std::vector<Attach> kept;
  for (size_t i = 0; i < s.attaches.size(); ++i) {
    const Attach& at = s.attaches[i];
    if (!failed_ones[i])
      kept.push_back(at);
    else  // the address range stays reserved, so nothing else lands where the program still points
      mmap(reinterpret_cast<void*>(at.addr), at.len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  }
  s.attaches = std::move(kept);
  c->attaches = s.attaches.size();
  warn("dipc: fork: " + std::to_string(bad) + " inherited shared memory attaches could not be registered with dipcd; "
       "the child has them no more (an access faults)\n");
}

void atfork_prepare() {
  State& s = state();
  s.mu.lock();
  if (!s.attaches.empty() && pipe2(s.fork_pipe, O_CLOEXEC) != 0) s.fork_pipe[0] = s.fork_pipe[1] = -1;
}

// Waits (bounded) until the child registered its inherited attaches, or died.
void atfork_parent() {
  State& s = state();
  if (s.fork_pipe[0] >= 0) {
    int saved = errno;
    close(s.fork_pipe[1]);
    int64_t deadline = now_ns() + 2 * kReplyNs;
    pollfd p{s.fork_pipe[0], POLLIN, 0};
    for (int64_t left; (left = deadline - now_ns()) > 0;) {
      int r = poll(&p, 1, static_cast<int>(left / 1'000'000 + 1));
      if (r > 0 || (r < 0 && errno != EINTR)) break;
    }
    close(s.fork_pipe[0]);
    s.fork_pipe[0] = s.fork_pipe[1] = -1;
    errno = saved;
  }
  s.mu.unlock();
}

void atfork_child() {
  State& s = state();
  int saved = errno;
  try {
    reattach_in_child(s);
  } catch (...) {
    warn("dipc: fork: out of memory while registering inherited shared memory attaches with dipcd\n");
  }
  if (s.fork_pipe[0] >= 0) {
    close(s.fork_pipe[0]);
    close(s.fork_pipe[1]);  // the parent sees the end of the pipe: done
    s.fork_pipe[0] = s.fork_pipe[1] = -1;
  }
  errno = saved;
  s.mu.unlock();
}

pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

// ---- shmat / shmdt ----

// Tells dipcd an attach is gone (unmapped). Cannot fail, as Linux's shmdt cannot once it found the attach: dipcd's
// answer only keeps shm_nattch exact. For a segment homed on this node it is a one-way note, answered by nobody:
// dipcd applies it before it answers anything that may depend on it (docs/ARCHITECTURE.md, "One-way shmdt"); the
// views kept of a segment that the note destroys hold no memory (dipcd empties the view) and are refused at the next
// attach (ESTALE).
// DIPC_SHM_NOTES=0 in the program's environment: shmdt waits for dipcd's answer on every node (the path before the
// notes, for a before/after figure in one build).
// (g_shm_notes: above, with the note channel.)

void detached(const Attach& at) noexcept {
  --at.conn->attaches;
  try {
    // The attach's userfaultfd stays for the next attach if its view is still kept (dipcd keeps its copy dormant).
    uint64_t keep = 0;
    if (at.utok)
      for (ShmConn::View& v : at.conn->views)
        if (v.utok == at.utok && v.uffd >= 0) {
          v.uffd_live = false;
          keep = at.utok;
        }
    Bytes body = attach_body(at.id, at.addr, 0, 0, 0, keep);
    const ipc::ControlPage* cp = g_shm_notes ? control() : nullptr;
    if (cp && at.conn->fd >= 0 && ipc::id_node(at.id) == cp->node()) {
      if (at.conn->notes >= 0) {
        if (at.conn->note(ipc::kShmDt, body)) return;
        // The channel is full: the synchronous call below (dipcd reads the channel before it answers).
      } else {
        if (!send_request(*at.conn, ipc::kShmDt, body, -1, true)) lost(*at.conn, "cannot send to dipcd");
        return;
      }
    }
    Answer ans;
    ipc::ShmDtResp r;
    if (roundtrip(*at.conn, ipc::kShmDt, body, -1, ans) != 0 || ans.status ||
        !ipc::decode_body(ans.body, r) || r.removed)
      at.conn->drop_views(at.id);
  } catch (...) {
  }
}

// Undoes a half-made attach on the way out.
struct Undo {
  const dipc_shm_target* t = nullptr;
  int fd = -1;
  void* map = nullptr;
  size_t len = 0;
  ~Undo() {
    int saved = errno;
    if (fd >= 0) close(fd);
    if (map) unmap_in(t, map, len);
    errno = saved;
  }
};

// Registers the mapping `p` of `view` with dipcd as an attach: a userfaultfd of its own, registered over it, goes to
// dipcd with kShmAttached, which checks the rights at the home and counts the attach (with `kept`, dipcd also checks
// that the view is still this node's view of the segment: ESTALE otherwise). Returns p, the attach recorded and the
// view kept for the next attach; or MAP_FAILED with errno, the mapping gone and the view's descriptor the caller's.
void* register_attach(const dipc_shm_target* t, ShmConn& c, int id, void* p, int flg, ShmConn::View view,
                      bool kept) {
  struct Unmap {
    const dipc_shm_target* t;
    void* p;
    size_t len;
    int uffd = -1;
    ~Unmap() {
      int saved = errno;
      if (p) unmap_in(t, p, len);
      if (uffd >= 0) close(uffd);
      errno = saved;
    }
  } undo{t, p, view.mapped};
  // From here on dipcd resolves the mapping's faults: nothing touches it before dipcd has the userfaultfd.
  int uffd = make_uffd(t);
  if (uffd < 0) {
    int err = errno;
    tell_no_uffd("userfaultfd", err);
    return failed(err);
  }
  undo.uffd = uffd;  // dipcd keeps its own copy
  auto pa = reinterpret_cast<uintptr_t>(p);
  if (!register_range(uffd, pa, view.mapped, flg)) {
    int err = errno;
    tell_no_uffd("UFFDIO_REGISTER", err);
    return failed(err);
  }
  // With a note channel, a view that will be kept keeps this userfaultfd too, under a token dipcd knows it by.
  const ipc::ControlPage* cp = control();
  uint64_t utok = 0;
  if (!t && !view.huge && view.uffd < 0 && c.notes >= 0 && cp && ipc::id_node(id) == cp->node())
    utok = c.next_utok++;
  Answer done;
  int e = roundtrip(c, ipc::kShmAttached, attach_body(id, pa, view.mapped, flg, kept ? view.ino : 0, utok), uffd,
                    done);
  if (e == ETIMEDOUT && !send_request(c, ipc::kShmDt, attach_body(id, pa, 0, 0), -1))
    lost(c, "cannot send to dipcd");  // dipcd may still count the attach when it answers: take it back
  if (e) return failed(EIO);
  if (done.status) return failed(done.status);
  undo.p = nullptr;  // the mapping stays
  if (utok) {
    view.uffd = uffd;
    view.utok = utok;
    view.uffd_live = true;
    undo.uffd = -1;
  }

  State& s = state();
  s.attaches.push_back(Attach{pa, view.mapped, id, flg, &c, t, utok});  // reserved by attach(): cannot fail
  ++c.attaches;
  watch_conns(&c);
  // Another process's attach: its next attach takes the full path (tools/exec.cc maps a view only once). An
  // SHM_HUGETLB view is not kept either: its memfd holds the node's reservation of the segment's huge pages until
  // the last descriptor closes, so a kept one would keep them from the pool after the segment is destroyed.
  if (t || view.huge) {
    close(view.fd);
    return p;
  }
  try {
    std::erase_if(c.views, [&](ShmConn::View& v) {
      if (v.id != view.id || v.rdonly != view.rdonly) return false;
      close(v.fd);
      c.release_uffd(v);
      return true;
    });
    c.views.push_back(view);
    if (c.views.size() > kKeptViews) {
      close(c.views.front().fd);
      c.release_uffd(c.views.front());
      c.views.pop_front();
    }
  } catch (...) {
    close(view.fd);  // not kept: the next attach takes the full path
    c.release_uffd(view);
  }
  return p;
}

// ---- the one-way attach (docs/ARCHITECTURE.md, "One-way shmat") ----

// DIPC_SHM_ATTACH_NOTE=0 in the program's environment: a re-attach through a kept view waits for dipcd's answer
// (kShmAttached), the path before the one-way attach, for a before/after figure in one build. "check": the note is
// always confirmed by a round trip (tests the confirmation); "nocheck", test-only: the table is not read again after
// the note (the handshake broken on purpose: a test shows that it is needed).
enum class NoteMode { kOff, kOn, kAlwaysCheck, kNoRecheck };
const NoteMode g_attach_note = [] {
  const char* e = getenv("DIPC_SHM_ATTACH_NOTE");
  std::string_view v = e ? e : "";
  if (v == "0") return NoteMode::kOff;
  if (v == "check") return NoteMode::kAlwaysCheck;
  if (v == "nocheck") return NoteMode::kNoRecheck;
  return NoteMode::kOn;
}();

// The keys of the ids shmget answered from the table lately: the attach finds the segment's row by key.
struct KeyCache {
  std::mutex mu;
  std::pair<int, int> ent[16] = {};  // (id, key); id 0: empty
  size_t next = 0;
  void put(int id, int key) {
    std::lock_guard lock(mu);
    for (auto& e : ent)
      if (e.first == id) {
        e.second = key;
        return;
      }
    ent[next++ % 16] = {id, key};
  }
  bool get(int id, int* key) {
    std::lock_guard lock(mu);
    for (auto& e : ent)
      if (e.first == id && id != 0) {
        *key = e.second;
        return true;
      }
    return false;
  }
};
KeyCache& key_cache() {
  static KeyCache* k = new KeyCache;  // never destroyed, like state()
  return *k;
}

// ipcperms() on a table row with the caller's effective uid, gid and groups: true when the mode bits of `flag` are
// allowed. A refusal (or groups that cannot be read) is dipcd's to decide: it knows CAP_IPC_OWNER.
bool row_allows(const ipc::ShmTableRow& r, int flag, const Caller& me = Caller{}) {
  ipc::Perm p;
  p.key = r.key;
  p.uid = r.uid;
  p.gid = r.gid;
  p.cuid = r.cuid;
  p.cgid = r.cgid;
  p.mode = static_cast<uint16_t>(r.mode);
  ipc::Creds c;
  c.uid = me.uid;
  c.gid = me.gid;
  if (c.uid != p.uid && c.uid != p.cuid && c.gid != p.gid && c.gid != p.cgid) {
    gid_t groups[256];
    int n = getgroups(256, groups);
    if (n < 0) return false;
    c.groups.assign(groups, groups + n);
  }
  return ipc::ipc_check(p, c, flag) == 0;
}

// The row of segment `id` (homed on this node) if the caller may attach it with `flg` (ipcperms(), as shmat), or
// nullopt: not known here, not decidable, or refused (dipcd decides those).
// *table gets the table read (for the re-read after the note).
std::optional<ipc::ShmTableRow> attach_row(int id, int flg, const ipc::ShmTable** table, const Caller& me) {
  int key = 0;
  const ipc::ControlPage* cp = control();
  // No liveness check: the attach's note (or its round trip) goes to the daemon next, on the attach connection, and
  // fails (EPIPE: the full path, EIO) if that daemon is gone; a restarted daemon never has the old connection.
  const ipc::ShmTable* t = shm_table(false);
  ipc::ShmTableRow r;
  if (!cp || !t || ipc::id_node(id) != cp->node() || !key_cache().get(id, &key) || t->find(key, &r) != 1 || r.id != id)
    return std::nullopt;
  *table = t;
  int acc = (flg & SHM_RDONLY) ? 0444 : 0666;
  if (flg & SHM_EXEC) acc |= 0111;
  if (!row_allows(r, acc, me)) return std::nullopt;
  return r;
}

// Maps a view the process holds at `a` (exactly there with `fixed`) with the protection shmflg asks; a read-only
// attach maps privately and MAP_NORESERVE (a hugetlbfs view then reserves no second set of huge pages). On failure
// the view goes back to the kept ones (it is fine; the address was not) and errno is set: MAP_FAILED.
void* map_view(ShmConn& c, uintptr_t a, bool fixed, int flg, const ShmConn::View& view) {
  int prot = PROT_READ | ((flg & SHM_RDONLY) ? 0 : PROT_WRITE) | ((flg & SHM_EXEC) ? PROT_EXEC : 0);
  int mflags = ((flg & SHM_RDONLY) ? MAP_PRIVATE | MAP_NORESERVE : MAP_SHARED) | (fixed ? MAP_FIXED_NOREPLACE : 0);
  void* p = mmap(reinterpret_cast<void*>(a), view.mapped, prot, mflags, view.fd, 0);
  if (p == MAP_FAILED || (fixed && reinterpret_cast<uintptr_t>(p) != a)) {
    int err = p == MAP_FAILED ? (errno == EEXIST ? EINVAL : errno) : EINVAL;
    if (p != MAP_FAILED) munmap(p, view.mapped);
    c.views.push_back(view);
    return failed(err);
  }
  return p;
}

// A re-attach through a view dipcd handed this process after a full check, of a segment homed here whose table row
// allows it: mmap, UFFDIO_REGISTER on a userfaultfd of its own, and a one-way note with both descriptors; then, after
// a full fence, the row read again. Unchanged and not shared: done, without waiting for dipcd (it applies the note
// before anything that depends on it). Else the note is confirmed by a round trip (kShmAttachCheck). nullopt: not
// applicable (the caller takes the round-trip path with the view, which is still its).
std::optional<void*> attach_noted(ShmConn& c, int id, uintptr_t a, bool fixed, int flg, const ShmConn::View& view,
                                  const Caller& me) {
  if (g_attach_note == NoteMode::kOff) return std::nullopt;
  const ipc::ShmTable* table = nullptr;
  std::optional<ipc::ShmTableRow> before = attach_row(id, flg, &table, me);
  if (!before || ((before->flags & ipc::kShmRowShared) && g_attach_note != NoteMode::kNoRecheck)) return std::nullopt;
  void* p = map_view(c, a, fixed, flg, view);
  if (p == MAP_FAILED) return p;
  auto pa = reinterpret_cast<uintptr_t>(p);
  int uffd = make_uffd();
  if (uffd < 0 || !register_range(uffd, pa, view.mapped, flg)) {
    int err = errno;
    tell_no_uffd(uffd < 0 ? "userfaultfd" : "UFFDIO_REGISTER", err);
    if (uffd >= 0) close(uffd);
    munmap(p, view.mapped);
    c.views.push_back(view);
    return failed(err);
  }
  uint64_t sent = send_request(c, ipc::kShmAttached, attach_body(id, pa, view.mapped, flg, view.ino), uffd, true, view.fd);
  close(uffd);  // dipcd has its own
  if (!sent) {
    munmap(p, view.mapped);
    c.views.push_back(view);
    lost(c, "cannot send to dipcd");
    return failed(EIO);
  }
  // Dekker-style with dipcd, which sets the row's "shared" word (or takes the key out), fences, then reads every
  // program's notes before it makes a block read-only here (or destroys the segment): either it saw this note, or
  // this read sees its word.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool sure = false;
  if (g_attach_note == NoteMode::kNoRecheck) {
    sure = true;
  } else if (g_attach_note == NoteMode::kOn) {
    // The same table (the daemon's memfd stays mapped; a dead daemon's table never changes, and its connection's
    // loss poisons the attach), the same row: the rights read before still hold.
    ipc::ShmTableRow after;
    sure = table->find(before->key, &after) == 1 && after.same(*before);
  }
  if (!sure) {
    Answer ok;
    int e = roundtrip(c, ipc::kShmAttachCheck, attach_body(id, pa, 0, flg), -1, ok);
    if (e == ETIMEDOUT && !send_request(c, ipc::kShmDt, attach_body(id, pa, 0, 0), -1))
      lost(c, "cannot send to dipcd");
    if (e || ok.status) {
      munmap(p, view.mapped);
      if (e) {
        close(view.fd);
        return failed(EIO);
      }
      if (ok.status == ESTALE) {
        close(view.fd);  // not the segment's view any more: the caller takes the full path
        return failed(ESTALE);
      }
      c.views.push_back(view);
      return failed(ok.status);
    }
  }
  State& s = state();
  s.attaches.push_back(Attach{pa, view.mapped, id, flg, &c, nullptr});  // reserved by attach(): cannot fail
  ++c.attaches;
  watch_conns(&c);
  c.views.push_back(view);
  return p;
}

// A re-attach through a kept view whose userfaultfd dipcd keeps, dormant, since the view's last detach
// (docs/ARCHITECTURE.md, "One userfaultfd from one attach to the next"): mmap, UFFDIO_REGISTER on that userfaultfd,
// and a note on the channel, which does not wake dipcd: a fault on the new range reaches dipcd through the
// userfaultfd it already watches, and dipcd reads the notes before it resolves a fault at an address it does not
// know. The row is read again after the note as in attach_noted() (the same handshake); a row that does not allow the
// note, or a full channel, makes it the synchronous call (kShmAttached without a descriptor: the rights checked at
// the home, the range write-protected as needed). nullopt: the userfaultfd could not be used (closed; `view` goes on
// to the other paths).
std::optional<void*> attach_reused(ShmConn& c, int id, uintptr_t a, bool fixed, int flg, ShmConn::View& view,
                                   const Caller& me) {
  const ipc::ShmTable* table = nullptr;
  ipc::ShmTableRow before{};
  bool may_note = false;
  if (g_attach_note != NoteMode::kOff)
    if (std::optional<ipc::ShmTableRow> r = attach_row(id, flg, &table, me)) {
      before = *r;
      may_note = !(before.flags & ipc::kShmRowShared) || g_attach_note == NoteMode::kNoRecheck;
    }
  void* p = map_view(c, a, fixed, flg, view);
  if (p == MAP_FAILED) return p;
  auto pa = reinterpret_cast<uintptr_t>(p);
  if (!register_range(view.uffd, pa, view.mapped, flg)) {
    munmap(p, view.mapped);
    c.release_uffd(view);
    return std::nullopt;
  }
  Bytes body = attach_body(id, pa, view.mapped, flg, view.ino, view.utok);
  bool noted = may_note && c.note(ipc::kShmAttached, body);
  bool sure = false;
  if (noted) {
    std::atomic_thread_fence(std::memory_order_seq_cst);  // the handshake of attach_noted()
    if (g_attach_note == NoteMode::kNoRecheck) {
      sure = true;
    } else if (g_attach_note == NoteMode::kOn) {
      ipc::ShmTableRow after;
      sure = table->find(before.key, &after) == 1 && after.same(before);
    }
  }
  int st = 0;
  if (!sure) {
    Answer ok;
    int e = noted ? roundtrip(c, ipc::kShmAttachCheck, attach_body(id, pa, 0, flg), -1, ok)
                  : roundtrip(c, ipc::kShmAttached, body, -1, ok);
    if (e) {
      if (e == ETIMEDOUT && !send_request(c, ipc::kShmDt, attach_body(id, pa, 0, 0), -1))
        lost(c, "cannot send to dipcd");
      munmap(p, view.mapped);
      close(view.fd);
      c.release_uffd(view);
      return failed(EIO);
    }
    st = ok.status;
  }
  if (st) {
    munmap(p, view.mapped);
    if (st == ESTALE) {  // not the segment's view, or dipcd has no such userfaultfd: the full path
      close(view.fd);
      c.release_uffd(view);
      return failed(ESTALE);
    }
    c.views.push_back(view);  // dipcd keeps the userfaultfd dormant again
    return failed(st);
  }
  view.uffd_live = true;
  State& s = state();
  s.attaches.push_back(Attach{pa, view.mapped, id, flg, &c, nullptr, view.utok});  // reserved by attach()
  ++c.attaches;
  watch_conns(&c);
  c.views.push_back(view);
  return p;
}

// Maps a view kept from an earlier attach and registers the attach; ESTALE (nothing mapped, the view dropped) when
// dipcd says that view is not the segment's any more.
void* attach_mapped(ShmConn& c, int id, uintptr_t a, bool fixed, int flg, ShmConn::View view) {
  void* p = map_view(c, a, fixed, flg, view);
  if (p == MAP_FAILED) return p;
  void* r = register_attach(nullptr, c, id, p, flg, view, true);
  if (r == MAP_FAILED) {
    int err = errno;
    close(view.fd);
    c.release_uffd(view);
    errno = err;
  }
  return r;
}

std::optional<void*> attach(const dipc_shm_target* t, int id, const void* addr, int flg) {
  // Linux's checks before it looks the segment up (do_shmat).
  auto a = reinterpret_cast<uintptr_t>(addr);
  const auto lba = static_cast<uintptr_t>(SHMLBA);
  if (a & (lba - 1)) {
    if (!(flg & SHM_RND)) return failed(EINVAL);
    a &= ~(lba - 1);
    if (a == 0 && (flg & SHM_REMAP)) return failed(EINVAL);
  } else if (!addr && (flg & SHM_REMAP)) {
    return failed(EINVAL);
  }
  bool fixed = addr != nullptr;

  pthread_once(&g_atfork_once, [] { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
  State& s = state();
  std::lock_guard lock(s.mu);
  const Caller me;
  prune(s, me);
  s.attaches.reserve(s.attaches.size() + 1);  // recording the attach must not fail once dipcd counts it
  ShmConn* c = conn_for_caller(s, me);
  if (!c) return failed(EIO);  // a distributed id with no daemon: never the kernel (README, "What differs")

  // A view kept from an earlier attach of the segment in this mode saves the kShmAt round trip; SHM_REMAP, which
  // may replace other attaches on its way, always takes the full path.
  const bool rdonly = (flg & SHM_RDONLY) != 0;
  ShmConn::View kept;
  if (!(flg & SHM_REMAP) && !t)
    for (auto it = c->views.begin(); it != c->views.end(); ++it) {
      struct stat st {};
      if (it->id != id || it->rdonly != rdonly) continue;
      if (fstat(it->fd, &st) == 0 && st.st_dev == it->dev && st.st_ino == it->ino) {
        kept = *it;
        c->views.erase(it);  // back at the end (most recent) once the attach worked
      } else {
        // The program closed or reused the descriptor: not ours any more, nor (likely) the userfaultfd kept with
        // it, which is left alone; dipcd forgets its copy.
        if (it->uffd >= 0 && !it->uffd_live) (void)c->note(ipc::kShmForget, attach_body(id, 0, 0, 0, 0, it->utok));
        c->views.erase(it);
      }
      break;
    }
  if (kept.fd >= 0 && kept.uffd >= 0 && !kept.uffd_live && c->notes >= 0) {
    if (std::optional<void*> r = attach_reused(*c, id, a, fixed, flg, kept, me)) {
      if (*r != MAP_FAILED || errno != ESTALE) return *r;
      kept = ShmConn::View{};  // closed: the full path
    }
  }
  if (kept.fd >= 0 && c->notes < 0) {  // with a channel, a note must go on it (the drains read only that)
    if (std::optional<void*> r = attach_noted(*c, id, a, fixed, flg, kept, me)) {
      if (*r != MAP_FAILED || errno != ESTALE) return *r;
      kept = ShmConn::View{};  // closed: the full path
    }
  }
  if (kept.fd >= 0) {
    void* r = attach_mapped(*c, id, a, fixed, flg, kept);
    if (r != MAP_FAILED || errno != ESTALE) return r;
  }

  Answer at;
  Undo undo;
  undo.t = t;
  int e = roundtrip(*c, ipc::kShmAt, ipc::encode_body(ipc::ShmAtReq{id, flg}), -1, at);
  undo.fd = at.fd;
  if (e) return failed(EIO);
  if (at.status) {
    if (at.status == EINVAL && at.body.size() == 1 && at.body[0] == ipc::kUnknownIdMarker) {
      return std::nullopt;  // not an id dipcd knows: the kernel answers
    }
    return failed(at.status);
  }
  ipc::ShmAtResp r;
  const auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (!ipc::decode_body(at.body, r) || at.fd < 0 || r.mapped == 0 || r.mapped % page != 0 || r.mapped < r.size ||
      r.mapped > SIZE_MAX / 2)
    return failed(EIO);
  const auto len = static_cast<size_t>(r.mapped);
  struct stat vst {};
  if (fstat(at.fd, &vst) != 0) return failed(EIO);

  int prot = PROT_READ | ((flg & SHM_RDONLY) ? 0 : PROT_WRITE) | ((flg & SHM_EXEC) ? PROT_EXEC : 0);
  // A read-only attach gets an O_RDONLY memfd, and the kernel registers a MAP_SHARED mapping with a userfaultfd
  // only if it could be made writable (VM_MAYWRITE): it is mapped MAP_PRIVATE. Reads still see the view's pages
  // (dipcd fills them and punches them out); only a write after mprotect() would make a private copy.
  // MAP_NORESERVE: a private mapping of a hugetlbfs view would otherwise reserve a second set of huge pages for
  // copies on write that a read-only attach never makes.
  int mflags = ((flg & SHM_RDONLY) ? MAP_PRIVATE | MAP_NORESERVE : MAP_SHARED) |
               (fixed ? ((flg & SHM_REMAP) ? MAP_FIXED : MAP_FIXED_NOREPLACE) : 0);
  void* p = map_in(t, reinterpret_cast<void*>(a), len, prot, mflags, at.fd);
  if (p == MAP_FAILED) return failed(errno == EEXIST ? EINVAL : errno);  // Linux: EINVAL on an overlap
  undo.map = p;
  undo.len = len;
  if (fixed && reinterpret_cast<uintptr_t>(p) != a) return failed(EINVAL);  // a kernel that took it as a hint
  // The attaches the new mapping replaced whole are gone, as Linux's shm_close() counts them out; dipcd hears of it
  // only once the new attach is counted (or failed), as Linux raises shm_nattch before it maps: replacing the last
  // attach of a removed segment with a new attach of the same segment must not destroy it.
  struct Replaced {
    std::vector<Attach> list;
    ~Replaced() {
      for (const Attach& x : list) detached(x);
    }
  } replaced;
  if (flg & SHM_REMAP) {
    auto gone = std::stable_partition(s.attaches.begin(), s.attaches.end(), [&](const Attach& x) {
      return x.target != t || x.addr < a || x.addr + x.len > a + len;
    });
    replaced.list.assign(gone, s.attaches.end());
    s.attaches.erase(gone, s.attaches.end());
  }
  undo.fd = -1;  // kept below once the attach worked; closed with it otherwise
  ShmConn::View view{id,  rdonly,          at.fd, static_cast<uint64_t>(vst.st_dev), static_cast<uint64_t>(vst.st_ino),
                     len, r.huge_page != 0};
  undo.map = nullptr;  // register_attach() owns the mapping now
  void* done = register_attach(t, *c, id, p, flg, view, false);
  if (done == MAP_FAILED) {
    int err = errno;
    close(view.fd);
    errno = err;
  }
  return done;
}

std::optional<int> detach(const dipc_shm_target* t, const void* addr) {
  State& s = state();
  std::lock_guard lock(s.mu);
  auto a = reinterpret_cast<uintptr_t>(addr);
  auto it = std::find_if(s.attaches.begin(), s.attaches.end(),
                         [&](const Attach& at) { return at.addr == a && at.target == t; });
  if (it == s.attaches.end()) return std::nullopt;
  Attach at = *it;
  s.attaches.erase(it);
  unmap_in(t, reinterpret_cast<void*>(at.addr), at.len);
  detached(at);
  // A lone open connection is kept (without the credentials' system calls): if the caller's changed, the next
  // attach prunes it.
  if (s.conns.size() > 1 || (!s.conns.empty() && s.conns.front()->fd < 0)) prune(s);
  return 0;
}

}  // namespace

std::optional<int> shm_get_local(int key, uint64_t size, int flg) noexcept {
  // DIPC_SHM_TABLE=0 in the program's environment: every shmget asks dipcd (for a before/after figure).
  static const bool use = [] {
    const char* e = getenv("DIPC_SHM_TABLE");
    return !(e && std::string_view(e) == "0");
  }();
  if (!use) return std::nullopt;
  try {
    const ipc::ShmTable* t = shm_table();
    ipc::ShmTableRow r;
    if (!t || key == IPC_PRIVATE || t->find(key, &r) != 1) return std::nullopt;
    // ipcget_public(): EEXIST, then shm_more_checks() (EINVAL), then ipcperms() (EACCES).
    if ((flg & IPC_CREAT) && (flg & IPC_EXCL)) return -EEXIST;
    if (size > r.size) return -EINVAL;
    if (!row_allows(r, flg)) return std::nullopt;
    key_cache().put(r.id, key);  // for the one-way attach of this id
    return r.id;
  } catch (...) {
    return std::nullopt;
  }
}

std::optional<void*> shm_attach(int id, const void* addr, int flg) noexcept {
  try {
    return attach(nullptr, id, addr, flg);
  } catch (const std::bad_alloc&) {
    return failed(ENOMEM);
  } catch (...) {
    return failed(EIO);
  }
}

std::optional<int> shm_detach(const void* addr) noexcept {
  try {
    return detach(nullptr, addr);
  } catch (const std::bad_alloc&) {
    errno = ENOMEM;
    return -1;
  } catch (...) {
    errno = EIO;
    return -1;
  }
}

bool shm_contains(const void* p, size_t n) noexcept {
  auto a = reinterpret_cast<uintptr_t>(p);
  State& s = state();
  std::lock_guard lock(s.mu);
  for (const Attach& at : s.attaches)
    if (!at.target && a >= at.addr && a - at.addr <= at.len && n <= at.len - (a - at.addr)) return true;
  return false;
}

}  // namespace dipc::preload

extern "C" __attribute__((visibility("default"))) void* dipc_shm_attach_for(const dipc_shm_target* t, int id,
                                                                            const void* addr, int flg) {
  try {
    if (auto r = dipc::preload::attach(t, id, addr, flg)) return *r;
    errno = ENOTSUP;
  } catch (const std::bad_alloc&) {
    errno = ENOMEM;
  } catch (...) {
    errno = EIO;
  }
  return MAP_FAILED;
}

extern "C" __attribute__((visibility("default"))) int dipc_shm_detach_for(const dipc_shm_target* t, const void* addr) {
  try {
    if (auto r = dipc::preload::detach(t, addr)) return *r;
    errno = ENOTSUP;
  } catch (const std::bad_alloc&) {
    errno = ENOMEM;
  } catch (...) {
    errno = EIO;
  }
  return -1;
}
