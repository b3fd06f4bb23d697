// The node service: SysV semantics of distributed semaphores and message queues on top of the transport interface.
//
// Every object has a home node, the node that created it (its id names it, ipc/ids.h); the home holds the state
// and serialises every operation, so each object is linearizable. Every key has a referee node, chosen by hashing
// the key over the configured nodes; the referee maps keys to ids and serialises creation, so an
// IPC_CREAT|IPC_EXCL race between nodes has exactly one winner. See docs/ARCHITECTURE.md.
//
// Runs on the daemon's loop thread. Talks to other nodes only through transport::Transport.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/config.h"
#include "common/event_loop.h"
#include "dsm/segment.h"
#include "ipc/ids.h"
#include "ipc/kernel_msg.h"
#include "ipc/kernel_sem.h"
#include "ipc/msg_queue.h"
#include "ipc/protocol.h"
#include "ipc/sem_set.h"
#include "ipc/shm_seg.h"
#include "ipc/shm_table.h"
#include "ipc/types.h"
#include "transport/transport.h"

namespace dipc::ipc {

class Service : public transport::Handler {
 public:
  // Called exactly once per request, possibly much later (a blocked semop).
  using ReplyFn = std::function<void(int status, Bytes body)>;

  // `dsm` is the node's DSM runtime (daemon/ owns it and registers it with the transport for its own ops).
  Service(const Config& cfg, EventLoop& loop, transport::Transport* tr, dsm::Manager& dsm, const Limits& lim);
  ~Service() override;

  // A request from a local program. `token` is unique within this node; the service makes it cluster-unique.
  void client_request(const Creds& c, uint16_t op, ByteView body, uint64_t token, ReplyFn reply);
  // Shared memory calls that carry descriptors or belong to a connection (ipc/protocol.h, "shared memory").
  // shmat step 1: `reply` gets the node's view memfd to pass to the program (the caller closes it after sending).
  using FdReplyFn = std::function<void(int status, Bytes body, int fd)>;
  void client_shmat(const Creds& c, ByteView body, FdReplyFn reply);
  // shmat step 2: the program's userfaultfd (ownership passes here) for the attach it mapped.
  void client_shm_attached(const Creds& c, uint64_t conn, ByteView body, int uffd, ReplyFn reply);
  void client_shmdt(const Creds& c, uint64_t conn, ByteView body, ReplyFn reply);
  // The one-way attach note of a segment homed here (docs/ARCHITECTURE.md, "One-way shmat"): the program mapped a
  // view dipcd handed it earlier, registered `uffd` over it and does not wait. `view` proves it holds that view (and
  // in which mode). Both descriptors pass here. Counted at once; a note that cannot be applied is dropped (logged), and
  // the program's confirmation, if it asks one, answers ESTALE.
  void client_shm_attach_note(const Creds& c, uint64_t conn, ByteView body, int uffd, int view);
  // kShmAttachCheck: the program's confirmation of its note, when the table changed or the segment is shared.
  void client_shm_attach_check(const Creds& c, uint64_t conn, ByteView body, ReplyFn reply);
  // kShmAttached without a descriptor (a note on the channel; `sync`: its fallback when the channel was full, which
  // checks the rights at the home as kShmAttached does): the program registered its new attach on the userfaultfd
  // `utok` names, kept dormant since its last detach (docs/ARCHITECTURE.md, "One userfaultfd from one attach to the
  // next"). Returns 0 or the errno (a note's is only logged).
  int client_shm_revive(const Creds& c, uint64_t conn, ByteView body, bool sync);
  // kShmForget: the program closed its copy of the userfaultfd `utok` names; its dormant attach goes.
  void client_shm_forget(uint64_t conn, ByteView body);
  // A client connection closed (exit, kill -9, exec): detach everything attached through it.
  void client_conn_closed(uint64_t conn);

  // The program gave up waiting (signal, timeout, exit): cancel the request if it is still blocked.
  void client_cancel(uint64_t token);
  // Called with a local request's token once the request is queued (blocked) at its home (service_wait.cc).
  void set_blocked_hook(std::function<void(uint64_t token)> hook) { blocked_hook_ = std::move(hook); }
  // The segments homed here under a key and not removed, for the programs' shmget table (ipc/shm_table.h); `hook`
  // runs whenever that list changes (create, IPC_SET, IPC_RMID, destruction), before the change is answered.
  std::vector<ShmTableRow> shm_table_rows() const;
  void set_shm_table_hook(std::function<void()> hook) { shm_table_hook_ = std::move(hook); }
  // Applies the local programs' one-way notes now (daemon/client_server.h, drain_notes), for the Dekker-style
  // handshakes of the one-way attach: the daemon publishes, fences, then drains.
  void set_notes_hook(std::function<void()> hook) { notes_hook_ = std::move(hook); }
  // The DSM is about to make a block of segment `id` read-only in this node's view (dsm::Manager's shared hook): the
  // segment's table word is set, fenced, and the notes drained before it does (ipc/shm_table.h kShmRowShared).
  void shm_shared(uint64_t id);
  // A local process exited: apply its SEM_UNDO adjustments everywhere in the cluster.
  void process_exited(int32_t pid);

