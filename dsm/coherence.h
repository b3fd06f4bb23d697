// DSM coherence: the pure state machines of the page-granular multiple-reader/single-writer write-invalidate
// protocol that keeps a distributed System V shared memory segment strictly consistent (docs/ARCHITECTURE.md, "Distributed shared memory").
//
// No I/O, no threads, no clock reads: time is passed in, messages to send and actions on local pages are returned
// in vectors the caller carries out. Two classes:
//  - HomeDirectory runs on the segment's home node (its creator) and is the manager of every block: it knows the
//    block's owner (the node whose frame holds the latest data) and copyset (nodes with a mapped copy), queues the
//    requests for a block and runs one transaction per block at a time.
//  - NodeCache runs on every node that attached the segment, the home included (the home's messages to itself are
//    short-circuited by the caller through a local FIFO, never re-entrantly).
//
// Every node keeps a local frame (the node's backing memory) for every block, registered with the transport. The
// contents of a frame are the latest data of its block while the node maps it (Shared, Exclusive), and also while the
// directory names the node the block's owner; otherwise they are stale and nobody reads them. Page contents never
// travel in control messages: a grant names the node whose frame the requester copies (one-sided read), a writeback
// is a one-sided write into the home's frame.
//
// Caller contract (both classes):
//  - deliver messages per sender in the order they were sent (the transport guarantees it);
//  - set Msg::from on receipt from the authenticated transport peer (it is not encoded);
//  - carry out `local` actions in order, synchronously, BEFORE sending `out`: an invalidation has taken effect in
//    every local process before the acknowledgement leaves (so before the remote writer is granted);
//  - a Fetch the HomeDirectory sends the home node itself with txn 0 (the home's writable copy downgraded for a
//    read-ahead grant, or invalidated for a write-ahead grant; nobody acknowledges it) is given to the home's
//    NodeCache and its local actions carried out at once, before any message that follows it in `out` leaves (the
//    grant after it copies the home's frame);
//  - the asynchronous actions (kFetchData, kWriteBack) report completion by calling on_data_ready() /
//    on_writeback_done(); the state machine sends nothing that depends on them before that.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/wire.h"

