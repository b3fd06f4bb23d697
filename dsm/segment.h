// The node's DSM runtime: the segments this node hosts or caches, their memory, the local processes' page faults,
// and the coherence protocol's messages, on top of the transport interface only.
//
// Memory of one segment on one node (docs/ARCHITECTURE.md, "Distributed shared memory"):
//  - the view V: a memfd every local process maps MAP_SHARED at shmat. All local processes share its pages, so while
//    no other node touches a block they read and write it at full speed with no fault and no daemon involvement.
//    A block the node does not hold is absent from V's page cache (punched); a block held read-only is
//    write-protected in every local process through its userfaultfd (uffd-wp, which also covers ptes not yet
//    populated). Each process registers its mapping with its own userfaultfd (MISSING | WP) and hands it to dipcd,
//    which resolves every fault of every local process.
//  - the frames F: a second memfd mapped by dipcd only and registered with the transport: other nodes copy blocks
//    out of it (one-sided read). With a provider that pins registered memory (Capabilities::pins_memory) F is
//    registered in chunks of kPinChunk as they are first used, not the whole segment at shmget; else in one piece. F
//    holds a block's latest data whenever the directory names this node the owner and the node does not map it
//    writable; before a writable block is downgraded or invalidated, dipcd write-protects it everywhere and copies V
//    into F.
//  - SHM_HUGETLB segments (Geometry::huge_page): V is a hugetlbfs memfd and a block is at least one huge page.
//    hugetlbfs has no write(2), so dipcd installs blocks with UFFDIO_COPY into its own mapping of V (registered
//    MISSING with a userfaultfd of its own, never touched otherwise), which puts the whole page into V's page cache at
//    once; that mapping also holds the kernel's reservation of the segment's huge pages on this node, and a punched
//    block is reserved again at once (a punch frees the page's reservation with it). F stays in normal pages.
//    On the home (provider not pinning memory, normal pages) F is released for every block V holds, and the coherence
//    model's "home frame" of such a block is V: a push reads it there, a grant naming the home's frame copies it into
//    F first (lend_frames), an invalidation copies it into F before V is punched. A SHM_HUGETLB segment's home keeps
//    F (home_spares()).
//
// Runs on the daemon's loop thread. The coherence decisions are dsm/coherence.h's pure state machines; this file
// only carries out their messages and local actions.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "common/event_loop.h"
#include "common/status.h"
#include "common/unique_fd.h"
#include "dsm/coherence.h"
#include "transport/transport.h"

namespace dipc::dsm {

// Transport ops of the DSM layer, in its range of transport/ops.h; the Manager is the transport handler for them.
inline constexpr uint16_t kOpMsg = 120;     // one-way (or write_notify's message): a coherence Msg
inline constexpr uint16_t kOpRegion = 121;  // request {segment u64, offset u64} -> {chunk offset u64, RemoteKey}:
                                            // the key of the receiver's frames chunk that holds `offset`
inline constexpr uint16_t kOpPush = 122;    // one-way: a Grant{mode kPushed} of a run (24 bytes, Msg::encode), then
                                            // the run's bytes: a push over a provider without native one-sided
                                            // operations (Segment::push)
inline constexpr uint16_t kOpAckData = 123;  // one-way: a FetchAck{mode kPushed} (24 bytes, Msg::encode), then the
                                             // block's bytes, for the home's frame: the owner's data for the home's
                                             // own read miss, with the downgrade's acknowledgement (send_data_acks)
static_assert(transport::ops::kDsm.contains(kOpMsg) && transport::ops::kDsm.contains(kOpRegion) &&
              transport::ops::kDsm.contains(kOpPush) && transport::ops::kDsm.contains(kOpAckData));
// Registration unit of the frames when the provider pins memory (a power of two, so blocks never straddle chunks).
inline constexpr uint64_t kPinChunk = 2u << 20;
// The largest read-ahead window of a node (NodeCache): a sequential reader gets up to this many bytes per round trip,
// with kReadAheadWindows windows ahead of it (NodeCache's readahead_depth).
inline constexpr uint64_t kReadAheadBytes = 1u << 20;
inline constexpr uint32_t kReadAheadWindows = 2;
// The largest write-ahead window of a node that is not the segment's home (NodeCache's writeahead_max): a sequential
// writer gets up to this many bytes exclusive per round trip.
inline constexpr uint64_t kWriteAheadBytes = 1u << 20;

struct Stats {
  uint64_t faults = 0;          // uffd fault events handled
  uint64_t remote_fetches = 0;  // blocks copied from another node's frames (pulled by this node)
  uint64_t pushes = 0;          // blocks this home wrote into a requester's frame with its grant
  uint64_t prefetched = 0;      // blocks this node got through read-ahead (granted before any access asked)
  uint64_t written_ahead = 0;   // blocks this node got exclusive through write-ahead (before any access asked)
  uint64_t frames_released = 0;  // read copies punched from F once in V (held once, not twice)
  uint64_t zero_fills = 0;
  uint64_t invalidations = 0;   // local copies dropped
  uint64_t downgrades = 0;
  uint64_t messages_out = 0, messages_in = 0;
  uint64_t messages_deferred = 0;  // refused for lack of transport resources and sent later (never dropped)
  uint64_t registered_bytes = 0;   // frames registered with the transport now
};

class Manager;

class Segment {
 public:
  Segment(Manager& m, uint64_t id, NodeId home, uint64_t size, const Geometry& g);
  ~Segment();
  Status init();  // memfds, frame mapping, transport registration

