#include "daemon/client_server.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string_view>
#include <new>
#include <sstream>

#include "common/log.h"
#include "common/fd_passing.h"
#include "common/unix_socket.h"
#include "dipc/dipc.h"
#include "ipc/protocol.h"

namespace dipc {

namespace {
constexpr size_t kMaxClientOut = 64u << 20;  // a client that does not read its answers is dropped

int pidfd_open_(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }
constexpr int kSoPeerPidfd = 77;

bool is_userfaultfd(int fd) {
  char link[64];
  ssize_t n = readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), link, sizeof link - 1);
  return n > 0 && std::string_view(link, static_cast<size_t>(n)) == "anon_inode:[userfaultfd]";
}  // SO_PEERPIDFD (Linux 6.5); Debian 12's headers predate it
}  // namespace

ClientServer::ClientServer(EventLoop& loop, ipc::Service& service, const Config& cfg)
    : loop_(loop), service_(service), cfg_(cfg) {
  reserve_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  notes_epfd_ = epoll_create1(EPOLL_CLOEXEC);
  control_fd_ = memfd_create("dipc-control", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  // The control page, then the table of segments homed here (ipc/shm_table.h), whole pages.
  const auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  control_len_ = (ipc::kShmTableOffset + sizeof(ipc::ShmTable) + page - 1) / page * page;
  if (control_fd_ >= 0 && ftruncate(control_fd_, static_cast<off_t>(control_len_)) == 0) {
    void* p = mmap(nullptr, control_len_, PROT_READ | PROT_WRITE, MAP_SHARED, control_fd_, 0);
    if (p != MAP_FAILED) {
      control_ = new (p) ipc::ControlPage();
      control_->init(cfg.self);
      control_->set_distribute(static_cast<uint32_t>(cfg.distribute));
      control_->set_flags(cfg.distribute_private ? 0 : ipc::kControlKeepPrivate);
      uint32_t n = 0;
      for (const auto& r : cfg.ranges) {
        if (n == ipc::kControlMaxRanges) break;
        control_->set_range(n, r.lo, r.hi);
        ++n;
      }
      control_->set_nranges(n);
      shm_table_ = new (static_cast<char*>(p) + ipc::kShmTableOffset) ipc::ShmTable();
      shm_table_->init();
      shm_table_->publish(service_.shm_table_rows());
      control_->set_shm_table_off(ipc::kShmTableOffset);
      service_.set_shm_table_hook([this] { shm_table_->publish(service_.shm_table_rows()); });
      service_.set_notes_hook([this] { drain_notes(true); });
      control_->set_enabled(true);
      // Clients may map it only read-only: nobody but the daemon can switch dipc on or off.
      fcntl(control_fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL);
    }
  }
  // A call now waits, registered at its home: the program may sleep (kBlocked, ipc/protocol.h).
  service_.set_blocked_hook([this](uint64_t token) {
    auto it = tokens_.find(token);
    if (it == tokens_.end()) return;
    auto [cid, fid] = it->second;
    send_frame(cid, FrameHeader{FrameKind::kOneWay, ipc::kBlocked, fid, 0, 0}, {});
  });
}

ClientServer::~ClientServer() {
  service_.set_shm_table_hook(nullptr);
  service_.set_notes_hook(nullptr);
  for (auto& [id, c] : conns_) {
    close(c->fd);
    if (c->notes_fd >= 0) close(c->notes_fd);
  }
  if (notes_timer_) loop_.cancel_timer(notes_timer_);
  if (notes_epfd_ >= 0) close(notes_epfd_);
  for (auto& [pid, fd] : pidfds_) close(fd);
  if (listen_fd_ >= 0) close(listen_fd_);
  if (reserve_fd_ >= 0) close(reserve_fd_);
  if (!name_.empty() && name_[0] != '@') unlink(name_.c_str());
  if (control_) munmap(control_, control_len_);
  if (control_fd_ >= 0) close(control_fd_);
}

Status ClientServer::listen(const std::string& name) {
  if (!control_) return Status::err(ENOMEM);
  auto fd = unix_listen(name);
  if (!fd) return fd.status();
  listen_fd_ = *fd;
  name_ = name;
  return loop_.add(listen_fd_, EPOLLIN, [this](uint32_t) { on_accept(); });
}

void ClientServer::set_enabled(bool on) { control_->set_enabled(on); }
bool ClientServer::enabled() const { return control_->enabled(); }

// Who the client is, from what the kernel pinned when it connected: SO_PEERCRED (pid, euid, egid) and
// SO_PEERGROUPS. Nothing is taken later from /proc/<pid> for anyone but root: by then the process may have exec'd a
// setuid binary, or its pid may name another process. So capabilities are honoured only for a process that
// connected as uid 0 (README, "What differs"): its effective set is read at accept, and kept only if its pidfd
// shows the same process still alive after the read; a process that connected as anyone else has none, whatever it
// becomes afterwards. *pidfd gets a pidfd of the connecting process (SO_PEERPIDFD), or -1.
bool ClientServer::read_creds(int fd, ipc::Creds& c, int* pidfd) {
  ucred uc{};
  socklen_t len = sizeof uc;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0) return false;
  c.pid = uc.pid;
  c.uid = uc.uid;
  c.gid = uc.gid;
  c.node = cfg_.self;
  std::vector<gid_t> groups(64);
  for (;;) {
    auto glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      groups.resize(glen / sizeof(gid_t));
      break;
    }
    if (errno != ERANGE || glen / sizeof(gid_t) <= groups.size() || glen / sizeof(gid_t) > 65536) return false;
    groups.resize(glen / sizeof(gid_t));
  }
  c.groups.assign(groups.begin(), groups.end());
  *pidfd = -1;
  socklen_t plen = sizeof *pidfd;
  if (getsockopt(fd, SOL_SOCKET, kSoPeerPidfd, pidfd, &plen) != 0) *pidfd = -1;  // before Linux 6.5
  if (uc.uid != 0) return true;
  uint64_t cap_eff = 0;
  std::ifstream f("/proc/" + std::to_string(uc.pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("CapEff:", 0) == 0) cap_eff = std::strtoull(line.c_str() + 7, nullptr, 16);
  if (*pidfd >= 0 && syscall(SYS_pidfd_send_signal, *pidfd, 0, nullptr, 0) != 0) cap_eff = 0;  // pid reused
  c.cap_ipc_owner = cap_eff & (1ull << 15);
  c.cap_sys_admin = cap_eff & (1ull << 21);
  c.cap_sys_resource = cap_eff & (1ull << 24);
  c.cap_ipc_lock = cap_eff & (1ull << 14);
  return true;
}