  std::string status_text() const;
  // A line `dipc status` shows about where the daemon runs (NUMA placement near its RDMA device).
  void set_placement(std::string text) { placement_ = std::move(text); }
  // `dipc ipcs`: the objects of this node and of every connected peer (asked with kObjList in parallel). Peers that
  // fail or do not answer within kObjListTimeoutMs are listed in `unreachable`; `done` runs exactly once.
  static constexpr int64_t kObjListTimeoutMs = 3000;
  void list_objects(std::function<void(ObjListResp)> done);
  std::vector<ObjEntry> local_objects() const;
  // Configured peers and how many of them are connected.
  std::pair<uint32_t, uint32_t> peer_counts() const;
  // This daemon start's incarnation (ipc/ids.h), set before the transport starts.
  void set_incarnation(uint32_t inc) { incarnation_ = inc & kIncarnationMask; }
  // Semaphore sets homed here are backed by kernel sets (kernel_sem.h) unless `enabled` is false; `state_file`
  // keeps their kernel ids, and those a previous start left are removed now (service_ksem.cc).
  void set_kernel_sems(bool enabled, std::string state_file);
  // Message queues homed here are backed by kernel queues (kernel_msg.h) unless `enabled` is false; as above
  // (service_kmsg.cc).
  void set_kernel_msgs(bool enabled, std::string state_file);
  size_t objects() const { return sems_.by_id.size() + msgs_.by_id.size() + shms_.by_id.size(); }
  dsm::Manager& dsm() { return dsm_; }

  // transport::Handler
  void on_request(transport::NodeId from, uint16_t op, ByteView body, transport::ReplyToken token) override;
  void on_message(transport::NodeId from, uint16_t op, ByteView body) override;
  void on_peer(transport::NodeId peer, bool up) override;

 private:
  std::string placement_;
  struct Pending {
    ObjType type;
    int32_t id;
    ReplyFn reply;
  };
  struct Acquire {
    uint16_t from;
    KeyReq req;
    std::function<void(int, Bytes)> reply;
  };
  struct Reservation {
    uint16_t node = 0;  // the node creating the key
    bool bound = false;
    int32_t id = 0;
    std::vector<Acquire> waiting;  // acquires queued behind the creation
  };
  template <typename T>
  struct Slots {
    std::unordered_map<int32_t, std::unique_ptr<T>> by_id;
    std::deque<uint32_t> free;  // FIFO: a freed slot is reused last, so a stale id names nothing for long
    std::vector<uint16_t> seq;  // generation per slot (ipc/ids.h)
    uint32_t next = 0;
  };

  uint64_t global_token(uint64_t local) const { return (static_cast<uint64_t>(cfg_.self) << 48) | local; }
  // Sends a request to `node`, or runs it here when node is self.
  void call(uint16_t node, uint16_t op, Bytes body, std::function<void(int, ByteView)> cb);
  void notify(uint16_t node, uint16_t op, Bytes body);
  // Issues a transport operation; refused for lack of resources, it waits in the transport's pending queue and
  // `failed` reports a later failure to issue it (transport/transport.h, BACK-PRESSURE).
  [[nodiscard]] Status issue(uint16_t node, std::function<Status()> op, std::function<void(Status)> failed);
  void dispatch_request(uint16_t from, uint16_t op, ByteView body, std::function<void(int, Bytes)> reply);
  void dispatch_message(uint16_t from, uint16_t op, ByteView body);