  uint64_t id() const { return id_; }
  NodeId home() const { return home_; }
  uint64_t size() const { return size_; }
  uint64_t mapped_size() const { return mapped_; }
  uint64_t block_size() const { return block_; }
  uint64_t huge_page() const { return huge_; }  // 0: normal pages
  int view_fd() const { return view_fd_.get(); }
  size_t attaches() const { return attaches_.size(); }
  const NodeCache& cache() const { return cache_; }

  // A local process mapped the view at [addr, addr+len) and registered `uffd` (ownership passes here) for it.
  Status add_attach(uint64_t attach, int uffd, uint64_t addr, uint64_t len, bool rdonly);
  void remove_attach(uint64_t attach);
  // The attach was unmapped, and the program keeps its copy of the userfaultfd for its next attach of the segment
  // (docs/ARCHITECTURE.md, "One userfaultfd from one attach to the next"): the record stays, dormant (no range), its
  // userfaultfd still watched; a fault on it drains the notes first (Manager::set_notes_hook), which may revive it.
  void park_attach(uint64_t attach);
  // A dormant attach maps [addr, addr+len) again, registered on the same userfaultfd, in the mode it was checked
  // for (a read-only record never serves a writable attach). EINVAL: no such dormant record, or another mode/size.
  Status revive_attach(uint64_t attach, uint64_t addr, uint64_t len, bool rdonly);
  bool has_attach(uint64_t attach) const { return attaches_.count(attach) != 0; }

  void on_msg(const Msg& m);  // a coherence message for this segment (from the transport or the local FIFO)
  void on_push(const Msg& m, ByteView data);  // kOpPush: a pushed grant with its run's bytes
  void on_data_ack(const Msg& m, ByteView data);  // kOpAckData (home): a downgrade's FetchAck with the block's bytes
  void on_node_lost(NodeId node);
  void on_timer();
  // The frames chunk that holds byte `offset`, registered on first use. EINVAL past the end.
  Result<const transport::MemRegion*> frames_chunk(uint64_t offset);
  uint64_t chunk_size() const { return chunk_; }
  std::string status_line() const;
  // Bytes of memory the node's view and frames memfds hold now (st_blocks): what the segment costs this node.
  struct Footprint {
    uint64_t view = 0, frames = 0;
  };
  Footprint footprint() const;