namespace dipc::dsm {

using NodeId = uint16_t;
inline constexpr NodeId kNoNode = 0;        // node ids are 1..255 (common/config.h)
inline constexpr NodeId kMaxNodeId = 255;
inline constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

// Page sizes. A block is write-protected, punched out and filled as a whole in every process that maps it, so it
// must be a whole number of pages on every node that attaches the segment, whatever that node's page size: 4 KiB
// (x86, s390x, most arm64), 16 KiB or 64 KiB (ppc64el, some arm64 kernels).
inline constexpr uint64_t kSmallestPage = uint64_t{4} * 1024;  // the smallest page of any Linux port: the smallest block
inline constexpr uint64_t kLargestPage = uint64_t{64} * 1024;  // the largest base page of the Linux ports dipc runs on

// Coherence unit: a power of two, at least kSmallestPage, at most the segment rounded up to a power of two.
bool valid_block_size(uint64_t segment_bytes, uint64_t block_size);
// Number of blocks of a segment (the last one may be partial). 0 if the geometry is invalid or too large.
uint32_t block_count(uint64_t segment_bytes, uint64_t block_size);

// A segment's layout, decided once by its home from its configured `[dsm] block_size` and given to every node that
// attaches it (the home's block travels in the shmat answer, so nodes configured differently still agree). The
// memory is the size rounded up to min(block_size, kLargestPage), and the block is block_size capped at that memory
// rounded up to a power of two (a small segment is one block) but never below that rounding: every node whose page
// size divides block_size (the cluster's [dsm] block_size >= every node's page size) maps it page-aligned.
// Computing it again from the home's block gives the home's layout. Zero `block` if the input is invalid.
// A segment backed by huge pages (SHM_HUGETLB: `huge_page` is their size, a power of two) is rounded up to whole huge
// pages and its block is at least one huge page: hugetlbfs maps, installs and punches whole huge pages only.
struct Geometry {
  uint64_t mapped = 0;  // bytes every attaching process maps
  uint64_t block = 0;   // coherence unit
  uint32_t nblocks = 0;
  uint64_t huge_page = 0;  // 0: normal pages; else the view is a hugetlbfs memfd of pages of this size
};
Geometry segment_geometry(uint64_t size, uint64_t block_size, uint64_t huge_page = 0);
// Whether a node with `page`-byte pages can map a segment of this layout (every block a whole number of pages).
bool fits_page(const Geometry& g, uint64_t page);

enum class Access : uint8_t { kRead = 0, kWrite = 1 };

enum class MsgType : uint16_t {
  // node -> home (HomeDirectory::on_message)
  kReadReq = 1,    // a read fault on a block the node does not map
  kWriteReq = 2,   // a write fault on a block the node does not map writable (also the Shared->Exclusive upgrade)
  kFetchAck = 3,   // the owner carried out a Fetch: downgraded / invalidated (frame stable) / wrote back
  kInvAck = 4,     // a copy holder unmapped its copy
  kDone = 5,       // the requester installed the granted block: closes the transaction
  kLeave = 6,      // the node leaves the segment: write back what only it holds, then LeaveDone
  // home -> node (NodeCache::on_message)
  kFetch = 16,     // to the exclusive owner (or a leaving sole holder): mode says what to do
  kInvalidate = 17,  // to a copy holder
  kGrant = 18,     // to the requester: access, and the node whose frame holds the data
  kLeaveDone = 19,   // the node may drop its frames
  kNoGrant = 20,     // read-/write-ahead: the blocks [block, block+count) of a request's window are not granted now
};
// Which side handles a message type: true for HomeDirectory, false for NodeCache.
bool for_directory(MsgType t);
const char* msg_type_name(MsgType t);

enum class FetchMode : uint8_t {
  kNone = 0,
  kDowngrade = 1,   // read request elsewhere: write-protect, keep a read copy
  kInvalidate = 2,  // write request elsewhere: unmap; the frame stays as is until the requester copied it
  kWriteBack = 3,   // the node leaves: unmap, write the frame into the home's frame, then acknowledge
  kPushed = 4,      // on a Grant, not a Fetch: the home wrote the granted blocks into the requester's frames with it;
                    // on a FetchAck of a downgrade for the home's own read: the block's data came with it into the
                    // home's frame (the home reads it there, not from the owner's frame: one round trip less)
};

// One protocol message. Fixed 24-byte body: type u16, segment u64, block u32, txn u32, access u8, mode u8, node u16,
// count u16.
//
// Read-ahead and batching: a ReadReq with count n > 1 asks for the faulting block and, as read copies, the next n-1
// blocks (the node's read-ahead window). The home grants those of them it can grant at once (no transaction on the
// block, not held exclusively by another node, the data in the home's frame or never written) as read Grants of
// count >= 1 (one message, and with a push one write, per run of consecutive blocks), and answers the first block it
// cannot grant and every one after it with one NoGrant. A read Grant with txn 0 needs no Done: the home recorded the
// copy in the copyset when it granted it (the source is the home's frame, the requester's own, or a zero fill).
// A write Grant in place (node = the requester: the upgrade of its read copy, or its own frame) has txn 0 too: the
// home made the requester the exclusive owner when it granted it; the requester installs it on receipt.
// A Fetch (downgrade) for a read by the home itself (node = the home) is acknowledged with mode kPushed: the caller
// sends the block's data with the FetchAck and delivers it into the home's frame before the home's directory handles
// the ack (Segment: kOpAckData); a caller that cannot clears the mode. The home's frame is then current: the
// directory makes the home the owner and grants the home's read in place (txn 0), where it would have copied the
// block from the owner's frame (a second round trip on the home's read miss).
//
// Write-ahead: a WriteReq with count n > 1 asks for the faulting block and, exclusive, the next n-1 blocks (the
// node's write-ahead window). The home grants at once, as write Grants of count >= 1 with txn 0 (no Done), the
// blocks of the window that need nobody else's acknowledgement and no copy from a third node: no transaction on the
// block, no copy held by any node but the requester (so no invalidation and no quantum to wait for), the data in
// the requester's frame (in place), the home's frame (the home maps no copy of it) or never written (zero fill).
// The home's own writable copy past its quantum does not stand in the way: the home gives it up at once (a Fetch
// kInvalidate to itself with txn 0, carried out like the read-ahead's downgrade), and the grant names its frame.
// The home records the requester the exclusive owner when it grants. It answers the first block it cannot grant
// and every one after it with one NoGrant. A Fetch reaching the requester while such a grant is still being copied
// is carried out once the copy landed (the home's frame it copies from is stable: the home maps no copy).
// A block of the window held by other nodes as read copies only, past its quantum, gets its write transaction
// started at once instead (granted after the acknowledgements, as a write miss); the transactions of one window take
// consecutive txn numbers, and their Invalidates to one holder leave as one Invalidate with count n (block+i belongs
// to txn+i), which the holder acknowledges with one InvAck of count n where it can.
struct Msg {
  NodeId to = 0;    // not encoded: transport addressing
  NodeId from = 0;  // not encoded: the receiver sets it from the authenticated peer
  MsgType type = MsgType::kReadReq;
  uint64_t segment = 0;
  uint32_t block = 0;
  uint32_t txn = 0;                     // the home's transaction number, echoed in FetchAck/InvAck/Done; 0 otherwise
  Access access = Access::kRead;        // Grant: the granted access
  FetchMode mode = FetchMode::kNone;    // Fetch; Grant: kPushed (the data landed in the requester's frames with it)
  NodeId node = kNoNode;                // Grant: data source (kNoNode: zero-fill; the receiver itself: in place);
                                        // Fetch: the requester (informational)
  uint16_t count = 1;                   // ReadReq, WriteReq: the read-/write-ahead window; Grant, NoGrant,
                                        // Invalidate, InvAck: blocks from `block` on

