// The daemon's local face: programs (through libdipc.so) and tools connect over a Unix socket. The kernel tells us
// who they are (SO_PEERCRED, SO_PEERGROUPS, SO_PEERPIDFD, pinned at connect); nothing the client says about itself is trusted. A pidfd per
// client process tells us when it exits, even by kill -9, so its SEM_UNDO adjustments are applied cluster-wide.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/event_loop.h"
#include "common/frame.h"
#include "ipc/control.h"
#include "ipc/shm_table.h"
#include "ipc/service.h"
#include "ipc/types.h"
#include "transport/transport.h"

namespace dipc {

class ClientServer {
 public:
  ClientServer(EventLoop& loop, ipc::Service& service, const Config& cfg);
  ~ClientServer();
  Status listen(const std::string& name);
  // dipc on/off: new *get calls go to the kernel while off.
  void set_enabled(bool on);
  bool enabled() const;
  size_t clients() const { return conns_.size(); }
  std::string status_text() const;
  // Applies the one-way notes (shmdt of a segment homed here, ipc/protocol.h kShmDt) that local programs have
  // already written to their sockets, before the daemon answers anything that may depend on them: every local
  // request, every frame from a peer node (NotesFirst below). A note is in the socket before shmdt returns, so
  // anything causally after the shmdt reaches dipcd later and finds it applied (docs/ARCHITECTURE.md, "One-way
  // shmdt"). A connection whose frames are being applied right now is skipped: its later notes come after.
  // `nested`: also from inside a drain (the one-way attach's handshakes, which must read every socket after their
  // fence; the connections being applied are still skipped).
  void drain_notes(bool nested = false);

  struct Conn {
    uint64_t id = 0;
    int fd = -1;
    ipc::Creds creds;
    FrameParser parser;
    Bytes out;
    bool want_out = false;
    std::unordered_map<uint64_t, uint64_t> inflight;  // frame id -> service token
    std::vector<int> fds;  // descriptors received (SCM_RIGHTS), taken by the frame that carries them
    size_t held = 0;       // bytes counted in the user's `bytes` (partial frames received, answers unsent)
    bool busy = false;     // on_readable() is applying its frames (drain_notes() leaves it alone)
    int notes_fd = -1;     // the note channel (kShmNotes): in notes_epfd_, never in the loop
    bool notes_busy = false;
    bool closing = false;  // close_conn() is reading its last notes
  };
  // Reads and applies the notes waiting on c's note channel (bounded: kMaxNotesPerDrain).
  void read_notes(Conn& c);
  void on_note(Conn& c, FrameParser::Frame& f);
  // kShmNotes: the descriptor is an AF_UNIX SOCK_SEQPACKET socket whose peer is c's process; it becomes c's channel.
  int take_note_channel(Conn& c, int fd);
  void arm_notes_timer();
  static constexpr int kMaxNotesPerDrain = 1024;
  static constexpr int64_t kNotesTimerMs = 100;
  static constexpr int64_t kNotesIdleMs = 1000;
  // What one local user makes the daemon hold (root and the daemon's own uid are not bounded).
  struct UserUse {
    size_t conns = 0;
    size_t bytes = 0;
  };
  // Per-user bounds (README, "Limits a local user cannot exceed").
  static constexpr size_t kMaxConnsPerUser = 1024;
  static constexpr size_t kMaxBytesPerUser = 64u << 20;
  static constexpr size_t kMaxInflightPerConn = 1024;
  void on_accept();
  void on_readable(Conn& c, uint32_t events);
  void read_frames(Conn& c, uint32_t events);
  void on_frame(Conn& c, FrameParser::Frame& f);
  void on_shm_frame(Conn& c, FrameParser::Frame& f);
  void send_frame(uint64_t conn_id, const FrameHeader& h, ByteView body, int pass_fd = -1);
  void flush(Conn& c);
  void close_conn(uint64_t conn_id, const char* why);
  void watch_pid(int32_t pid, int pidfd);
  bool bounded(uint32_t uid) const;
  // Recounts what c holds; false (and the connection closed) when its user is past kMaxBytesPerUser.
  bool account(Conn& c);
  // Accepts one pending connection when out of descriptors, and closes it: the program is told at once
  // (connection closed: EIO) instead of waiting in the backlog, and the listening socket stops being readable.
  void shed_one();
  bool read_creds(int fd, ipc::Creds& c, int* pidfd);

  EventLoop& loop_;
  ipc::Service& service_;
  const Config& cfg_;
  int listen_fd_ = -1;
  std::string name_;
  int control_fd_ = -1;
  ipc::ControlPage* control_ = nullptr;
  ipc::ShmTable* shm_table_ = nullptr;  // in the same memfd, at ipc::kShmTableOffset
  size_t control_len_ = 0;  // one page of this node
  uint64_t next_conn_ = 1;
  uint64_t next_token_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  // Service token -> (connection, frame id) of every request in flight: kBlocked finds its call without a scan.
  std::unordered_map<uint64_t, std::pair<uint64_t, uint64_t>> tokens_;
  std::unordered_map<int, uint64_t> fd_conn_;
  std::unordered_map<int32_t, int> pidfds_;  // pid -> pidfd
  std::unordered_map<uint32_t, UserUse> users_;
  int reserve_fd_ = -1;  // a descriptor kept free for shed_one()
  int64_t last_shed_log_ = 0;
  // Connections without a note channel that carried a shm operation: their notes come on the connection itself
  // (DIPC_SHM_NOTE_CHANNEL=0 in the program, or a program of an older protocol), one recvmsg each per drain.
  std::unordered_set<uint64_t> shm_conns_;
  bool draining_ = false;
  // Every connection's note channel, in one epoll set dipcd's loop does not wait on: a drain is one
  // epoll_wait(notes_epfd_, 0) when no note waits (docs/ARCHITECTURE.md, "The note channel").
  int notes_epfd_ = -1;
  size_t note_channels_ = 0;
  EventLoop::TimerId notes_timer_ = 0;
  int64_t notes_period_ms_ = kNotesTimerMs;
  uint64_t notes_read_ = 0;           // notes applied, ever
  uint64_t notes_read_at_timer_ = 0;  // ... at the last timer drain
};

// A peer's frames are handled only once the local programs' notes are applied (ClientServer::drain_notes): a remote
// node's IPC_STAT, or its request for a block, sees every shmdt that returned before it was sent. `depends`: which
// ops need it (nullptr: all of them, the DSM's).
class NotesFirst : public transport::Handler {
 public:
  NotesFirst(transport::Handler& inner, std::function<void()>& drain, bool (*depends)(uint16_t op) = nullptr)
      : inner_(inner), drain_(drain), depends_(depends) {}
  void on_request(transport::NodeId from, uint16_t op, ByteView body, transport::ReplyToken token) override {
    if (drain_ && (!depends_ || depends_(op))) drain_();
    inner_.on_request(from, op, body, token);
  }
  void on_message(transport::NodeId from, uint16_t op, ByteView body) override {
    if (drain_ && (!depends_ || depends_(op))) drain_();
    inner_.on_message(from, op, body);
  }
  void on_peer(transport::NodeId peer, bool up) override { inner_.on_peer(peer, up); }

 private:
  transport::Handler& inner_;
  std::function<void()>& drain_;  // set once the local socket listens
  bool (*depends_)(uint16_t op);
};

}  // namespace dipc