bool ClientServer::bounded(uint32_t uid) const { return uid != 0 && uid != geteuid(); }

bool ClientServer::account(Conn& c) {
  size_t now = c.parser.buffered() + c.out.size();
  UserUse& u = users_[c.creds.uid];
  u.bytes = u.bytes - c.held + now;
  c.held = now;
  if (!bounded(c.creds.uid) || u.bytes <= kMaxBytesPerUser) return true;
  close_conn(c.id, "its user makes the daemon hold more than the per-user bound of partial frames and unread answers");
  return false;
}

void ClientServer::shed_one() {
  for (;;) {
    if (reserve_fd_ >= 0) close(reserve_fd_);
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) close(fd);
    reserve_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) break;
    int64_t now = EventLoop::now_us();
    if (now - last_shed_log_ > 1'000'000) {
      last_shed_log_ = now;
      DIPC_LOG_WARN("out of file descriptors: new local connections are closed at once (their calls fail with EIO)");
    }
  }
}

void ClientServer::on_accept() {
  for (;;) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) shed_one();
      return;
    }
    auto c = std::make_unique<Conn>();
    c->id = next_conn_++;
    c->fd = fd;
    int pidfd = -1;
    if (!read_creds(fd, c->creds, &pidfd)) {
      close(fd);
      continue;
    }
    UserUse& use = users_[c->creds.uid];
    if (bounded(c->creds.uid) && use.conns >= kMaxConnsPerUser) {
      int64_t now = EventLoop::now_us();
      if (now - last_shed_log_ > 1'000'000) {
        last_shed_log_ = now;
        DIPC_LOG_WARN("uid {} has {} connections, the per-user bound: new ones are closed", c->creds.uid, use.conns);
      }
      close(fd);
      if (pidfd >= 0) close(pidfd);
      continue;
    }
    ++use.conns;
    uint64_t id = c->id;
    watch_pid(c->creds.pid, pidfd);
    fd_conn_[fd] = id;
    conns_[id] = std::move(c);
    Status added = loop_.add(fd, EPOLLIN | EPOLLRDHUP, [this, id](uint32_t ev) {
      auto it = conns_.find(id);
      if (it != conns_.end()) on_readable(*it->second, ev);
    });
    if (!added) close_conn(id, "cannot watch the connection");
  }
}