  // *get
  void do_get(ObjType type, const Creds& c, const GetReq& req, ReplyFn reply, int attempts);
  int create_local(ObjType type, const Creds& c, int32_t key, int32_t nsems, int32_t flg, int32_t& id,
                   uint64_t size = 0);
  uint16_t referee_for(int32_t key) const;
  // Forgets `key` as the key of home object `id` (IPC_RMID: the key is private from now on).
  void home_key_drop(ObjType type, int32_t key, int32_t id);
  void referee_acquire(uint16_t from, const KeyReq& req, std::function<void(int, Bytes)> reply);
  void referee_update(uint16_t from, uint16_t op, const KeyReq& req);
  void referee_run_queue(int32_t key, ObjType type);
  // A (re)started referee knows no key until the homes have told it theirs: it parks every key lookup until each
  // configured peer has answered its key inventory (resync_with) or is lost, or cfg_.rebuild_wait_ms has passed,
  // so a restarted referee never lets an IPC_CREAT make a second object under a key that lives on.
  void rebuild_done(uint16_t peer, const char* why);
  void rebuild_finish();
  // A peer's link came up: learn the keys of the objects it hosts that we referee (a restarted referee rebuilds its
  // map), forget bindings to it that it no longer has (a restarted home's stale ids), and end the local attaches of
  // its segments that it no longer has (their processes get SIGBUS: the data is gone with the home).
  void resync_with(uint16_t peer);

  // home side
  void home_request(uint16_t op, const HomeHeader& h, ByteView body, ReplyFn reply);
  void home_open(const HomeHeader& h, ByteView body, ReplyFn& reply);
  void home_semop(const HomeHeader& h, ByteView body, ReplyFn& reply);
  void home_semctl(const HomeHeader& h, ByteView body, ReplyFn& reply);
  void home_msgsnd(const HomeHeader& h, ByteView body, ReplyFn& reply);
  void home_msgrcv(const HomeHeader& h, ByteView body, ReplyFn& reply);
  void home_msgctl(const HomeHeader& h, ByteView body, ReplyFn& reply);
  void home_shmat(const HomeHeader& h, ByteView body, ReplyFn& reply);
  void home_shm_attach(uint16_t op, const HomeHeader& h, ByteView body, ReplyFn& reply);
  void home_shmctl(const HomeHeader& h, ByteView body, ReplyFn& reply);
  void shm_destroy_if_gone(int32_t id);
  // service_info.cc: *_STAT and *_INFO over the cluster's objects
  void client_ipc_info(const HomeHeader& h, uint16_t op, ByteView body, ReplyFn reply);
  void home_stat_slot(const HomeHeader& h, ByteView body, ReplyFn& reply);
  uint32_t node_rank(uint16_t node) const;
  // service_wait.cc: a request queued at this home is registered; tell its origin
  void note_blocked(uint64_t token);
  // A call its object says must wait is parked (pending_) until the object answers it, and its origin is told it
  // waits; false: o is an answer to give now.
  bool park_if_blocked(const Outcome& o, ObjType type, int32_t id, uint64_t token, ReplyFn& reply);
  void on_blocked_note(uint16_t from, ByteView body);
  // service_ksem.cc: semaphore sets homed here backed by a kernel set
  KernelSemSet* find_ksem(int32_t id);
  void ksem_create(const Creds& c, int32_t id, int nsems, uint16_t mode);
  // Refreshes the SemSet's owner, mode and times from the kernel set; false (and the object removed) when the
  // kernel set was removed behind dipcd's back.
  bool ksem_sync(int32_t id, SemSet& s, KernelSemSet& k);
  void ksem_semop(const HomeHeader& h, const SemOpReq& r, SemSet& s, KernelSemSet& k, ReplyFn& reply);
  void ksem_semctl(const HomeHeader& h, const SemCtlReq& r, SemSet& s, KernelSemSet& k, ReplyFn& reply);
  void ksem_hidden(IpcInfoResp& r) const;
  // service_kmsg.cc: message queues homed here backed by a kernel queue
  KernelMsgQueue* find_kmsg(int32_t id);
  void kmsg_create(const Creds& c, int32_t id, uint16_t mode);
  // Refreshes the MsgQueue's owner and mode from the kernel queue (its stat in `ds`); false (and the object removed)
  // when the kernel queue was removed behind dipcd's back.
  bool kmsg_sync(int32_t id, MsgQueue& q, KernelMsgQueue& k, struct msqid_ds& ds);
  void kmsg_msgsnd(const HomeHeader& h, MsgSndReq& r, MsgQueue& q, KernelMsgQueue& k, ReplyFn& reply);
  void kmsg_msgrcv(const HomeHeader& h, const MsgRcvReq& r, MsgQueue& q, KernelMsgQueue& k, ReplyFn& reply);
  void kmsg_msgctl(const HomeHeader& h, const MsgCtlReq& r, MsgQueue& q, KernelMsgQueue& k, ReplyFn& reply);
  // IPC_STAT (and MSG_STAT) of a kernel-backed queue for `c`: 0 or the errno; the object removed when the kernel
  // queue is gone (EINVAL).
  int kmsg_stat(int32_t id, MsgQueue& q, KernelMsgQueue& k, const Creds& c, MsgStat& out);
  void kmsg_hidden(IpcInfoResp& r) const;
  // Messages and bytes of a queue homed here, wherever they are kept.
  std::pair<uint64_t, uint64_t> msg_counts(int32_t id, const MsgQueue& q) const;
  void shm_detach_at_home(const Creds& c, int32_t id, ReplyFn reply);
  void home_cancel(uint64_t token);
  void remove_object(ObjType type, int32_t id);
  void drain(SemSet& s);
  void drain(MsgQueue& q);
  SemSet* find_sem(int32_t id);
  MsgQueue* find_msg(int32_t id);
  ShmSeg* find_shm(int32_t id);