  static constexpr size_t kEncodedSize = 24;
  static constexpr uint16_t kMaxCount = 1024;
  void encode(Encoder& e) const;
  // Strict: the whole input is one message with valid enum values and node ids; `to`/`from` are left untouched.
  bool decode(Decoder& d);
  std::string str() const;
};

// An action the caller applies to the local pages of one block (all pages of the block).
struct LocalAction {
  enum Kind : uint8_t {
    kFetchData,     // async: copy the block from `node`'s frame into the local frame (one-sided read); kNoNode:
                    // zero-fill the local frame. Then call NodeCache::on_data_ready(block).
    kInstall,       // map the local frame into local processes, read-only or writable
    kWriteProtect,  // writable -> read-only in every local process
    kInvalidate,    // unmap from every local process; the frame's contents stay
    kWake,          // resume the accesses parked on this block (they retry and may fault again)
    kWriteBack,     // async: write the local frame into the home's frame (one-sided write). Then call
                    // NodeCache::on_writeback_done(block).
    kLeft,          // the segment was left: every block is Invalid; the frames may be released (block unused)
  };
  Kind kind = kWake;
  uint32_t block = 0;
  bool writable = false;  // kInstall
  NodeId node = kNoNode;  // kFetchData
  bool operator==(const LocalAction&) const = default;
};

// A set of node ids 1..255.
class NodeSet {
 public:
  bool has(NodeId n) const { return n <= kMaxNodeId && (w_[n >> 6] >> (n & 63) & 1); }
  void add(NodeId n) { if (n <= kMaxNodeId) w_[n >> 6] |= uint64_t{1} << (n & 63); }
  void remove(NodeId n) { if (n <= kMaxNodeId) w_[n >> 6] &= ~(uint64_t{1} << (n & 63)); }
  void clear() { w_ = {}; }
  bool empty() const { return (w_[0] | w_[1] | w_[2] | w_[3]) == 0; }
  size_t size() const;
  std::vector<NodeId> members() const;
  bool operator==(const NodeSet&) const = default;

 private:
  std::array<uint64_t, 4> w_{};
};

// ---------------------------------------------------------------------------------------------------------------
class HomeDirectory {
 public:
  HomeDirectory(uint64_t segment, uint32_t nblocks, NodeId home_node, int64_t quantum_us);

  // Requests, acknowledgements, Done, Leave. Messages of other segments or out-of-range blocks are counted and
  // dropped; so are stale acknowledgements (a txn number that is not the block's current transaction).
  void on_message(const Msg& m, int64_t now_us, std::vector<Msg>& out);
  // Starts the transactions whose quantum wait expired.
  void on_timer(int64_t now_us, std::vector<Msg>& out);
  // When on_timer() next has work: the earliest quantum expiry of a waiting transaction, kNever if none.
  int64_t next_timer_us() const;
  // The link to `node` is lost for good (or the node crashed): forget its requests and copies, complete the
  // transactions that waited for it. Blocks only it held are lost: they revert to the home's frame (stale) and are
  // returned so the caller can log them.
  std::vector<uint32_t> on_node_lost(NodeId node, int64_t now_us, std::vector<Msg>& out);