// `pfd`: the connection's SO_PEERPIDFD (ownership passes here), or -1: a pidfd is opened by pid (racy against pid
// reuse, on kernels before 6.5 only).
void ClientServer::watch_pid(int32_t pid, int pfd) {
  if (pidfds_.count(pid)) {
    if (pfd >= 0) close(pfd);
    return;
  }
  if (pfd < 0) pfd = pidfd_open_(pid);
  if (pfd < 0) return;
  pidfds_[pid] = pfd;
  Status added = loop_.add(pfd, EPOLLIN, [this, pid, pfd](uint32_t) {
    // The process is gone (exit, exec'd away never, or kill -9): withdraw its calls, then undo its semaphores.
    std::vector<uint64_t> ids;
    for (auto& [cid, c] : conns_)
      if (c->creds.pid == pid) ids.push_back(cid);
    for (uint64_t cid : ids) close_conn(cid, nullptr);
    loop_.remove(pfd);
    close(pfd);
    pidfds_.erase(pid);
    service_.process_exited(pid);
  });
  if (!added) {
    close(pfd);
    pidfds_.erase(pid);
  }
}

void ClientServer::on_readable(Conn& c, uint32_t events) {
  uint64_t id = c.id;
  c.busy = true;
  read_frames(c, events);
  if (auto it = conns_.find(id); it != conns_.end()) it->second->busy = false;
}