 private:
  friend class Manager;
  struct Attach {
    int fd = -1;
    uint64_t addr = 0, len = 0;
    bool rdonly = false;
    uint32_t garbage = 0;  // events that cannot come from the mapping registered (see on_uffd)
  };
  void send_dir(std::vector<Msg>& out);
  // Before a block becomes read-only in V: the segment's "shared" word (Manager::set_shared_hook), once.
  void shared_first();
  // Write-protects, in a new attach, the blocks held read-only here (the new process sees the node's state).
  void protect_new(const Attach& a);
  void on_uffd(uint64_t attach);
  void handle_fault(uint64_t attach, uint64_t addr, bool write);
  void run(std::vector<Msg>& out, std::vector<LocalAction>& local);
  void apply(const LocalAction& a);
  void fetch(uint32_t block, NodeId from);
  void fetched(uint32_t block, Status st);  // the one-sided read of fetch() completed
  void write_protect_all(uint32_t block, bool wp, bool wake = false);
  bool copy_install(uint32_t block, bool writable);  // into V: protection, data and wake-up in one UFFDIO_COPY
  void save_view(uint32_t block);  // V -> F for a block present in V
  bool fill_view(uint32_t block);  // F (or the push being handled) -> V; false: not installed (write_view)
  // Blocks first..end-1 into V from where their data is; returns the end of the prefix installed (end: all).
  uint32_t copy_into_view(uint32_t first, uint32_t end);
  void keep_view(uint32_t block);  // a dirty block write-protected: save_view, unless the home holds it in V alone
  void install_run(uint32_t first, uint32_t n);  // kInstall read-only of blocks first..first+n-1, together
  void downgrade_run(uint32_t first, uint32_t n);  // kWriteProtect of blocks first..first+n-1, together
  void drop_view(uint32_t block);  // punch V: unmaps from every local process
  Status init_huge();  // the hugetlbfs view's install mapping, its userfaultfd and the reservation of its pages
  // Copies [src, src+len) into V at `off`: pwrite, or UFFDIO_COPY into the install mapping for hugetlbfs. Returns
  // the bytes installed (len: all; less when the huge page pool had no page: logged).
  uint64_t write_view(const uint8_t* src, uint64_t len, uint64_t off);
  // A read-only run into V through the attach that last faulted (install_run): UFFDIO_COPY fills V's pages and maps
  // them write-protected in that process at once, so its reads of the run take no minor fault. Returns the bytes
  // V is known to hold from `off` on (0..len); write_view does the rest.
  uint64_t copy_via_attach(const uint8_t* src, uint64_t len, uint64_t off);
  // [src, src+len) into V at `off` by UFFDIO_COPY into attach `a` (mode: UFFDIO_COPY_MODE_*); returns the bytes V is
  // known to hold from `off` on afterwards (0: none, or not confirmed in V).
  uint64_t uffd_copy_into_view(const Attach& a, const uint8_t* src, uint64_t off, uint64_t len, uint64_t mode);
  bool push_src_view(Bytes& buf, uint64_t off, uint64_t len);  // appends V's bytes [off, off+len) to buf
  // V's page cache holds every page of [off, off+len) (mincore through view_ro_, made on first use; normal pages
  // only). Bounded by the range, unlike lseek(SEEK_HOLE), which walks V to its first hole after off.
  bool view_holds(uint64_t off, uint64_t len);
  uint64_t install_failures_ = 0;
  uint64_t last_fault_attach_ = 0;  // the attach whose fault came last (handle_fault)
  bool home_gives_up_ = false;  // send_dir carries out the home's txn-0 invalidation for a write-ahead grant
  bool install_via_attach_ = false;  // install_run is copying a read-only run: write_view may use copy_via_attach
  void spare_frames(uint32_t first, uint32_t n);  // punch F of the blocks first..first+n-1 marked kSpareFrame
  void spare_queued();                            // spare_frames() of the runs installs queued in spare_q_
  // The home holds a block once (V, or F when V does not hold it), not with a provider that pins F.
  bool home_spares() const;
  void spare_installed(uint32_t first, uint32_t n);  // on the home: mark blocks now in V kSpareFrame
  void lend_frames(uint32_t first, uint32_t n);  // on the home: F holds blocks first..first+n-1 (V -> F) and keeps them
  bool lazy(uint32_t block) const;  // a read-only install leaves it out of V (the read-ahead mark)
  void wake(uint32_t block);
  void arm_timer();
  void reset_copies();
  uint64_t block_off(uint32_t b) const { return uint64_t{b} * block_; }
  uint64_t block_len(uint32_t b) const;
  // Pushes a block the home holds into `g.to`'s frame with the grant as write_notify's message. False: not pushed.
  bool push(Msg& g);
  // Appends the bytes of blocks [first, end) as this node holds them (F, or V where F was released) to the encoder.
  bool append_blocks(Encoder& e, uint32_t first, uint32_t end);
  // The FetchAcks of `out` that offer data (mode kPushed) leave with the block's bytes (kOpAckData), or without the
  // offer when that cannot be sent (the home then copies from this node's frame).
  void send_data_acks(std::vector<Msg>& out);
  uint32_t readahead_blocks() const;  // the read-ahead window cap in blocks (kReadAheadBytes)
  uint32_t writeahead_blocks() const;  // the write-ahead window cap in blocks (kWriteAheadBytes)

