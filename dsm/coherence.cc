// DSM coherence state machines; see coherence.h and docs/ARCHITECTURE.md ("Distributed shared memory").
#include "dsm/coherence.h"

#include <algorithm>
#include <bit>

namespace dipc::dsm {

// ---------------------------------------------------------------------------------------------------------------
// Geometry, names, encoding

bool valid_block_size(uint64_t segment_bytes, uint64_t block_size) {
  if (segment_bytes == 0 || block_size < kSmallestPage || !std::has_single_bit(block_size)) return false;
  uint64_t whole = segment_bytes < kSmallestPage ? kSmallestPage : segment_bytes;
  if (whole > (uint64_t{1} << 62)) return false;
  return block_size <= std::bit_ceil(whole);
}

uint32_t block_count(uint64_t segment_bytes, uint64_t block_size) {
  if (!valid_block_size(segment_bytes, block_size)) return 0;
  uint64_t n = (segment_bytes + block_size - 1) / block_size;
  return n > std::numeric_limits<uint32_t>::max() ? 0 : static_cast<uint32_t>(n);
}

Geometry segment_geometry(uint64_t size, uint64_t block_size, uint64_t huge_page) {
  Geometry g;
  if (block_size < kSmallestPage || !std::has_single_bit(block_size) || size > (uint64_t{1} << 62)) return g;
  if (huge_page && (huge_page < kSmallestPage || !std::has_single_bit(huge_page) || huge_page > (uint64_t{1} << 40)))
    return g;
  uint64_t unit = huge_page ? huge_page : std::min(block_size, kLargestPage);
  uint64_t mapped = (std::max<uint64_t>(size, 1) + unit - 1) / unit * unit;
  uint64_t block = std::clamp(block_size, unit, std::bit_ceil(mapped));
  uint32_t n = block_count(mapped, block);
  if (n == 0) return g;
  return Geometry{mapped, block, n, huge_page};
}

bool fits_page(const Geometry& g, uint64_t page) {
  return g.block != 0 && page != 0 && g.block % page == 0 && g.mapped % page == 0;
}

bool for_directory(MsgType t) { return static_cast<uint16_t>(t) < 16; }

const char* msg_type_name(MsgType t) {
  switch (t) {
    case MsgType::kReadReq: return "ReadReq";
    case MsgType::kWriteReq: return "WriteReq";
    case MsgType::kFetchAck: return "FetchAck";
    case MsgType::kInvAck: return "InvAck";
    case MsgType::kDone: return "Done";
    case MsgType::kLeave: return "Leave";
    case MsgType::kFetch: return "Fetch";
    case MsgType::kInvalidate: return "Invalidate";
    case MsgType::kGrant: return "Grant";
    case MsgType::kLeaveDone: return "LeaveDone";
    case MsgType::kNoGrant: return "NoGrant";
  }
  return "?";
}

static bool valid_type(uint16_t t) {
  return (t >= 1 && t <= 6) || (t >= 16 && t <= 20);
}

void Msg::encode(Encoder& e) const {
  e.u16(static_cast<uint16_t>(type));
  e.u64(segment);
  e.u32(block);
  e.u32(txn);
  e.u8(static_cast<uint8_t>(access));
  e.u8(static_cast<uint8_t>(mode));
  e.u16(node);
  e.u16(count);
}

bool Msg::decode(Decoder& d) {
  uint16_t t = d.u16();
  uint64_t seg = d.u64();
  uint32_t blk = d.u32();
  uint32_t tx = d.u32();
  uint8_t acc = d.u8();
  uint8_t md = d.u8();
  uint16_t nd = d.u16();
  uint16_t cnt = d.u16();
  if (!d.done() || !valid_type(t) || acc > 1 || md > 4 || nd > kMaxNodeId || cnt == 0 || cnt > kMaxCount) return false;
  type = static_cast<MsgType>(t);
  segment = seg;
  block = blk;
  txn = tx;
  access = static_cast<Access>(acc);
  mode = static_cast<FetchMode>(md);
  node = nd;
  count = cnt;
  return true;
}

std::string Msg::str() const {
  std::string s = std::string(msg_type_name(type)) + "(" + std::to_string(from) + "->" + std::to_string(to) +
                  " seg=" + std::to_string(segment) + " b=" + std::to_string(block) + " txn=" + std::to_string(txn);
  if (type == MsgType::kGrant) s += access == Access::kWrite ? " W" : " R";
  if (type == MsgType::kGrant && mode == FetchMode::kPushed) s += " pushed";
  if (type == MsgType::kFetch) s += " mode=" + std::to_string(static_cast<int>(mode));
  if (type == MsgType::kGrant || type == MsgType::kFetch) s += " node=" + std::to_string(node);
  if (count != 1) s += " count=" + std::to_string(count);
  return s + ")";
}

// Merges each Invalidate / InvAck of out[from..] into the message of the same type to the same node right before it in
// that node's order (nothing else to that node in between) when it covers the next block with the next txn number:
// one message per peer for a run of consecutive blocks whose transactions started together.
static void coalesce_runs(std::vector<Msg>& out, size_t from) {
  std::map<NodeId, size_t> last;  // node -> index in the result of its last message
  size_t w = from;
  for (size_t i = from; i < out.size(); ++i) {
    const Msg& m = out[i];
    auto it = last.find(m.to);
    if (it != last.end() && (m.type == MsgType::kInvalidate || m.type == MsgType::kInvAck)) {
      Msg& p = out[it->second];
      if (p.type == m.type && p.segment == m.segment && m.count == 1 && m.block == p.block + p.count &&
          m.txn == p.txn + p.count && p.txn != 0 && p.count < Msg::kMaxCount) {
        ++p.count;
        continue;
      }
    }
    out[w] = m;
    last[m.to] = w++;
  }
  out.resize(w);
}

size_t NodeSet::size() const {
  size_t n = 0;
  for (uint64_t w : w_) n += static_cast<size_t>(std::popcount(w));
  return n;
}

std::vector<NodeId> NodeSet::members() const {
  std::vector<NodeId> v;
  for (size_t i = 0; i < w_.size(); ++i)
    for (uint64_t w = w_[i]; w; w &= w - 1) v.push_back(static_cast<NodeId>(i * 64 + std::countr_zero(w)));
  return v;
}

// ---------------------------------------------------------------------------------------------------------------
// HomeDirectory

HomeDirectory::HomeDirectory(uint64_t segment, uint32_t nblocks, NodeId home_node, int64_t quantum_us)
    : segment_(segment), home_(home_node), quantum_(quantum_us < 0 ? 0 : quantum_us), blocks_(nblocks) {}

Msg HomeDirectory::msg(MsgType type, NodeId to, uint32_t b, uint32_t txn) const {
  Msg m;
  m.to = to;
  m.from = home_;
  m.type = type;
  m.segment = segment_;
  m.block = b;
  m.txn = txn;
  return m;
}

HomeDirectory::BlockView HomeDirectory::block(uint32_t b) const {
  BlockView v;
  const Block& k = blocks_.at(b);
  v.owner = k.owner;
  v.exclusive = k.exclusive;
  v.copyset = k.copyset;
  v.hold_until = k.hold_until;
  auto it = active_.find(b);
  if (it != active_.end()) {
    v.busy = it->second.phase != Phase::kIdle;
    v.queued = it->second.queue.size();
  }
  return v;
}

int64_t HomeDirectory::next_timer_us() const { return timers_.empty() ? kNever : timers_.begin()->first; }

void HomeDirectory::on_message(const Msg& m, int64_t now, std::vector<Msg>& out) {
  if (m.segment != segment_ || m.from == kNoNode || m.from > kMaxNodeId || !for_directory(m.type)) {
    ++bad_;
    return;
  }
  if (m.type == MsgType::kLeave) {
    if (m.from == home_ || leaving_.count(m.from)) {
      ++bad_;
      return;
    }
    // One leave step per block the node is involved in, queued behind the requests already there (per-sender FIFO:
    // the node's own earlier requests are served first, then written back).
    std::vector<uint32_t> steps;
    for (uint32_t b = 0; b < blocks_.size(); ++b) {
      const Block& k = blocks_[b];
      bool involved = k.owner == m.from || k.copyset.has(m.from);
      if (!involved) {
        auto it = active_.find(b);
        if (it != active_.end()) {
          const Txn& t = it->second;
          involved = (t.phase != Phase::kIdle && t.req.node == m.from) ||
                     std::any_of(t.queue.begin(), t.queue.end(), [&](const Request& r) { return r.node == m.from; });
        }
      }
      if (involved) steps.push_back(b);
    }
    if (steps.empty()) {
      out.push_back(msg(MsgType::kLeaveDone, m.from, 0, 0));
      return;
    }
    leaving_[m.from] = static_cast<uint32_t>(steps.size());
    for (uint32_t b : steps) enqueue(b, Request{Kind::kLeave, m.from}, now, out);
    return;
  }
  if (m.block >= blocks_.size()) {
    ++bad_;
    return;
  }
  uint32_t b = m.block;
  switch (m.type) {
    case MsgType::kReadReq:
    case MsgType::kWriteReq:
      if (leaving_.count(m.from)) {  // a leaving node sends none; it retries after LeaveDone
        ++bad_;
        return;
      }
      if (m.type == MsgType::kWriteReq) {
        // A window of one block (a random writer, or the home's own) takes the transaction path as always; a larger
        // one is granted at once where nobody else is involved (write_ahead), the faulting block included.
        uint32_t n = m.from == home_ ? 1 : std::min<uint32_t>(m.count, static_cast<uint32_t>(blocks_.size()) - b);
        NodeId src = kNoNode;
        size_t first_out = out.size();
        if (n > 1 && active_.count(b) == 0 && write_grantable(b, m.from, now, src)) {
          write_ahead(b, n, m.from, now, out);
        } else {
          enqueue(b, Request{Kind::kWrite, m.from}, now, out);
          if (n > 1) write_ahead(b + 1, n - 1, m.from, now, out);
        }
        coalesce_runs(out, first_out);  // the invalidations of the window's transactions: one per holder and run
        return;
      } else {
        // The window never reaches past the segment; a read the home can grant at once needs no transaction.
        uint32_t n = std::min<uint32_t>(m.count, static_cast<uint32_t>(blocks_.size()) - b);
        if (active_.count(b) == 0 && read_grantable(b, m.from, now)) {
          read_ahead(b, n, m.from, now, out);
        } else {
          enqueue(b, Request{Kind::kRead, m.from}, now, out);
          if (n > 1) read_ahead(b + 1, n - 1, m.from, now, out);
        }
      }
      return;
    case MsgType::kFetchAck:
    case MsgType::kInvAck: {
      // An InvAck of a run acknowledges the Invalidate of a run: block b+i, transaction txn+i.
      uint32_t n = m.type == MsgType::kInvAck ? m.count : 1;
      if (n > blocks_.size() - b) {
        ++bad_;
        return;
      }
      for (uint32_t i = 0; i < n; ++i) {
        auto it = active_.find(b + i);
        if (it == active_.end() || it->second.phase != Phase::kAcks || it->second.id != m.txn + i ||
            !it->second.waiting.has(m.from)) {
          ++bad_;
          continue;
        }
        Txn& t = it->second;
        if (m.type == MsgType::kFetchAck && m.mode == FetchMode::kPushed && wants_data_ack(m)) t.home_current = true;
        t.waiting.remove(m.from);
        if (t.waiting.empty()) {
          after_acks(b + i, t, now, out);
          if (t.phase == Phase::kIdle) pump(b + i, now, out);
        }
      }
      return;
    }
    case MsgType::kDone: {
      auto it = active_.find(b);
      if (it == active_.end() || it->second.phase != Phase::kDone || it->second.id != m.txn ||
          it->second.req.node != m.from) {
        ++bad_;
        return;
      }
      finish(b, it->second, now, out);
      return;
    }
    default:
      ++bad_;
      return;
  }
}

bool HomeDirectory::wants_data_ack(const Msg& m) const {
  if (m.segment != segment_ || m.type != MsgType::kFetchAck || m.block >= blocks_.size()) return false;
  auto it = active_.find(m.block);
  if (it == active_.end()) return false;
  const Txn& t = it->second;
  return t.phase == Phase::kAcks && t.id == m.txn && t.req.kind == Kind::kRead && t.req.node == home_ &&
         t.fetched == m.from && t.waiting.has(m.from) && m.from != home_;
}

void HomeDirectory::enqueue(uint32_t b, Request r, int64_t now, std::vector<Msg>& out) {
  Txn& t = active_[b];
  t.queue.push_back(r);
  if (t.phase == Phase::kIdle) pump(b, now, out);
}

void HomeDirectory::pump(uint32_t b, int64_t now, std::vector<Msg>& out) {
  auto it = active_.find(b);
  if (it == active_.end()) return;
  Txn& t = it->second;
  while (t.phase == Phase::kIdle) {
    if (t.queue.empty()) {
      active_.erase(it);
      return;
    }
    t.req = t.queue.front();
    t.queue.pop_front();
    t.id = next_txn_++;
    if (next_txn_ == 0) next_txn_ = 1;
    t.waiting.clear();
    t.targets.clear();
    t.fetched = kNoNode;
    t.source = kNoNode;
    t.home_current = false;
    t.aborted = false;
    if (!start(b, t, now, out)) t.phase = Phase::kIdle;
  }
}

// Sends what the head request needs: nothing but a grant, or fetch/invalidations first (after the quantum).
bool HomeDirectory::start(uint32_t b, Txn& t, int64_t now, std::vector<Msg>& out) {
  Block& k = blocks_[b];
  const NodeId r = t.req.node;
  if (t.aborted) return false;
  switch (t.req.kind) {
    case Kind::kRead: {
      if (k.exclusive && k.owner != r) {
        if (now < k.hold_until) {
          t.phase = Phase::kQuantum;
          t.wake_at = k.hold_until;
          timers_.insert({t.wake_at, b});
          return true;
        }
        Msg f = msg(MsgType::kFetch, k.owner, b, t.id);
        f.mode = FetchMode::kDowngrade;
        f.node = r;
        out.push_back(f);
        t.waiting.add(k.owner);
        t.targets.add(k.owner);
        t.fetched = k.owner;
        t.phase = Phase::kAcks;
        return true;
      }
      t.phase = Phase::kAcks;  // nothing to wait for
      after_acks(b, t, now, out);
      return t.phase != Phase::kIdle;
    }
    case Kind::kWrite: {
      NodeSet need = k.copyset;
      need.remove(r);
      if (!need.empty()) {
        if (now < k.hold_until) {
          t.phase = Phase::kQuantum;
          t.wake_at = k.hold_until;
          timers_.insert({t.wake_at, b});
          return true;
        }
        for (NodeId n : need.members()) {
          if (k.exclusive && n == k.owner) {
            Msg f = msg(MsgType::kFetch, n, b, t.id);
            f.mode = FetchMode::kInvalidate;
            f.node = r;
            out.push_back(f);
            t.fetched = n;
          } else {
            out.push_back(msg(MsgType::kInvalidate, n, b, t.id));
          }
        }
        t.waiting = need;
        t.targets = need;
        t.phase = Phase::kAcks;
        return true;
      }
      t.phase = Phase::kAcks;
      after_acks(b, t, now, out);
      return t.phase != Phase::kIdle;
    }
    case Kind::kLeave: {  // no quantum: the leaving node has no process left that could use the block
      NodeSet others = k.copyset;
      others.remove(r);
      if (k.owner == r && others.empty()) {
        // The only holder of the latest data: it writes the block back into the home's frame.
        Msg f = msg(MsgType::kFetch, r, b, t.id);
        f.mode = FetchMode::kWriteBack;
        f.node = home_;
        out.push_back(f);
        t.fetched = r;
      } else if (k.copyset.has(r)) {
        // A read copy of data others hold: another holder becomes the owner, nothing moves; the copy is unmapped
        // like any other (so no stale mapping outlives the directory's record of it).
        if (k.owner == r) k.owner = others.has(home_) ? home_ : others.members().front();
        out.push_back(msg(MsgType::kInvalidate, r, b, t.id));
      } else {
        leave_step_done(r, out);
        return false;
      }
      t.waiting.add(r);
      t.targets.add(r);
      t.phase = Phase::kAcks;
      return true;
    }
  }
  return false;
}

void HomeDirectory::after_acks(uint32_t b, Txn& t, int64_t now, std::vector<Msg>& out) {
  Block& k = blocks_[b];
  const NodeId r = t.req.node;
  switch (t.req.kind) {
    case Kind::kRead:
      if (t.fetched != kNoNode) k.exclusive = false;  // the owner downgraded to a read copy (or was lost)
      // Its data came with the acknowledgement: the home's frame is current, the home reads it in place.
      if (t.home_current && k.owner == t.fetched && k.copyset.has(t.fetched)) k.owner = home_;
      break;
    case Kind::kWrite:
      for (NodeId n : t.targets.members()) k.copyset.remove(n);
      if (k.exclusive && k.owner != r) k.exclusive = false;  // the owner's frame keeps the data, unmapped
      if (k.copyset.has(r)) k.owner = r;                      // upgrade in place: its copy is the data
      break;
    case Kind::kLeave:
      if (k.owner == r) {  // written back (had the node been lost meanwhile, on_node_lost moved the owner)
        k.owner = home_;
        k.exclusive = false;
      }
      k.copyset.remove(r);
      t.phase = Phase::kIdle;
      leave_step_done(r, out);
      return;
  }
  if (t.aborted) {  // the requester was lost: the invalidations stand, nothing is granted
    t.phase = Phase::kIdle;
    return;
  }
  Msg g = msg(MsgType::kGrant, r, b, t.id);
  if (t.req.kind == Kind::kWrite) {
    g.access = Access::kWrite;
    // In place when the requester's frame is current (it maps a copy, or it is the owner); else the owner's frame;
    // kNoNode (zero-fill) for a block never written.
    t.source = (k.copyset.has(r) || k.owner == r) ? r : k.owner;
    if (t.source == r && r != home_) {
      // In place (the upgrade of a read copy, or the owner's own frame): nothing is copied, so nothing can go
      // wrong between the grant and the install that the home must wait for. Recorded now, no Done (the
      // requester installs on receipt, so every later Fetch or Invalidate of the block reaches it after the
      // install: messages per sender arrive in order). This saves the requester's send and the home's wake-up.
      // Not for the home itself: its txn-0 downgrade for a read-ahead grant is carried out at once, ahead of a
      // grant still in its local FIFO, so the home's own write stays open until its Done.
      g.txn = 0;
      g.node = r;
      out.push_back(g);
      t.phase = Phase::kIdle;
      finish_write(k, r, now);
      return;
    }
  } else if (k.exclusive && k.owner == r) {
    g.access = Access::kWrite;  // defensive: it already has it
    t.source = r;
  } else {
    g.access = Access::kRead;
    t.source = read_source(k, r);
    if (!read_needs_done(t.source, r)) {  // recorded now: the requester sends no Done
      g.txn = 0;
      g.node = t.source;
      record_read_copy(k, r, now);
      out.push_back(g);
      t.phase = Phase::kIdle;
      return;
    }
  }
  g.node = t.source;
  out.push_back(g);
  t.phase = Phase::kDone;
}

NodeId HomeDirectory::read_source(const Block& k, NodeId r) const {
  if (k.copyset.has(r) || k.owner == r) return r;
  if (k.owner == kNoNode) return kNoNode;
  // The home's frame is current when it owns the block or maps a read copy (the block is not exclusive here).
  if (k.owner == home_ || k.copyset.has(home_)) return home_;
  return k.owner;
}

void HomeDirectory::record_read_copy(Block& k, NodeId r, int64_t now) {
  if (k.owner == kNoNode) k.owner = home_;  // never written: the home's frame holds its zeros
  k.copyset.add(r);
  // The quantum counts from the grant here, not from the install (the home learns nothing of it).
  k.hold_until = std::max(k.hold_until, now + quantum_);
}

bool HomeDirectory::read_grantable(uint32_t b, NodeId r, int64_t now) const {
  const Block& k = blocks_[b];
  if (k.exclusive && !(k.owner == home_ && r != home_ && now >= k.hold_until)) return false;
  return !read_needs_done(k.exclusive ? home_ : read_source(k, r), r);
}

// The home's own downgrades first, then one grant per run of consecutive blocks with the same source, then the
// refusal of the rest.
void HomeDirectory::read_ahead(uint32_t first, uint32_t n, NodeId r, int64_t now, std::vector<Msg>& out) {
  uint32_t b = first, end = first + n;
  std::vector<Msg> runs;
  for (; b < end; ++b) {
    if (active_.count(b) || !read_grantable(b, r, now)) break;
    Block& k = blocks_[b];
    if (k.exclusive) {  // the home's own writable copy: write-protect it, its frame gets the data (no ack)
      Msg f = msg(MsgType::kFetch, home_, b, 0);
      f.mode = FetchMode::kDowngrade;
      f.node = r;
      out.push_back(f);
      k.exclusive = false;
    }
    NodeId src = read_source(k, r);
    record_read_copy(k, r, now);
    add_grant(runs, r, b, src, Access::kRead);
  }
  end_window(runs, r, b, end, out);
}

void HomeDirectory::add_grant(std::vector<Msg>& runs, NodeId r, uint32_t b, NodeId src, Access a) const {
  if (!runs.empty() && runs.back().node == src && runs.back().block + runs.back().count == b &&
      runs.back().count < Msg::kMaxCount) {
    ++runs.back().count;
    return;
  }
  Msg g = msg(MsgType::kGrant, r, b, 0);
  g.access = a;
  g.node = src;
  runs.push_back(g);
}

void HomeDirectory::end_window(const std::vector<Msg>& runs, NodeId r, uint32_t b, uint32_t end,
                               std::vector<Msg>& out) const {
  out.insert(out.end(), runs.begin(), runs.end());
  if (b < end) {
    Msg no = msg(MsgType::kNoGrant, r, b, 0);
    no.count = static_cast<uint16_t>(end - b);
    out.push_back(no);
  }
}

bool HomeDirectory::write_grantable(uint32_t b, NodeId r, int64_t now, NodeId& source) const {
  const Block& k = blocks_[b];
  NodeSet others = k.copyset;
  others.remove(r);
  // The home's own writable copy past its quantum is taken back at once (write_ahead), as read_ahead downgrades it:
  // the home installed it before its Done, so no grant of it is still on its way to the home's cache. A read copy of
  // the home's may be (a read-ahead grant without Done): like any other copy, it needs the transaction path.
  bool home_only = k.exclusive && k.owner == home_ && r != home_ && now >= k.hold_until;
  if (!others.empty() && !home_only) return false;  // an invalidation (and its quantum) first: the transaction path
  if (home_only) {
    source = home_;
    return true;
  }
  source = (k.copyset.has(r) || k.owner == r) ? r : k.owner;
  // The home's frame is stable while the requester copies it: the home maps no copy, and every later transaction
  // on the block starts with a Fetch the requester carries out once its copy landed.
  return source == r || source == home_ || source == kNoNode;
}

// The home's own invalidations first, then one grant per run of consecutive blocks with the same source, then the
// refusal of the rest.
void HomeDirectory::write_ahead(uint32_t first, uint32_t n, NodeId r, int64_t now, std::vector<Msg>& out) {
  uint32_t b = first, end = first + n;
  std::vector<Msg> runs;
  for (; b < end; ++b) {
    NodeId src = kNoNode;
    if (active_.count(b)) break;
    if (!write_grantable(b, r, now, src)) {
      // Read copies elsewhere, past their quantum: a write transaction for r starts now and invalidates them (its
      // Invalidates, sent together with those of the next such blocks, are merged per holder: coalesce_runs); r
      // gets its grant after the acknowledgements, as for a write miss.
      const Block& k = blocks_[b];
      if ((k.exclusive && k.owner != r) || now < k.hold_until) break;
      enqueue(b, Request{Kind::kWrite, r}, now, out);
      continue;
    }
    Block& k = blocks_[b];
    if (k.exclusive && k.owner == home_) {  // the home's writable copy: unmapped there, its frame gets the data
      Msg f = msg(MsgType::kFetch, home_, b, 0);
      f.mode = FetchMode::kInvalidate;
      f.node = r;
      out.push_back(f);
    }
    finish_write(k, r, now);
    add_grant(runs, r, b, src, Access::kWrite);
  }
  end_window(runs, r, b, end, out);
}

void HomeDirectory::finish_write(Block& k, NodeId r, int64_t now) {
  k.owner = r;
  k.exclusive = true;
  k.copyset.clear();
  k.copyset.add(r);
  k.hold_until = std::max(k.hold_until, now + quantum_);
}

void HomeDirectory::finish(uint32_t b, Txn& t, int64_t now, std::vector<Msg>& out) {
  Block& k = blocks_[b];
  const NodeId r = t.req.node;
  if (t.req.kind == Kind::kWrite) {
    finish_write(k, r, now);
  } else if (!(k.exclusive && k.owner == r)) {
    if (!k.copyset.has(k.owner)) k.owner = r;  // never written, or the owner's frame was only parked there
    k.copyset.add(r);
  }
  k.hold_until = std::max(k.hold_until, now + quantum_);
  t.phase = Phase::kIdle;
  pump(b, now, out);
}

void HomeDirectory::on_timer(int64_t now, std::vector<Msg>& out) {
  while (!timers_.empty() && timers_.begin()->first <= now) {
    uint32_t b = timers_.begin()->second;
    timers_.erase(timers_.begin());
    auto it = active_.find(b);
    if (it == active_.end() || it->second.phase != Phase::kQuantum) continue;
    Txn& t = it->second;
    t.phase = Phase::kIdle;
    if (!start(b, t, now, out)) t.phase = Phase::kIdle;
    if (t.phase == Phase::kIdle) pump(b, now, out);
  }
}

void HomeDirectory::leave_step_done(NodeId node, std::vector<Msg>& out) {
  auto it = leaving_.find(node);
  if (it == leaving_.end()) return;
  if (--it->second == 0) {
    leaving_.erase(it);
    out.push_back(msg(MsgType::kLeaveDone, node, 0, 0));
  }
}

std::vector<uint32_t> HomeDirectory::on_node_lost(NodeId node, int64_t now, std::vector<Msg>& out) {
  std::vector<uint32_t> lost;
  leaving_.erase(node);
  for (uint32_t b = 0; b < blocks_.size(); ++b) {
    Block& k = blocks_[b];
    k.copyset.remove(node);
    if (k.owner == node) {
      if (!k.copyset.empty() && !k.exclusive) {
        k.owner = k.copyset.has(home_) ? home_ : k.copyset.members().front();
      } else {  // nobody else has the latest data: the home's frame (stale) stands in for it
        k.owner = home_;
        k.exclusive = false;
        k.copyset.clear();
        ++lost_;
        lost.push_back(b);
      }
    }
  }
  std::vector<uint32_t> touched;
  for (auto& [b, t] : active_) {
    auto& q = t.queue;
    q.erase(std::remove_if(q.begin(), q.end(), [&](const Request& r) { return r.node == node; }), q.end());
    if (t.phase != Phase::kIdle && t.req.node == node) t.aborted = true;
    touched.push_back(b);
  }
  for (uint32_t b : touched) {
    auto it = active_.find(b);
    if (it == active_.end()) continue;
    Txn& t = it->second;
    switch (t.phase) {
      case Phase::kIdle:
        break;
      case Phase::kQuantum:
        if (t.aborted) {
          timers_.erase({t.wake_at, b});
          t.phase = Phase::kIdle;
        }
        break;
      case Phase::kAcks:
        if (t.waiting.has(node)) {
          t.waiting.remove(node);
          if (t.waiting.empty()) after_acks(b, t, now, out);
        }
        break;
      case Phase::kDone:
        if (t.aborted) {
          t.phase = Phase::kIdle;  // the grant went to the lost node: the block stays where it was
        } else if (t.source == node) {
          // The requester was copying from the lost node's frame: grant again from the home's frame (same txn).
          Msg g = msg(MsgType::kGrant, t.req.node, b, t.id);
          g.access = t.req.kind == Kind::kWrite ? Access::kWrite : Access::kRead;
          t.source = (blocks_[b].copyset.has(t.req.node) || blocks_[b].owner == t.req.node) ? t.req.node
                                                                                             : blocks_[b].owner;
          g.node = t.source;
          out.push_back(g);
        }
        break;
    }
    if (t.phase == Phase::kIdle) pump(b, now, out);
  }
  return lost;
}

std::string HomeDirectory::check() const {
  for (uint32_t b = 0; b < blocks_.size(); ++b) {
    const Block& k = blocks_[b];
    std::string where = "block " + std::to_string(b) + ": ";
    if (k.copyset.has(kNoNode)) return where + "node 0 in copyset";
    if (k.exclusive) {
      if (k.owner == kNoNode) return where + "exclusive without owner";
      NodeSet only;
      only.add(k.owner);
      if (!(k.copyset == only)) return where + "exclusive but copyset is not {owner}";
    } else if (!k.copyset.empty() && !k.copyset.has(k.owner) && k.owner != home_) {
      return where + "owner " + std::to_string(k.owner) + " outside a non-empty copyset";
    }
    if (k.owner == kNoNode && !k.copyset.empty()) return where + "copies of a never-written block without owner";
  }
  return "";
}

// ---------------------------------------------------------------------------------------------------------------
// NodeCache

NodeCache::NodeCache(uint64_t segment, uint32_t nblocks, NodeId self, NodeId home, uint32_t readahead_max,
                     uint32_t readahead_depth, uint32_t writeahead_max)
    : segment_(segment),
      self_(self),
      home_(home),
      blocks_(nblocks),
      ra_max_(std::clamp<uint32_t>(readahead_max, 1, Msg::kMaxCount)),
      ra_depth_(std::clamp<uint32_t>(readahead_depth, 1, 8)),
      wa_max_(self == home ? 1 : std::clamp<uint32_t>(writeahead_max, 1, Msg::kMaxCount)) {}

bool NodeCache::readahead_mark(uint32_t b) const {
  return std::find(ra_marks_.begin(), ra_marks_.end(), b) != ra_marks_.end();
}

bool NodeCache::take_mark(uint32_t b) {
  auto it = std::find(ra_marks_.begin(), ra_marks_.end(), b);
  if (it == ra_marks_.end()) return false;
  ra_marks_.erase(it);
  return true;
}

const char* NodeCache::state_name(State s) {
  switch (s) {
    case State::kInvalid: return "I";
    case State::kShared: return "S";
    case State::kExclusive: return "E";
    case State::kIS: return "IS";
    case State::kIM: return "IM";
    case State::kSM: return "SM";
    case State::kISD: return "IS_D";
    case State::kIMD: return "IM_D";
  }
  return "?";
}

NodeCache::State NodeCache::state(uint32_t b) const {
  const Block& k = blocks_.at(b);
  if (k.filling) return k.grant_access == Access::kWrite ? State::kIMD : State::kISD;
  if (k.pending) {
    if (k.have == Have::kShared) return State::kSM;
    return k.pending_access == Access::kWrite ? State::kIM : State::kIS;
  }
  switch (k.have) {
    case Have::kInvalid: return State::kInvalid;
    case Have::kShared: return State::kShared;
    case Have::kExclusive: return State::kExclusive;
  }
  return State::kInvalid;
}

bool NodeCache::readable(uint32_t b) const { return blocks_.at(b).have != Have::kInvalid; }
bool NodeCache::writable(uint32_t b) const { return blocks_.at(b).have == Have::kExclusive; }

Msg NodeCache::msg(MsgType type, uint32_t b, uint32_t txn) const {
  Msg m;
  m.to = home_;
  m.from = self_;
  m.type = type;
  m.segment = segment_;
  m.block = b;
  m.txn = txn;
  return m;
}

NodeCache::Fault NodeCache::on_fault(uint32_t b, Access a, std::vector<Msg>& out) {
  if (b >= blocks_.size()) {
    ++bad_;
    return Fault::kParked;
  }
  Block& k = blocks_[b];
  if (a == Access::kRead ? k.have != Have::kInvalid : k.have == Have::kExclusive) {
    if (a == Access::kRead && take_mark(b)) {
      ra_went_on_ = true;
      read_ahead_next(out);
    }
    return Fault::kProceed;
  }
  if (leaving_) {
    parked_while_leaving_.insert(b);
    return Fault::kParked;
  }
  // One request per block at a time. A write fault behind an outstanding read request is retried when the read
  // grant wakes it, and then asks for the upgrade.
  if (k.pending) {
    if (k.prefetch) k.wanted = true;  // the mark: its grant asks for the next window (grant())
    return Fault::kParked;
  }
  k.pending = true;
  k.pending_access = a;
  Msg req = msg(a == Access::kRead ? MsgType::kReadReq : MsgType::kWriteReq, b, 0);
  if (a == Access::kRead && ra_max_ > 1) {
    // A new run starts with 2 blocks when the reader went past the first block of the run before (a row of two
    // blocks read at every sweep of a stencil: one round trip, not two); else with 1 (a random reader).
    if (b == ra_next_) {
      ra_window_ = std::min(ra_window_ * 2, ra_max_);
      ra_went_on_ = true;
    } else {
      ra_window_ = ra_went_on_ ? std::min<uint32_t>(2, ra_max_) : 1;
      ra_went_on_ = false;
    }
    uint32_t n = 1 + claim_prefetch(b + 1, ra_window_ - 1);
    req.count = static_cast<uint16_t>(n);
    ra_next_ = b + n;
    ra_marks_.clear();  // a new run starts here (or the reader outran the windows ahead of it)
    if (n > 1) ra_marks_.push_back(b + 1);
  }
  if (a == Access::kWrite && wa_max_ > 1) {
    wa_window_ = b == wa_next_ ? std::min(wa_window_ * 2, wa_max_) : 1;
    uint32_t n = 1 + claim_prefetch(b + 1, wa_window_ - 1, Access::kWrite);
    req.count = static_cast<uint16_t>(n);
    wa_next_ = b + n;
  }
  out.push_back(req);
  return Fault::kParked;
}

uint32_t NodeCache::claim_prefetch(uint32_t first, uint32_t max, Access a) {
  uint32_t n = 0;
  for (; n < max && first + n < blocks_.size(); ++n) {
    Block& x = blocks_[first + n];
    bool claimable = a == Access::kRead ? x.have == Have::kInvalid
                                        : x.have != Have::kExclusive && !readahead_mark(first + n);
    if (!claimable || x.pending || x.filling || x.writing_back) break;
    x.pending = true;
    x.pending_access = a;
    x.prefetch = true;
    x.wanted = false;
  }
  return n;
}

void NodeCache::read_ahead_next(std::vector<Msg>& out) {
  while (!leaving_ && ra_marks_.size() < ra_depth_ && ra_next_ < blocks_.size()) {
    uint32_t w = std::min(ra_window_ * 2, ra_max_), first = ra_next_, n = claim_prefetch(first, w);
    if (n == 0) return;  // the next block is held or asked for already: a miss past it starts over
    ra_window_ = w;
    ra_next_ = first + n;
    ra_marks_.push_back(first);
    Msg req = msg(MsgType::kReadReq, first, 0);
    req.count = static_cast<uint16_t>(n);
    out.push_back(req);
  }
}

void NodeCache::install(uint32_t b, int64_t now, std::vector<Msg>& out, std::vector<LocalAction>& local) {
  Block& k = blocks_[b];
  bool w = k.grant_access == Access::kWrite;
  k.have = w ? Have::kExclusive : Have::kShared;
  k.filling = false;
  k.pending = false;
  k.installed_at = now;
  local.push_back(LocalAction{LocalAction::kInstall, b, w, kNoNode});
  local.push_back(LocalAction{LocalAction::kWake, b, false, kNoNode});
  if (k.grant_txn) out.push_back(msg(MsgType::kDone, b, k.grant_txn));  // txn 0: the home recorded the copy
}

void NodeCache::grant(uint32_t b, const Msg& m, int64_t now, std::vector<Msg>& out, std::vector<LocalAction>& local) {
  Block& k = blocks_[b];
  if (k.filling && m.txn != 0 && m.txn == k.grant_txn) {  // re-grant: the first source was lost; copy from the new one
    if (m.node == self_) {
      install(b, now, out, local);
    } else {
      local.push_back(LocalAction{LocalAction::kFetchData, b, false, m.node});
    }
    return;
  }
  if (!k.pending || k.filling) {
    ++bad_;
    return;
  }
  if (k.prefetch) ++(k.pending_access == Access::kWrite ? written_ahead_ : prefetched_);
  bool mark_reached = k.wanted && take_mark(b);  // the reader waits on the mark already: no fault will tell
  if (mark_reached) ra_went_on_ = true;
  k.prefetch = k.wanted = false;
  if (mark_reached) read_ahead_next(out);
  k.filling = true;
  k.grant_access = m.access;
  k.grant_txn = m.txn;
  if (m.node == self_) {
    install(b, now, out, local);  // the local frame is current: no copy
  } else {
    local.push_back(LocalAction{LocalAction::kFetchData, b, false, m.node});
  }
}

void NodeCache::on_message(const Msg& m, int64_t now, std::vector<Msg>& out, std::vector<LocalAction>& local) {
  if (m.segment != segment_ || m.from != home_ || for_directory(m.type)) {
    ++bad_;
    return;
  }
  if (m.type == MsgType::kLeaveDone) {
    if (!leaving_) {
      ++bad_;
      return;
    }
    for (uint32_t b = 0; b < blocks_.size(); ++b) {
      Block& k = blocks_[b];
      if (k.have != Have::kInvalid) local.push_back(LocalAction{LocalAction::kInvalidate, b, false, kNoNode});
      if (k.pending || k.filling || k.writing_back) ++bad_;
      k = Block{};
    }
    local.push_back(LocalAction{LocalAction::kLeft, 0, false, kNoNode});
    leaving_ = false;
    for (uint32_t b : parked_while_leaving_) local.push_back(LocalAction{LocalAction::kWake, b, false, kNoNode});
    parked_while_leaving_.clear();
    return;
  }
  if (m.block >= blocks_.size() || m.count > blocks_.size() - m.block) {
    ++bad_;
    return;
  }
  const uint32_t b = m.block;
  Block& k = blocks_[b];
  switch (m.type) {
    case MsgType::kGrant:
      if (m.count > 1 && m.txn != 0) {  // a run is read-ahead or write-ahead grants without Done only
        ++bad_;
        return;
      }
      for (uint32_t i = 0; i < m.count; ++i) grant(b + i, m, now, out, local);
      return;
    case MsgType::kNoGrant:
      for (uint32_t x = b; x < b + m.count; ++x) {
        Block& p = blocks_[x];
        if (!p.pending || !p.prefetch || p.filling) {
          ++bad_;
          continue;
        }
        p.prefetch = false;
        if (!p.wanted) {
          p.pending = false;
        } else if (leaving_) {  // asked again after LeaveDone
          p.pending = p.wanted = false;
          parked_while_leaving_.insert(x);
        } else {  // a local access waits for it: ask for it alone now
          p.wanted = false;
          out.push_back(msg(p.pending_access == Access::kWrite ? MsgType::kWriteReq : MsgType::kReadReq, x, 0));
        }
      }
      return;
    case MsgType::kInvalidate:
      if (m.count > 1) {  // a run: block b+i of transaction txn+i each, acknowledged together where possible
        if (m.txn == 0) {
          ++bad_;
          return;
        }
        size_t first_out = out.size();
        Msg one = m;
        one.count = 1;
        for (uint32_t i = 0; i < m.count; ++i, ++one.block, ++one.txn) on_message(one, now, out, local);
        coalesce_runs(out, first_out);
        return;
      }
      if (k.filling && k.grant_txn == 0 && !k.inv_deferred) {
        // A read copy granted without Done is still being copied: acknowledged once the copy landed (so the source
        // frame is not reused before), and then not installed (on_data_ready).
        k.inv_deferred = true;
        k.inv_txn = m.txn;
        return;
      }
      if (k.filling) ++bad_;
      if (k.have != Have::kInvalid) {
        if (k.have == Have::kExclusive) ++bad_;  // the home fetches from an exclusive owner; unmap anyway
        local.push_back(LocalAction{LocalAction::kInvalidate, b, false, kNoNode});
        k.have = Have::kInvalid;
      }
      out.push_back(msg(MsgType::kInvAck, b, m.txn));
      return;
    case MsgType::kFetch:
      if (k.filling && k.grant_txn == 0 && k.grant_access == Access::kWrite && k.fetch_deferred == FetchMode::kNone &&
          m.mode >= FetchMode::kDowngrade && m.mode <= FetchMode::kWriteBack) {
        // A write-ahead grant is still being copied (the home recorded this node the owner when it granted): the
        // Fetch is carried out once the copy landed and was installed (on_data_ready), so that the requester it is
        // for copies the data from this node's frame, never the frame before the copy.
        k.fetch_deferred = m.mode;
        k.inv_txn = m.txn;
        return;
      }
      switch (m.mode) {
        case FetchMode::kDowngrade:
          if (k.have == Have::kExclusive) {
            local.push_back(LocalAction{LocalAction::kWriteProtect, b, false, kNoNode});
            k.have = Have::kShared;
          } else {
            ++bad_;
          }
          // txn 0: the home downgrades its own copy for a read-ahead grant; nobody waits for an acknowledgement.
          if (m.txn != 0 || self_ != home_) {
            Msg ack = msg(MsgType::kFetchAck, b, m.txn);
            // For the home's own read: offer the data with the ack (the caller sends it, or clears the mode).
            if (m.node == home_ && self_ != home_ && k.have == Have::kShared) ack.mode = FetchMode::kPushed;
            out.push_back(ack);
          }
          return;
        case FetchMode::kInvalidate:
          if (k.have == Have::kInvalid) ++bad_;
          if (k.have != Have::kInvalid) {
            local.push_back(LocalAction{LocalAction::kInvalidate, b, false, kNoNode});
            k.have = Have::kInvalid;
          }
          // txn 0: the home gives its own copy up for a write-ahead grant; nobody waits for an acknowledgement.
          if (m.txn != 0 || self_ != home_) out.push_back(msg(MsgType::kFetchAck, b, m.txn));
          return;
        case FetchMode::kWriteBack:
          if (k.have != Have::kInvalid) {
            local.push_back(LocalAction{LocalAction::kInvalidate, b, false, kNoNode});
            k.have = Have::kInvalid;
          }
          if (self_ == home_) {  // already in the home's frame
            out.push_back(msg(MsgType::kFetchAck, b, m.txn));
            return;
          }
          k.writing_back = true;
          k.wb_txn = m.txn;
          local.push_back(LocalAction{LocalAction::kWriteBack, b, false, kNoNode});
          return;
        case FetchMode::kNone:
        case FetchMode::kPushed:  // a grant's mode, not a fetch's
          break;
      }
      ++bad_;
      return;
    default:
      ++bad_;
      return;
  }
}

void NodeCache::on_data_ready(uint32_t b, int64_t now, std::vector<Msg>& out, std::vector<LocalAction>& local) {
  if (b >= blocks_.size() || !blocks_[b].filling) {
    ++bad_;
    return;
  }
  Block& k = blocks_[b];
  if (k.inv_deferred) {  // invalidated meanwhile: not installed; the parked accesses fault again
    k.inv_deferred = k.filling = k.pending = false;
    out.push_back(msg(MsgType::kInvAck, b, k.inv_txn));
    local.push_back(LocalAction{LocalAction::kWake, b, false, kNoNode});
    return;
  }
  install(b, now, out, local);
  if (k.fetch_deferred != FetchMode::kNone) {
    Msg f;
    f.to = self_;
    f.from = home_;
    f.type = MsgType::kFetch;
    f.segment = segment_;
    f.block = b;
    f.txn = k.inv_txn;
    f.mode = k.fetch_deferred;
    k.fetch_deferred = FetchMode::kNone;
    on_message(f, now, out, local);
  }
}

void NodeCache::on_writeback_done(uint32_t b, std::vector<Msg>& out) {
  if (b >= blocks_.size() || !blocks_[b].writing_back) {
    ++bad_;
    return;
  }
  blocks_[b].writing_back = false;
  out.push_back(msg(MsgType::kFetchAck, b, blocks_[b].wb_txn));
}

void NodeCache::leave(std::vector<Msg>& out) {
  if (self_ == home_) {
    ++bad_;
    return;
  }
  if (leaving_) return;
  leaving_ = true;
  out.push_back(msg(MsgType::kLeave, 0, 0));
}

}  // namespace dipc::dsm