void ClientServer::drain_notes(bool nested) {
  if ((draining_ && !nested) || (shm_conns_.empty() && note_channels_ == 0)) return;
  bool was = draining_;
  // The other half of the one-way attach's handshake (docs/ARCHITECTURE.md, "One-way shmat"): whatever this thread
  // stored before (a table word) is visible before the sockets are read.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  draining_ = true;
  if (note_channels_ > 0) {
    // One system call when no note waits. Level-triggered: a channel left with notes (past kMaxNotesPerDrain)
    // would be reported again; each is read once per drain, so a flooding program cannot hold the drain.
    epoll_event ev[64];
    std::vector<uint64_t> seen;
    for (int round = 0; round < 64; ++round) {
      int n = epoll_wait(notes_epfd_, ev, 64, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      bool fresh = false;
      for (int i = 0; i < n; ++i) {
        uint64_t id = ev[i].data.u64;
        if (std::find(seen.begin(), seen.end(), id) != seen.end()) continue;
        seen.push_back(id);
        fresh = true;
        auto it = conns_.find(id);
        if (it != conns_.end()) read_notes(*it->second);
      }
      if (n < 64 || !fresh) break;
    }
  }
  if (!shm_conns_.empty()) {
    std::vector<uint64_t> ids(shm_conns_.begin(), shm_conns_.end());
    for (uint64_t id : ids) {
      auto it = conns_.find(id);
      if (it != conns_.end() && !it->second->busy) on_readable(*it->second, EPOLLIN);  // one recvmsg when empty
    }
  }
  draining_ = was;
}

void ClientServer::read_notes(Conn& c) {
  if (c.notes_fd < 0 || c.notes_busy) return;
  uint64_t id = c.id;
  c.notes_busy = true;
  uint8_t buf[512];  // a note is one packet of a few dozen bytes
  for (int i = 0; i < kMaxNotesPerDrain; ++i) {
    // recv, not recvmsg with a control buffer: descriptors sent on the channel are closed by the kernel.
    ssize_t n = recv(c.notes_fd, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || (n < 0 && errno != EAGAIN)) {  // the program closed its end: the connection's close does the rest
      epoll_ctl(notes_epfd_, EPOLL_CTL_DEL, c.notes_fd, nullptr);
      close(c.notes_fd);
      c.notes_fd = -1;
      --note_channels_;
      break;
    }
    if (n < 0) break;
    FrameParser p;
    FrameParser::Frame f;
    if (static_cast<size_t>(n) > sizeof buf || (p.feed(buf, static_cast<size_t>(n)), !p.next(f)) || p.buffered()) {
      c.closing = true;  // no more of its notes
      return close_conn(id, "a malformed note");
    }
    ++notes_read_;
    on_note(c, f);
    if (!conns_.count(id)) return;
  }
  c.notes_busy = false;
}

void ClientServer::on_note(Conn& c, FrameParser::Frame& f) {
  const FrameHeader& h = f.header;
  if (h.kind != FrameKind::kOneWay) return close_conn(c.id, "a note that is not one-way");
  switch (h.op) {
    case ipc::kShmDt:
      return service_.client_shmdt(c.creds, c.id, f.payload, [](int, Bytes) {});
    case ipc::kShmAttached:
      if (int e = service_.client_shm_revive(c.creds, c.id, f.payload, false))
        DIPC_LOG_DEBUG("client pid {}: a one-way attach on a kept userfaultfd: {}; not counted", c.creds.pid,
                       strerror(e));
      return;
    case ipc::kShmForget:
      return service_.client_shm_forget(c.id, f.payload);
    default:
      return close_conn(c.id, "an unknown note");
  }
}

int ClientServer::take_note_channel(Conn& c, int fd) {
  int domain = 0, type = 0;
  socklen_t len = sizeof domain;
  ucred uc{};
  socklen_t ulen = sizeof uc;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX ||
      (len = sizeof type, getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len)) != 0 || type != SOCK_SEQPACKET ||
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ulen) != 0 || uc.pid != c.creds.pid ||
      uc.uid != c.creds.uid) {
    close(fd);
    return EINVAL;  // the channel's other end must be the process this connection is (SO_PEERCRED of both)
  }
  if (c.notes_fd >= 0) {
    close(fd);
    return EBUSY;
  }
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.u64 = c.id;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0 || epoll_ctl(notes_epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    close(fd);
    return ENOMEM;
  }
  shutdown(fd, SHUT_WR);  // dipcd never writes on it
  c.notes_fd = fd;
  ++note_channels_;
  shm_conns_.erase(c.id);  // its notes come on the channel
  arm_notes_timer();
  return 0;
}

// What no request observes (a segment destroyed by the last detach after IPC_RMID: memory the node holds) waits
// for the next drain at most kNotesTimerMs while notes come, and up to kNotesIdleMs once none came for a while (the
// period doubles with every timer drain that found none: an idle daemon wakes about once a second for it, as for
// its links' heartbeats).
void ClientServer::arm_notes_timer() {
  if (notes_timer_ || note_channels_ == 0) return;
  notes_timer_ = loop_.add_timer(notes_period_ms_, [this] {
    notes_timer_ = 0;
    uint64_t before = notes_read_;
    drain_notes();
    bool quiet = notes_read_ == before && notes_read_ == notes_read_at_timer_;
    notes_read_at_timer_ = notes_read_;
    notes_period_ms_ = quiet ? std::min(notes_period_ms_ * 2, kNotesIdleMs) : kNotesTimerMs;
    arm_notes_timer();
  });
}