  // ---- introspection (tests, status) ----
  struct BlockView {
    NodeId owner = kNoNode;  // whose frame holds the latest data (kNoNode: never written, all zero)
    bool exclusive = false;  // the owner maps it writable
    NodeSet copyset;         // nodes mapping a copy (the owner included when it maps it)
    int64_t hold_until = 0;  // quantum: no copy is taken away before this (home clock)
    bool busy = false;       // a transaction is in flight or waiting for the quantum
    size_t queued = 0;       // requests waiting behind it
  };
  BlockView block(uint32_t b) const;
  uint32_t nblocks() const { return static_cast<uint32_t>(blocks_.size()); }
  NodeId home() const { return home_; }
  uint64_t bad_messages() const { return bad_; }
  uint64_t lost_blocks() const { return lost_; }
  bool idle() const { return active_.empty(); }
  // Whether a FetchAck with data (mode kPushed) from m.from is the acknowledgement the block's transaction waits for
  // (a downgrade for the home's own read): only then may its data overwrite the home's frame.
  bool wants_data_ack(const Msg& m) const;
  // Checks the directory's own invariants; returns "" or a description of the first violation.
  std::string check() const;

 private:
  enum class Kind : uint8_t { kRead, kWrite, kLeave };
  struct Request {
    Kind kind;
    NodeId node;
  };
  enum class Phase : uint8_t { kIdle, kQuantum, kAcks, kDone };
  struct Txn {
    uint32_t id = 0;
    Phase phase = Phase::kIdle;
    Request req{Kind::kRead, kNoNode};
    NodeSet waiting;           // acknowledgements outstanding
    NodeSet targets;           // every node a Fetch or Invalidate went to
    NodeId fetched = kNoNode;  // the exclusive owner a Fetch went to (or the leaving node written back)
    NodeId source = kNoNode;   // the frame the grant named
    bool home_current = false;  // the downgraded owner's data came into the home's frame with its FetchAck
    bool aborted = false;      // the requester was lost
    int64_t wake_at = 0;
    std::deque<Request> queue;
  };
  struct Block {
    NodeId owner = kNoNode;
    bool exclusive = false;
    NodeSet copyset;
    int64_t hold_until = 0;
  };

  void enqueue(uint32_t b, Request r, int64_t now, std::vector<Msg>& out);
  void pump(uint32_t b, int64_t now, std::vector<Msg>& out);  // start queued transactions while possible
  // Starts the head request; returns false if it finished at once (nothing to wait for).
  bool start(uint32_t b, Txn& t, int64_t now, std::vector<Msg>& out);
  void after_acks(uint32_t b, Txn& t, int64_t now, std::vector<Msg>& out);
  void finish(uint32_t b, Txn& t, int64_t now, std::vector<Msg>& out);
  // The requester `r` holds the block exclusively from now on (a write grant's end: Done, or at once in place).
  void finish_write(Block& k, NodeId r, int64_t now);
  void leave_step_done(NodeId node, std::vector<Msg>& out);
  Msg msg(MsgType type, NodeId to, uint32_t b, uint32_t txn) const;
  // The frame a read copy for `r` is taken from: r's own if current, the home's if current, else the owner's.
  NodeId read_source(const Block& k, NodeId r) const;
  // Whether a read grant from `source` needs the requester's Done (a copy from a third node's frame: if that node is
  // lost mid-copy the home grants again), else the copy is recorded at once.
  bool read_needs_done(NodeId source, NodeId r) const { return source != kNoNode && source != r && source != home_; }
  void record_read_copy(Block& k, NodeId r, int64_t now);
  // Whether a read of block b by r can be granted at once, without a transaction: nothing but the home's own
  // writable copy (past its quantum) stands in the way, and the data comes from the home's or r's frame or is zero.
  bool read_grantable(uint32_t b, NodeId r, int64_t now) const;
  // Grants what it can of the read-ahead window [first, first+n) to `r` at once (see Msg).
  void read_ahead(uint32_t first, uint32_t n, NodeId r, int64_t now, std::vector<Msg>& out);
  // Whether block b (no transaction on it) can be granted exclusive to r at once, without Done (see Msg): no other
  // copy, the data in r's or the home's frame or never written. The frame the grant names in `source`.
  bool write_grantable(uint32_t b, NodeId r, int64_t now, NodeId& source) const;
  // Adds block b, granted to r from `src`, to a window's grants: one Grant per run of consecutive blocks, same source.
  void add_grant(std::vector<Msg>& runs, NodeId r, uint32_t b, NodeId src, Access a) const;
  // Appends a window's grants to `out`, then one NoGrant for [b, end) if the window stopped before its end.
  void end_window(const std::vector<Msg>& runs, NodeId r, uint32_t b, uint32_t end, std::vector<Msg>& out) const;
  // Grants what it can of the write-ahead window [first, first+n) to `r` at once (see Msg).
  void write_ahead(uint32_t first, uint32_t n, NodeId r, int64_t now, std::vector<Msg>& out);