  Manager& m_;
  uint64_t id_;
  NodeId home_;
  uint64_t size_, mapped_, block_, chunk_, huge_;
  uint32_t nblocks_;
  UniqueFd view_fd_, frames_fd_;  // frames_fd_ passes to the FramesMapping once F is mapped
  uint8_t* install_ = nullptr;    // hugetlbfs only: dipcd's mapping of V, the target of UFFDIO_COPY
  const uint8_t* view_ro_ = nullptr;  // normal pages: dipcd's read-only mapping of V, source of a push (push_src_view)
  std::vector<unsigned char> incore_;  // view_holds's mincore result
  UniqueFd install_uffd_;         // its userfaultfd (MISSING); nothing ever faults on it
  int frames_fd_num_ = -1;        // the FramesMapping's descriptor (footprint), open while the segment lives
  uint8_t* frames_ = nullptr;
  std::vector<transport::MemRegion> chunks_;  // by chunk index; id 0: not registered yet
  std::shared_ptr<void> frames_map_;          // unmaps F when the last deregistration completed
  NodeCache cache_;
  std::unique_ptr<HomeDirectory> dir_;  // on the home node only
  // Per block: kInView: its pages are in V's page cache; kProtected: write-protected in every attach since the
  // last punch (a punch may drop uffd-wp, drop_view); kDirty: was writable since V was last copied to F;
  // kSpareFrame: F need not keep the copy being installed once it is in V (spare_frames): a read copy the home
  // pushed, or on the home any block in V; kFrameGone: F was punched for it (V holds the node's copy, F holds
  // nothing); kFrameLent (home): a transfer the home does not see the end of may read F (a grant that names the
  // home's frame, a one-sided push): F is kept until the home next holds the block writable; kZeroFill (home): a
  // block never written, granted as a zero fill: V gets zeros, F is not touched (the home's F of a never-written
  // block reads as zeros already).
  enum : uint8_t {
    kInView = 1, kProtected = 2, kDirty = 4, kSpareFrame = 8, kFrameGone = 16, kFrameLent = 32, kZeroFill = 64
  };
  std::vector<uint8_t> flags_;
  bool in_view(uint32_t b) const { return flags_[b] & kInView; }
  std::map<uint64_t, Attach> attaches_;
  std::unordered_map<uint32_t, std::set<uint64_t>> parked_;  // block -> attaches with a fault waiting
  std::vector<std::pair<uint32_t, uint32_t>> spare_q_;  // installed runs with kSpareFrame blocks (first, n)
  // The push on_push() is handling: its blocks' data is in the message, not in F (copy_into_view reads it there).
  struct PushSrc {
    const uint8_t* data = nullptr;
    uint32_t first = 0, n = 0;
    std::vector<bool> used;  // per block of the run: copied into V from the message
  } push_src_;
  bool from_push(uint32_t b) const { return push_src_.data && b >= push_src_.first && b < push_src_.first + push_src_.n; }
  std::set<uint32_t> awaiting_;  // blocks asked of a remote home for a parked fault (answer_poll_us)
  EventLoop::TimerId timer_ = 0;
  int64_t timer_at_ = kNever;
  bool dead_ = false;
  bool shared_ = false;
  // Completions of transport operations may arrive after the segment is destroyed: they check this first.
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

class Manager : public transport::Handler {
 public:
  using SendFn = std::function<void(NodeId to, uint16_t op, Bytes body)>;

  // answer_poll_us: after asking for a block a local process waits on, poll for the answer this long instead of
  // sleeping (the process is blocked anyway; this saves the daemon's wake-up on the fault's critical path).
  Manager(EventLoop& loop, transport::Transport* tr, NodeId self, uint64_t block_size, int64_t quantum_us,
          int64_t answer_poll_us = 0);
  ~Manager() override;

  // The segment `id` on this node; created (empty) if needed. The home creates it at shmget with this node's block
  // size; another node with the block size the home chose (ShmAtResp; 0: this node's own). EINVAL if this node's
  // pages are larger than that block (logged: the cluster's block_size is too small for this node).
  // huge_page: the segment is SHM_HUGETLB, backed by huge pages of that size on every node (ENOMEM when this node
  // cannot reserve them).
  Result<Segment*> open(uint64_t id, NodeId home, uint64_t size, uint64_t home_block = 0, uint64_t huge_page = 0);
  Segment* find(uint64_t id);
  void destroy(uint64_t id);  // the segment is gone cluster-wide (nattch 0 after IPC_RMID)
  size_t count() const { return segs_.size(); }