void ClientServer::read_frames(Conn& c, uint32_t events) {
  uint64_t id = c.id;
  if (events & EPOLLOUT) flush(c);
  if (!conns_.count(id)) return;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    uint8_t buf[65536];
    for (;;) {
      // A program hands its userfaultfd over with kShmAttached (SCM_RIGHTS).
      ssize_t n = recv_with_fds(c.fd, buf, sizeof buf, 0, [&](int fd) { c.fds.push_back(fd); });
      if (c.fds.size() > 8) return close_conn(id, "too many descriptors passed");
      if (n > 0) {
        c.parser.feed(buf, static_cast<size_t>(n));
        FrameParser::Frame f;
        while (conns_.count(id) && c.parser.next(f)) on_frame(c, f);
        if (!conns_.count(id)) return;
        if (c.parser.failed()) return close_conn(id, c.parser.error().c_str());
        if (!account(c)) return;
        // A short read drained the socket: no second recvmsg just to see EAGAIN (one system call per request
        // less). Anything that arrives later, or queued behind a descriptor, makes the socket readable again.
        if (static_cast<size_t>(n) < sizeof buf) return;
        continue;
      }
      if (n == 0) return close_conn(id, nullptr);
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      return close_conn(id, nullptr);
    }
  }
}

void ClientServer::on_frame(Conn& c, FrameParser::Frame& f) {
  uint64_t conn_id = c.id;
  const FrameHeader& h = f.header;
  if (h.kind == FrameKind::kOneWay && h.op == ipc::kCancel) {
    auto it = c.inflight.find(h.id);
    if (it != c.inflight.end()) service_.client_cancel(it->second);
    return;
  }
  if (h.kind == FrameKind::kOneWay && h.op == ipc::kShmDt) {
    // shmdt of a segment homed here: the program does not wait (its note is applied before anything that depends
    // on it is answered: drain_notes()).
    shm_conns_.insert(conn_id);
    return service_.client_shmdt(c.creds, conn_id, f.payload, [](int, Bytes) {});
  }
  if (h.kind == FrameKind::kOneWay && h.op == ipc::kShmAttached) {
    // The one-way attach of a segment homed here: its userfaultfd, then the view it mapped (docs/ARCHITECTURE.md,
    // "One-way shmat").
    shm_conns_.insert(conn_id);
    if (c.fds.size() < 2) return close_conn(conn_id, "a one-way attach without its two descriptors");
    int uffd = c.fds[0], view = c.fds[1];
    c.fds.erase(c.fds.begin(), c.fds.begin() + 2);
    for (int fd : c.fds) close(fd);  // nobody's: a note uses two
    c.fds.clear();
    if (!is_userfaultfd(uffd)) {
      close(uffd);
      close(view);
      return close_conn(conn_id, "a one-way attach whose descriptor is not a userfaultfd");
    }
    return service_.client_shm_attach_note(c.creds, conn_id, f.payload, uffd, view);
  }
  if (h.kind != FrameKind::kRequest) return close_conn(conn_id, "unexpected frame kind from client");
  if (ipc::depends_on_shm_notes(h.op)) drain_notes();
  if (!conns_.count(conn_id)) return;  // an answer to another program's request could not be sent to this one
  FrameHeader resp{FrameKind::kResponse, h.op, h.id, 0, 0};
  switch (h.op) {
    case ipc::kHello: {
      ipc::HelloReq req;
      if (!ipc::decode_body(f.payload, req)) return close_conn(conn_id, "malformed hello");
      ipc::HelloResp r;
      r.node = cfg_.self;
      return send_frame(conn_id, resp, ipc::encode_body(r), control_fd_);
    }
    case ipc::kAdminStatus: {
      ipc::AdminStatusResp r;
      r.text = service_.status_text() + status_text();
      auto [total, up] = service_.peer_counts();
      r.peers_total = total;
      r.peers_up = up;
      r.enabled = enabled();
      return send_frame(conn_id, resp, ipc::encode_body(r));
    }
    case ipc::kAdminObjects: {
      // Like ipcs(1): every object is listed, whatever its mode (the kernel's /proc/sysvipc does the same).
      if (!f.payload.empty()) return close_conn(conn_id, "malformed admin request");
      service_.list_objects([this, conn_id, resp](ipc::ObjListResp r) { send_frame(conn_id, resp, ipc::encode_body(r)); });
      return;
    }
    case ipc::kAdminEnable: {
      ipc::AdminEnableReq req;
      if (!ipc::decode_body(f.payload, req)) return close_conn(conn_id, "malformed admin request");
      if (c.creds.uid != 0 && c.creds.uid != geteuid()) {
        resp.status = EPERM;
        return send_frame(conn_id, resp, {});
      }
      set_enabled(req.enabled);
      DIPC_LOG_INFO("distribution switched {} by uid {}", req.enabled ? "on" : "off", c.creds.uid);
      return send_frame(conn_id, resp, {});
    }
    default:
      break;
  }
  if (h.op == ipc::kShmAt || h.op == ipc::kShmAttached || h.op == ipc::kShmDt || h.op == ipc::kShmAttachCheck ||
      h.op == ipc::kShmNotes)
    return on_shm_frame(c, f);
  for (int fd : c.fds) close(fd);  // descriptors nobody asked for
  c.fds.clear();
  if (h.op < ipc::kSemGet || h.op > ipc::kIpcStat) return close_conn(conn_id, "unknown client operation");
  if (c.inflight.count(h.id)) return close_conn(conn_id, "duplicate request id");
  if (c.inflight.size() >= kMaxInflightPerConn) return close_conn(conn_id, "too many requests in flight");
  uint64_t token = next_token_++;
  c.inflight[h.id] = token;
  uint64_t frame_id = h.id;
  uint16_t op = h.op;
  tokens_[token] = {conn_id, frame_id};
  auto answered = std::make_shared<bool>(false);  // the answer may come long after this returns
  try {
    service_.client_request(c.creds, h.op, f.payload, token,
                            [this, conn_id, frame_id, op, token, answered](int st, Bytes body) {
                              *answered = true;
                              tokens_.erase(token);
                              auto it = conns_.find(conn_id);
                              if (it == conns_.end()) return;
                              it->second->inflight.erase(frame_id);
                              send_frame(conn_id, FrameHeader{FrameKind::kResponse, op, frame_id, st, 0}, body);
                            });
  } catch (const std::bad_alloc&) {  // the program gets ENOMEM; the daemon goes on
    DIPC_LOG_WARN("client pid {}: out of memory serving operation {}", c.creds.pid, op);
    if (!*answered) {
      tokens_.erase(token);
      c.inflight.erase(frame_id);
      send_frame(conn_id, FrameHeader{FrameKind::kResponse, op, frame_id, ENOMEM, 0}, {});
    }
  }
}