  uint64_t segment_;
  NodeId home_;
  int64_t quantum_;
  std::vector<Block> blocks_;
  std::map<uint32_t, Txn> active_;            // blocks with a transaction in flight or queued
  std::set<std::pair<int64_t, uint32_t>> timers_;  // (wake_at, block) of transactions waiting for the quantum
  std::map<NodeId, uint32_t> leaving_;        // leaving node -> per-block leave steps not finished
  uint32_t next_txn_ = 1;
  uint64_t bad_ = 0;
  uint64_t lost_ = 0;
};

// ---------------------------------------------------------------------------------------------------------------
class NodeCache {
 public:
  // Node-side block states. Stable: Invalid, Shared, Exclusive. Transient (a request is outstanding):
  // IS / IM (Invalid, read / write requested), SM (Shared, upgrade requested), and the fill states IS_D / IM_D
  // (granted, the data copy is in flight; SM upgrades in place, without a fill state).
  enum class State : uint8_t { kInvalid, kShared, kExclusive, kIS, kIM, kSM, kISD, kIMD };
  static const char* state_name(State s);

  enum class Fault : uint8_t {
    kProceed,  // the block already allows the access (the fault raced with an install): retry it now
    kParked,   // park the access until a kWake of this block
  };

  // readahead_max: the largest read-ahead window in blocks (1: none). The window starts at 1 block, doubles on
  // every read miss at the block right after the previous window, and falls back on any other read miss: to 2 blocks
  // when the run that ends went past its first block (a sequential miss in it, or its read-ahead mark reached), else
  // to 1.
  //
  // Read-ahead runs ahead of the reader (as the kernel's page cache does with its PG_readahead mark): every window
  // of more than one block has a mark, its first block no local access asked for (readahead_mark()). The caller
  // installs a mark block like the others but leaves it out of the local processes' mappings, so that the reader's
  // first access to it faults; on_fault() then answers kProceed (the caller maps it) and asks for more windows, each
  // twice as large as the one before up to readahead_max, until `readahead_depth` windows are ahead of the reader
  // (asked for or arrived, their marks not reached yet). A sequential reader so reads one window while the next ones
  // are in flight, instead of waiting a round trip at the end of every window.
  //
  // writeahead_max: the largest write-ahead window in blocks (1: none; the home's own cache never uses one, its
  // requests cost no round trip). The window starts at 1 block, doubles on every write miss at the block right after
  // the previous window, up to writeahead_max, and falls back to 1 on any other write miss. The blocks of the window
  // after the faulting one (those Invalid or Shared here with no request outstanding, up to the first other one) are
  // asked for exclusive in the same WriteReq; granted, they are installed writable at once (the node owns them: a
  // sequential writer goes on without faulting until the end of the window, where its miss asks for the next one).
  NodeCache(uint64_t segment, uint32_t nblocks, NodeId self, NodeId home, uint32_t readahead_max = 1,
            uint32_t readahead_depth = 1, uint32_t writeahead_max = 1);