  // transport::Handler for transport::ops::kDsm (daemon/ registers it).
  void on_message(NodeId from, uint16_t op, ByteView body) override;
  void on_request(NodeId from, uint16_t op, ByteView body, transport::ReplyToken token) override;
  void on_peer(NodeId peer, bool up) override;

  NodeId self() const { return self_; }
  uint64_t page_size() const { return page_; }
  EventLoop& loop() { return loop_; }
  transport::Transport* transport() { return tr_; }
  int64_t quantum_us() const { return quantum_; }
  int64_t answer_poll_us() const { return answer_poll_; }
  Stats& stats() { return stats_; }
  std::string status_text() const;

  // Sends coherence messages: to other nodes over the transport, to this node through a FIFO drained after the
  // current handler (never re-entrantly). A message the transport refuses for lack of resources waits in its
  // pending queue and leaves in order (never dropped); one refused because the link is down is dropped: the
  // protocol recovers through on_peer(node, false).
  void send(std::vector<Msg>& out);
  void send_one(NodeId to, Bytes body);
  // Issues a transport operation to `peer`; when refused for lack of resources, queues it in the transport's
  // pending queue to be issued again (transport/transport.h, BACK-PRESSURE). Other errors are returned.
  Status issue(NodeId peer, std::function<Status()> op);
  using KeyCb = std::function<void(Status, const transport::RemoteKey&, uint64_t chunk_off)>;
  // The key of `node`'s frames chunk of segment `id` that holds byte `offset`, asked once and cached.
  void region_of(uint64_t id, NodeId node, uint64_t offset, KeyCb cb);
  // The cached key (and its chunk offset) covering [offset, offset+len), or nullptr.
  const transport::RemoteKey* cached_region(uint64_t id, NodeId node, uint64_t offset, uint64_t len,
                                            uint64_t& chunk_off) const;
  static int64_t now_us();
  // Runs before this node first makes a block of a segment read-only in its view while local processes may map it
  // (ipc/ sets it: the one-way attach's "shared" word, docs/ARCHITECTURE.md "One-way shmat"). It may apply the
  // local programs' notes, which attach and detach; a segment destroyed meanwhile goes at the end of the loop's
  // iteration (the segment that called it is still at work).
  void set_shared_hook(std::function<void(uint64_t id)> hook) { shared_hook_ = std::move(hook); }
  // Applies the local programs' notes now (ipc/ sets it): a fault at an address no attach of its userfaultfd covers
  // may come from an attach whose note is not read yet (a re-attach registered on a kept userfaultfd). Destruction
  // deferred as for the shared hook.
  void set_notes_hook(std::function<void()> hook) { notes_hook_ = std::move(hook); }
  void notes_first();

 private:
  void drain_local();
  void shared(uint64_t id);  // shared_hook_, with destruction deferred
  std::function<void(uint64_t)> shared_hook_;
  std::function<void()> notes_hook_;
  void hooked(const std::function<void()>& fn);  // runs fn with destruction deferred to the end of the iteration
  int in_shared_hook_ = 0;
  std::vector<uint64_t> deferred_destroy_;
  using ChunkKeys = std::map<uint64_t, transport::RemoteKey>;  // chunk offset -> key

  EventLoop& loop_;
  transport::Transport* tr_;
  NodeId self_;
  uint64_t block_size_;
  uint64_t page_;  // this node's page size
  int64_t quantum_;
  int64_t answer_poll_;
  std::map<uint64_t, std::unique_ptr<Segment>> segs_;
  std::deque<Msg> local_q_;
  bool draining_ = false;
  std::map<std::pair<uint64_t, NodeId>, ChunkKeys> regions_;
  std::map<std::tuple<uint64_t, NodeId, uint64_t>, std::vector<KeyCb>> region_waiters_;  // (id, node, offset)
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // pending_add retries check it
  Stats stats_;
  friend class Segment;
  size_t awaiting_ = 0;  // blocks all segments asked of a remote home for a parked fault
};

}  // namespace dipc::dsm