// shmat / shmdt: answered in order on the program's shm connection; they carry descriptors both ways.
void ClientServer::on_shm_frame(Conn& c, FrameParser::Frame& f) {
  uint64_t conn_id = c.id;
  const FrameHeader h = f.header;
  if (c.notes_fd < 0) shm_conns_.insert(conn_id);  // else its notes come on the channel
  auto answer = [this, conn_id, h](int st, Bytes body) {
    send_frame(conn_id, FrameHeader{FrameKind::kResponse, h.op, h.id, st, 0}, body);
  };
  if (h.op == ipc::kShmAt) {
    service_.client_shmat(c.creds, f.payload, [this, conn_id, h](int st, Bytes body, int fd) {
      send_frame(conn_id, FrameHeader{FrameKind::kResponse, h.op, h.id, st, 0}, body, fd);
      if (fd >= 0) close(fd);
    });
    return;
  }
  if (h.op == ipc::kShmDt) return service_.client_shmdt(c.creds, conn_id, f.payload, answer);
  if (h.op == ipc::kShmAttachCheck) return service_.client_shm_attach_check(c.creds, conn_id, f.payload, answer);
  if (h.op == ipc::kShmNotes) {
    if (c.fds.empty()) return answer(EBADF, {});
    int fd = c.fds.front();
    c.fds.erase(c.fds.begin());
    return answer(take_note_channel(c, fd), {});
  }
  // Without a descriptor: a re-attach on a kept userfaultfd, the fallback of its note when the channel was full.
  if (c.fds.empty()) return answer(service_.client_shm_revive(c.creds, conn_id, f.payload, true), {});
  int uffd = c.fds.front();
  c.fds.erase(c.fds.begin());
  if (!is_userfaultfd(uffd)) {  // any other descriptor would be read as fault events
    close(uffd);
    return answer(EBADF, {});
  }
  service_.client_shm_attached(c.creds, conn_id, f.payload, uffd, answer);
}