  // A local access faulted on `block`. Sends a request unless one is already outstanding; a read of the read-ahead
  // mark (held, not mapped yet) asks for the next window.
  Fault on_fault(uint32_t block, Access a, std::vector<Msg>& out);
  // Grant, Invalidate, Fetch, LeaveDone from the home.
  void on_message(const Msg& m, int64_t now_us, std::vector<Msg>& out, std::vector<LocalAction>& local);
  // The kFetchData copy of `block` completed: installs it, wakes the parked accesses, sends Done.
  void on_data_ready(uint32_t block, int64_t now_us, std::vector<Msg>& out, std::vector<LocalAction>& local);
  // The kWriteBack of `block` completed: acknowledges the Fetch.
  void on_writeback_done(uint32_t block, std::vector<Msg>& out);
  // The node leaves the segment (no local process maps it any more). Faults until LeaveDone are parked and retried
  // after it (the node then joins again). The home node never leaves: its frames are the segment's backing store.
  void leave(std::vector<Msg>& out);

  State state(uint32_t block) const;
  bool readable(uint32_t block) const;   // local processes may read (the mapping the caller was told about)
  bool writable(uint32_t block) const;
  int64_t installed_at(uint32_t block) const { return blocks_.at(block).installed_at; }
  bool leaving() const { return leaving_; }
  NodeId self() const { return self_; }
  uint64_t bad_messages() const { return bad_; }
  uint32_t readahead_window() const { return ra_window_; }
  // Whether `block` is the mark of a window ahead of the reader: its first access asks for the next window.
  bool readahead_mark(uint32_t block) const;
  uint64_t prefetched() const { return prefetched_; }  // blocks granted through read-ahead
  uint32_t writeahead_window() const { return wa_window_; }
  uint64_t written_ahead() const { return written_ahead_; }  // blocks granted exclusive through write-ahead

 private:
  enum class Have : uint8_t { kInvalid, kShared, kExclusive };
  struct Block {
    Have have = Have::kInvalid;
    bool pending = false;          // a request is outstanding
    Access pending_access = Access::kRead;
    bool filling = false;          // grant received, data copy in flight
    Access grant_access = Access::kRead;
    uint32_t grant_txn = 0;
    bool writing_back = false;
    uint32_t wb_txn = 0;
    bool prefetch = false;         // the request is a read-ahead (no local access asked for it)
    bool wanted = false;           // a local access faulted on it while the read-ahead was outstanding
    bool inv_deferred = false;     // invalidated while filling a grant without Done: acknowledged once filled
    FetchMode fetch_deferred = FetchMode::kNone;  // a Fetch while filling a write grant without Done: carried out
                                                  // once filled and installed
    uint32_t inv_txn = 0;          // the txn of the deferred Invalidate or Fetch
    int64_t installed_at = 0;
  };
  Msg msg(MsgType type, uint32_t b, uint32_t txn) const;
  void install(uint32_t b, int64_t now, std::vector<Msg>& out, std::vector<LocalAction>& local);
  void grant(uint32_t b, const Msg& m, int64_t now, std::vector<Msg>& out, std::vector<LocalAction>& local);
  // Asks for the windows after the last one until readahead_depth are ahead of the reader (a mark was reached).
  void read_ahead_next(std::vector<Msg>& out);
  bool take_mark(uint32_t b);  // removes `b` from the marks; false if it is none
  // Marks up to `max` blocks from `first` on as asked for by read-ahead (Invalid here) or write-ahead (Invalid or
  // Shared, not a read-ahead mark), up to the first other one (held, asked for already); returns how many.
  uint32_t claim_prefetch(uint32_t first, uint32_t max, Access a = Access::kRead);

  uint64_t segment_;
  NodeId self_;
  NodeId home_;
  std::vector<Block> blocks_;
  bool leaving_ = false;
  std::set<uint32_t> parked_while_leaving_;
  uint64_t bad_ = 0;
  uint32_t ra_max_ = 1;
  uint32_t ra_window_ = 1;
  uint32_t ra_next_ = std::numeric_limits<uint32_t>::max();  // the block after the last window asked for
  uint32_t ra_depth_ = 1;
  bool ra_went_on_ = false;  // the current run went past its first block (a sequential miss, or its mark reached)
  std::vector<uint32_t> ra_marks_;  // the marks of the windows ahead of the reader, oldest first
  uint64_t prefetched_ = 0;
  uint32_t wa_max_ = 1;
  uint32_t wa_window_ = 1;
  uint32_t wa_next_ = std::numeric_limits<uint32_t>::max();  // the block after the last write-ahead window
  uint64_t written_ahead_ = 0;
};

}  // namespace dipc::dsm