  // The limits named by `which` (LimitFiles::Which), read now from the home's /proc/sys/kernel (per_op: the ones a
  // semop or msgsnd checks, at most LimitFiles::kPerOpMaxAgeNs old).
  const Limits& limits(unsigned which, bool per_op = false) {
    lim_files_.refresh(lim_, which, per_op ? LimitFiles::kPerOpMaxAgeNs : 0);
    return lim_;
  }

  const Config& cfg_;
  EventLoop& loop_;
  transport::Transport* tr_;
  Limits lim_;
  LimitFiles lim_files_;
  Slots<SemSet> sems_;
  Slots<MsgQueue> msgs_;
  Slots<ShmSeg> shms_;
  uint64_t shm_pages_ = 0;  // shm_tot, for shmall
  dsm::Manager& dsm_;
  struct LocalAttach {
    uint64_t attach = 0;  // dsm attach id
    int32_t id = 0;
    uint64_t addr = 0;
    Creds creds;
    uint64_t utok = 0;    // the program keeps its userfaultfd under this token (0: not kept)
    bool rdonly = false;
  };
  std::unordered_map<uint64_t, std::vector<LocalAttach>> attaches_;  // client connection -> its attaches
  // The attach of connection `conn` with the id and address given, or nullptr.
  LocalAttach* find_local_attach(uint64_t conn, int32_t id, uint64_t addr);
  // Takes `a` out of its connection's list (it must be in it).
  void erase_local_attach(uint64_t conn, const LocalAttach* a);
  // Detached attaches whose userfaultfd the program keeps: (connection, utok) -> (segment id, dsm attach, mode).
  struct Dormant {
    int32_t id = 0;
    uint64_t attach = 0;
    bool rdonly = false;
  };
  std::map<std::pair<uint64_t, uint64_t>, Dormant> dormant_;
  static constexpr size_t kMaxDormantPerConn = 64;  // a program keeps 8 (preload/shm.cc kKeptViews)
  void park_local_attach(uint64_t conn, const LocalAttach& a);  // dormant, or removed past the bound
  void drop_dormant(uint64_t conn, uint64_t utok);
  uint64_t next_attach_ = 1;
  int64_t used_sems_ = 0;
  std::function<void(uint64_t)> blocked_hook_;
  std::function<void()> shm_table_hook_;
  std::function<void()> notes_hook_;
  void fence_and_drain_notes();
  void shm_table_changed() {
    if (shm_table_hook_) shm_table_hook_();
  }
  std::unordered_map<uint64_t, Pending> pending_;               // home: blocked requests by token
  std::unordered_map<uint64_t, uint16_t> inflight_;             // origin: token -> home node
  std::map<std::pair<uint8_t, int32_t>, Reservation> keys_;     // referee: (type, key) -> state
  // home: (type, key) -> id of the live objects created here under a key (not IPC_PRIVATE, not removed). A *get of
  // such a key made on this node is answered here, without the referee (service_origin.cc, do_get).
  std::map<std::pair<uint8_t, int32_t>, int32_t> home_keys_;
  std::vector<uint16_t> node_ids_;                              // sorted
  std::set<uint16_t> rebuilding_;   // referee: peers whose key inventory this start still waits for
  std::vector<Acquire> parked_;     // referee: key lookups that wait for it
  EventLoop::TimerId rebuild_timer_ = 0;
  uint32_t incarnation_ = 0;
  bool kernel_sems_ = false;
  KernelSemRegistry ksem_registry_;
  std::unordered_map<int32_t, std::unique_ptr<KernelSemSet>> ksems_;
  bool kernel_msgs_ = false;
  KernelMsgRegistry kmsg_registry_{{}, ObjType::kMsg};
  std::unordered_map<int32_t, std::unique_ptr<KernelMsgQueue>> kmsgs_;
};

}  // namespace dipc::ipc