void ClientServer::send_frame(uint64_t conn_id, const FrameHeader& h, ByteView body, int pass_fd) {
  auto it = conns_.find(conn_id);
  if (it == conns_.end()) return;
  Conn& c = *it->second;
  size_t start = c.out.size();
  append_frame(c.out, h, body);
  if (pass_fd >= 0) {
    // The descriptor rides on the first byte of this frame, so the bytes before it must be out first. Programs
    // wait for each answer that carries one (hello, shmat), so there never are; if there were, say so.
    if (start != 0) {
      c.out.resize(start);
      flush(c);
      if (!conns_.count(conn_id)) return;
      if (!c.out.empty()) return close_conn(conn_id, "cannot pass a descriptor behind unsent answers");
      append_frame(c.out, h, body);
    }
    ssize_t n = send_with_fd(c.fd, c.out.data(), c.out.size(), pass_fd);
    if (n < 0) return close_conn(conn_id, "sendmsg failed");
    c.out.erase(c.out.begin(), c.out.begin() + n);
  }
  flush(c);
}

void ClientServer::flush(Conn& c) {
  size_t off = 0;
  while (off < c.out.size()) {
    ssize_t n = send(c.fd, c.out.data() + off, c.out.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    c.out.clear();
    return close_conn(c.id, nullptr);
  }
  c.out.erase(c.out.begin(), c.out.begin() + static_cast<std::ptrdiff_t>(off));
  if (c.out.size() > kMaxClientOut) return close_conn(c.id, "client does not read its answers");
  if (!account(c)) return;
  bool want = !c.out.empty();
  if (want != c.want_out) {
    c.want_out = want;
    loop_.modify(c.fd, EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0u));
  }
}

void ClientServer::close_conn(uint64_t conn_id, const char* why) {
  auto it = conns_.find(conn_id);
  if (it == conns_.end()) return;
  if (it->second->notes_fd >= 0 && !it->second->closing) {
    // Its notes are applied first, in order (a process killed right after its shmdt leaves shm_lpid as Linux does).
    it->second->closing = true;
    it->second->notes_busy = false;
    read_notes(*it->second);
    it = conns_.find(conn_id);
    if (it == conns_.end()) return;
  }
  std::unique_ptr<Conn> c = std::move(it->second);
  conns_.erase(it);
  if (why) DIPC_LOG_WARN("client pid {}: {}; connection closed", c->creds.pid, why);
  if (auto u = users_.find(c->creds.uid); u != users_.end()) {
    u->second.bytes -= c->held;
    if (--u->second.conns == 0) users_.erase(u);
  }
  loop_.remove(c->fd);
  fd_conn_.erase(c->fd);
  shm_conns_.erase(conn_id);
  close(c->fd);
  if (c->notes_fd >= 0) {
    epoll_ctl(notes_epfd_, EPOLL_CTL_DEL, c->notes_fd, nullptr);
    close(c->notes_fd);
    --note_channels_;
  }
  for (int fd : c->fds) close(fd);
  service_.client_conn_closed(conn_id);
  // Calls still blocked on its behalf are withdrawn; nothing is half-applied.
  for (auto& [fid, token] : c->inflight) {
    tokens_.erase(token);
    service_.client_cancel(token);
  }
}

std::string ClientServer::status_text() const {
  std::ostringstream os;
  os << "distribution: " << (enabled() ? "on" : "off") << "\n";
  os << "local client connections: " << conns_.size() << "\n";
  return os.str();
}

}  // namespace dipc
