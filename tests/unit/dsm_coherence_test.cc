// Unit tests of the DSM coherence state machines (dsm/coherence.h): message encoding, every NodeCache and
// HomeDirectory transition, and a randomized simulation that model-checks the protocol: 3..4 nodes plus the home,
// per-pair FIFO channels delivered in random interleavings, processes issuing reads, writes of unique values and
// fetch-adds, page contents really carried (one-sided copies happen at a random later step, from the source frame as
// it is then), nodes leaving and rejoining. After every step: at most one writable mapping per block and never a
// writable plus a readable one, every mapped frame holds the latest written value (so every read returns the value
// of the latest completed write), the directory's invariants hold; every fault is granted within a step bound, the
// quantum is respected, and the fetch-add counter sums exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/wire.h"
#include "dsm/coherence.h"

namespace dipc::dsm {
namespace {

constexpr uint64_t kSeg = 0x1234;
using LA = LocalAction;

Msg make(MsgType t, NodeId from, NodeId to, uint32_t b, uint32_t txn = 0) {
  Msg m;
  m.type = t;
  m.from = from;
  m.to = to;
  m.segment = kSeg;
  m.block = b;
  m.txn = txn;
  return m;
}

// The home (node 1) grants node 2's cache `c` the read copies of blocks b..b+n-1, pushed (in place, no Done).
void grant_pushed_run(NodeCache& c, uint32_t b, uint16_t n, std::vector<Msg>& out, std::vector<LocalAction>& local) {
  Msg g = make(MsgType::kGrant, 1, 2, b, 0);
  g.node = 2;
  g.count = n;
  out.clear();
  local.clear();
  c.on_message(g, 0, out, local);
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding and geometry

TEST(DsmMsg, RoundTripAndStrictDecode) {
  Msg m = make(MsgType::kGrant, 3, 7, 0xdeadbeef, 0x01020304);
  m.segment = 0xfedcba9876543210ull;
  m.access = Access::kWrite;
  m.mode = FetchMode::kWriteBack;
  m.node = 255;
  m.count = 7;
  Encoder e;
  m.encode(e);
  Bytes b = e.take();
  ASSERT_EQ(b.size(), Msg::kEncodedSize);
  Msg out;
  out.to = 9;
  out.from = 9;
  Decoder d{ByteView(b)};
  ASSERT_TRUE(out.decode(d));
  EXPECT_EQ(out.type, m.type);
  EXPECT_EQ(out.segment, m.segment);
  EXPECT_EQ(out.block, m.block);
  EXPECT_EQ(out.txn, m.txn);
  EXPECT_EQ(out.access, m.access);
  EXPECT_EQ(out.mode, m.mode);
  EXPECT_EQ(out.node, m.node);
  EXPECT_EQ(out.count, 7);
  EXPECT_EQ(out.to, 9);  // addressing is not encoded
  EXPECT_EQ(out.from, 9);
  for (size_t n = 0; n < b.size(); ++n) {
    Msg t;
    Decoder dn{ByteView(b.data(), n)};
    EXPECT_FALSE(t.decode(dn)) << "truncated to " << n;
  }
  Bytes longer = b;
  longer.push_back(0);
  Msg t;
  Decoder dl{ByteView(longer)};
  EXPECT_FALSE(t.decode(dl));
  auto corrupt = [&](size_t at, uint8_t v) {
    Bytes c = b;
    c[at] = v;
    Msg x;
    Decoder dc{ByteView(c)};
    return x.decode(dc);
  };
  EXPECT_FALSE(corrupt(1, 0));      // type 0
  EXPECT_FALSE(corrupt(1, 7));      // type 7
  EXPECT_FALSE(corrupt(1, 21));     // type 21
  EXPECT_FALSE(corrupt(18, 2));     // access 2
  EXPECT_TRUE(corrupt(19, 4));      // mode 4 (kPushed, on a Grant)
  EXPECT_FALSE(corrupt(19, 5));     // mode 5
  EXPECT_FALSE(corrupt(20, 1));     // node 0x01ff
  EXPECT_TRUE(corrupt(21, 0));      // node 0
  EXPECT_FALSE(corrupt(23, 0));     // count 0
  EXPECT_FALSE(corrupt(22, 0x04));  // count 0x0407 = 1031: more than kMaxCount
  EXPECT_TRUE(corrupt(22, 0x03));   // count 0x0307 = 775
  for (uint16_t t16 : {1, 2, 3, 4, 5, 6, 16, 17, 18, 19, 20}) {
    EXPECT_TRUE(corrupt(1, static_cast<uint8_t>(t16))) << t16;
    EXPECT_STRNE(msg_type_name(static_cast<MsgType>(t16)), "?");
  }
  EXPECT_TRUE(for_directory(MsgType::kDone));
  EXPECT_FALSE(for_directory(MsgType::kGrant));
  EXPECT_NE(m.str().find("Grant"), std::string::npos);
}

TEST(DsmGeometry, BlockSize) {
  EXPECT_TRUE(valid_block_size(1 << 20, 4096));
  EXPECT_TRUE(valid_block_size(1 << 20, 1 << 20));
  EXPECT_FALSE(valid_block_size(1 << 20, 1 << 21));
  EXPECT_FALSE(valid_block_size(1 << 20, 2048));
  EXPECT_FALSE(valid_block_size(1 << 20, 12288));  // not a power of two
  EXPECT_FALSE(valid_block_size(0, 4096));
  EXPECT_TRUE(valid_block_size(100, 4096));        // a segment smaller than a page is one page
  EXPECT_FALSE(valid_block_size(100, 8192));
  EXPECT_TRUE(valid_block_size(12288, 16384));     // whole segment, rounded up to a power of two
  EXPECT_FALSE(valid_block_size(12288, 32768));
  EXPECT_EQ(block_count(1 << 20, 4096), 256u);
  EXPECT_EQ(block_count(12288, 8192), 2u);         // last block partial
  EXPECT_EQ(block_count(12288, 16384), 1u);
  EXPECT_EQ(block_count(1, 4096), 1u);
  EXPECT_EQ(block_count(1 << 20, 3000), 0u);
}

TEST(DsmGeometry, SegmentLayoutIsPageAlignedOnEveryNodeAndTheHomesBlockGivesTheHomesLayout) {
  auto g = segment_geometry(100, 4096);  // a small segment: one 4 KiB block
  EXPECT_EQ(g.mapped, 4096u);
  EXPECT_EQ(g.block, 4096u);
  EXPECT_EQ(g.nblocks, 1u);
  g = segment_geometry(3 * 4096 + 1, 8192);  // whole blocks
  EXPECT_EQ(g.mapped, 2u * 8192);
  EXPECT_EQ(g.block, 8192u);
  EXPECT_EQ(g.nblocks, 2u);
  g = segment_geometry(100, 65536);  // a 64 KiB unit: a node with 64 KiB pages maps it too
  EXPECT_EQ(g.mapped, 65536u);
  EXPECT_EQ(g.block, 65536u);
  EXPECT_TRUE(fits_page(g, 65536));
  g = segment_geometry(100, uint64_t{1} << 30);  // "whole segment" blocks: capped, never below the largest page
  EXPECT_EQ(g.mapped, kLargestPage);
  EXPECT_EQ(g.block, kLargestPage);
  g = segment_geometry(3 << 20, uint64_t{1} << 30);
  EXPECT_EQ(g.mapped, 3u << 20);
  EXPECT_EQ(g.block, 4u << 20);
  EXPECT_EQ(g.nblocks, 1u);
  // A 4 KiB-block segment cannot be mapped by a node with 64 KiB pages: told, never mapped misaligned.
  EXPECT_FALSE(fits_page(segment_geometry(100, 4096), 65536));
  EXPECT_FALSE(fits_page(segment_geometry(1 << 20, 4096), 65536));
  EXPECT_TRUE(fits_page(segment_geometry(1 << 20, 4096), 4096));
  // Another node recomputes the layout from the home's block and gets the home's layout.
  for (uint64_t size : {uint64_t{1}, uint64_t{4095}, uint64_t{65537}, uint64_t{3} << 20, uint64_t{12345678}})
    for (uint64_t cfg : {uint64_t{4096}, uint64_t{16384}, uint64_t{65536}, uint64_t{1} << 20, uint64_t{1} << 30}) {
      Geometry home = segment_geometry(size, cfg), other = segment_geometry(size, home.block);
      EXPECT_EQ(other.mapped, home.mapped) << size << " " << cfg;
      EXPECT_EQ(other.block, home.block) << size << " " << cfg;
      EXPECT_GE(home.mapped, size);
    }
  EXPECT_EQ(segment_geometry(100, 2048).block, 0u);   // below the smallest page
  EXPECT_EQ(segment_geometry(100, 12288).block, 0u);  // not a power of two
}

TEST(DsmGeometry, HugetlbSegmentsAreWholeHugePagesAndTheirBlocksAtLeastOne) {
  constexpr uint64_t kHuge = uint64_t{2} << 20;
  auto g = segment_geometry(100, 4096, kHuge);  // one huge page, one block, whatever [dsm] block_size says
  EXPECT_EQ(g.mapped, kHuge);
  EXPECT_EQ(g.block, kHuge);
  EXPECT_EQ(g.nblocks, 1u);
  EXPECT_EQ(g.huge_page, kHuge);
  g = segment_geometry(5 * kHuge + 1, 4096, kHuge);
  EXPECT_EQ(g.mapped, 6 * kHuge);
  EXPECT_EQ(g.block, kHuge);
  EXPECT_EQ(g.nblocks, 6u);
  g = segment_geometry(5 * kHuge, 4 * kHuge, kHuge);  // larger blocks stay whole huge pages
  EXPECT_EQ(g.mapped, 5 * kHuge);
  EXPECT_EQ(g.block, 4 * kHuge);
  EXPECT_EQ(g.nblocks, 2u);
  // Another node given the home's block and huge page size gets the home's layout.
  for (uint64_t size : {uint64_t{1}, kHuge - 1, kHuge + 1, uint64_t{12345678}}) {
    Geometry home = segment_geometry(size, 4096, kHuge), other = segment_geometry(size, home.block, kHuge);
    EXPECT_EQ(other.mapped, home.mapped) << size;
    EXPECT_EQ(other.block, home.block) << size;
    EXPECT_EQ(home.mapped % kHuge, 0u) << size;
  }
  EXPECT_EQ(segment_geometry(100, 4096, 3u << 20).block, 0u);  // not a power of two
  EXPECT_EQ(segment_geometry(100, 4096).huge_page, 0u);
}

TEST(DsmNodeSet, Basics) {
  NodeSet s;
  EXPECT_TRUE(s.empty());
  s.add(1);
  s.add(64);
  s.add(255);
  s.add(300);  // ignored
  EXPECT_EQ(s.size(), 3u);
  EXPECT_EQ(s.members(), (std::vector<NodeId>{1, 64, 255}));
  s.remove(64);
  EXPECT_FALSE(s.has(64));
  EXPECT_TRUE(s.has(255));
  EXPECT_FALSE(s.has(300));
}

// ---------------------------------------------------------------------------------------------------------------
// NodeCache transitions (node 2, home 1)

struct CacheFixture : ::testing::Test {
  NodeCache c{kSeg, 4, 2, 1};
  std::vector<Msg> out;
  std::vector<LA> local;
  void clear() {
    out.clear();
    local.clear();
  }
  void recv(Msg m, int64_t now = 0) {
    m.to = 2;
    m.from = 1;
    clear();
    c.on_message(m, now, out, local);
  }
  Msg grant(uint32_t b, Access a, NodeId src, uint32_t txn) {
    Msg m = make(MsgType::kGrant, 1, 2, b, txn);
    m.access = a;
    m.node = src;
    return m;
  }
  Msg fetch(uint32_t b, FetchMode md, uint32_t txn) {
    Msg m = make(MsgType::kFetch, 1, 2, b, txn);
    m.mode = md;
    m.node = 3;
    return m;
  }
  // Drives block b to Shared (src 3) or Exclusive (src 0) through the protocol.
  void get(uint32_t b, Access a) {
    clear();
    ASSERT_EQ(c.on_fault(b, a, out), NodeCache::Fault::kParked);
    recv(grant(b, a, a == Access::kRead ? 3 : kNoNode, 50 + b));
    clear();
    c.on_data_ready(b, 10, out, local);
    clear();
  }
  static LA act(LA::Kind k, uint32_t b, bool w = false, NodeId n = kNoNode) { return LA{k, b, w, n}; }
};

TEST_F(CacheFixture, ReadMissFillInstall) {
  EXPECT_EQ(c.state(0), NodeCache::State::kInvalid);
  EXPECT_EQ(c.on_fault(0, Access::kRead, out), NodeCache::Fault::kParked);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kReadReq);
  EXPECT_EQ(out[0].to, 1);
  EXPECT_EQ(out[0].from, 2);
  EXPECT_EQ(c.state(0), NodeCache::State::kIS);
  // More faults on the block while the request is outstanding send nothing (a write one included).
  clear();
  EXPECT_EQ(c.on_fault(0, Access::kRead, out), NodeCache::Fault::kParked);
  EXPECT_EQ(c.on_fault(0, Access::kWrite, out), NodeCache::Fault::kParked);
  EXPECT_TRUE(out.empty());
  recv(grant(0, Access::kRead, 3, 7));
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(local, (std::vector<LA>{act(LA::kFetchData, 0, false, 3)}));
  EXPECT_EQ(c.state(0), NodeCache::State::kISD);
  EXPECT_FALSE(c.readable(0));
  clear();
  c.on_data_ready(0, 123, out, local);
  EXPECT_EQ(local, (std::vector<LA>{act(LA::kInstall, 0, false), act(LA::kWake, 0)}));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kDone);
  EXPECT_EQ(out[0].txn, 7u);
  EXPECT_EQ(c.state(0), NodeCache::State::kShared);
  EXPECT_EQ(c.installed_at(0), 123);
  EXPECT_TRUE(c.readable(0));
  EXPECT_FALSE(c.writable(0));
  // A read now proceeds; the parked write retries and asks for the upgrade.
  clear();
  EXPECT_EQ(c.on_fault(0, Access::kRead, out), NodeCache::Fault::kProceed);
  EXPECT_EQ(c.on_fault(0, Access::kWrite, out), NodeCache::Fault::kParked);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kWriteReq);
  EXPECT_EQ(c.state(0), NodeCache::State::kSM);
  EXPECT_EQ(c.bad_messages(), 0u);
}

TEST_F(CacheFixture, WriteMissZeroFill) {
  c.on_fault(1, Access::kWrite, out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kWriteReq);
  EXPECT_EQ(c.state(1), NodeCache::State::kIM);
  recv(grant(1, Access::kWrite, kNoNode, 9));
  EXPECT_EQ(local, (std::vector<LA>{act(LA::kFetchData, 1, false, kNoNode)}));
  EXPECT_EQ(c.state(1), NodeCache::State::kIMD);
  clear();
  c.on_data_ready(1, 5, out, local);
  EXPECT_EQ(local, (std::vector<LA>{act(LA::kInstall, 1, true), act(LA::kWake, 1)}));
  EXPECT_EQ(c.state(1), NodeCache::State::kExclusive);
  EXPECT_TRUE(c.writable(1));
  clear();
  EXPECT_EQ(c.on_fault(1, Access::kWrite, out), NodeCache::Fault::kProceed);
  EXPECT_TRUE(out.empty());
}

TEST_F(CacheFixture, UpgradeInPlace) {
  get(0, Access::kRead);
  c.on_fault(0, Access::kWrite, out);
  EXPECT_EQ(c.state(0), NodeCache::State::kSM);
  EXPECT_TRUE(c.readable(0));  // reads go on while the upgrade is outstanding
  recv(grant(0, Access::kWrite, 2, 11), 77);
  EXPECT_EQ(local, (std::vector<LA>{act(LA::kInstall, 0, true), act(LA::kWake, 0)}));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kDone);
  EXPECT_EQ(out[0].txn, 11u);
  EXPECT_EQ(c.state(0), NodeCache::State::kExclusive);
  EXPECT_EQ(c.installed_at(0), 77);
}

TEST_F(CacheFixture, UpgradeCrossesInvalidation) {
  get(0, Access::kRead);
  c.on_fault(0, Access::kWrite, out);
  recv(make(MsgType::kInvalidate, 1, 2, 0, 30));
  EXPECT_EQ(local, (std::vector<LA>{act(LA::kInvalidate, 0)}));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kInvAck);
  EXPECT_EQ(out[0].txn, 30u);
  EXPECT_EQ(c.state(0), NodeCache::State::kIM);  // the request stays outstanding
  recv(grant(0, Access::kWrite, 4, 31));
  EXPECT_EQ(local, (std::vector<LA>{act(LA::kFetchData, 0, false, 4)}));
  EXPECT_EQ(c.state(0), NodeCache::State::kIMD);
  EXPECT_EQ(c.bad_messages(), 0u);
}

TEST_F(CacheFixture, InvalidateSharedAndInvalid) {
  get(0, Access::kRead);
  recv(make(MsgType::kInvalidate, 1, 2, 0, 3));
  EXPECT_EQ(local, (std::vector<LA>{act(LA::kInvalidate, 0)}));
  EXPECT_EQ(c.state(0), NodeCache::State::kInvalid);
  recv(make(MsgType::kInvalidate, 1, 2, 0, 4));  // idempotent
  EXPECT_TRUE(local.empty());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kInvAck);
}

TEST_F(CacheFixture, FetchDowngradeInvalidateWriteBack) {
  get(0, Access::kWrite);
  recv(fetch(0, FetchMode::kDowngrade, 5));
  EXPECT_EQ(local, (std::vector<LA>{act(LA::kWriteProtect, 0)}));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kFetchAck);
  EXPECT_EQ(out[0].txn, 5u);
  EXPECT_EQ(c.state(0), NodeCache::State::kShared);

  get(1, Access::kWrite);
  recv(fetch(1, FetchMode::kInvalidate, 6));
  EXPECT_EQ(local, (std::vector<LA>{act(LA::kInvalidate, 1)}));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kFetchAck);
  EXPECT_EQ(c.state(1), NodeCache::State::kInvalid);

  get(2, Access::kWrite);
  recv(fetch(2, FetchMode::kWriteBack, 8));
  EXPECT_EQ(local, (std::vector<LA>{act(LA::kInvalidate, 2), act(LA::kWriteBack, 2)}));
  EXPECT_TRUE(out.empty());  // acknowledged once the data is in the home's frame
  clear();
  c.on_writeback_done(2, out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kFetchAck);
  EXPECT_EQ(out[0].txn, 8u);
  EXPECT_EQ(c.bad_messages(), 0u);
}

TEST_F(CacheFixture, LeaveParksFaultsUntilLeaveDone) {
  get(0, Access::kRead);
  c.leave(out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kLeave);
  EXPECT_TRUE(c.leaving());
  clear();
  EXPECT_EQ(c.on_fault(1, Access::kRead, out), NodeCache::Fault::kParked);
  EXPECT_TRUE(out.empty());
  recv(make(MsgType::kLeaveDone, 1, 2, 0));
  EXPECT_EQ(local, (std::vector<LA>{act(LA::kInvalidate, 0), act(LA::kLeft, 0), act(LA::kWake, 1)}));
  EXPECT_FALSE(c.leaving());
  EXPECT_EQ(c.state(0), NodeCache::State::kInvalid);
  clear();
  EXPECT_EQ(c.on_fault(1, Access::kRead, out), NodeCache::Fault::kParked);  // joins again
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kReadReq);
}

TEST_F(CacheFixture, RejectsWhatItMustNotActOn) {
  Msg m = grant(0, Access::kRead, 3, 1);
  m.segment = 99;
  recv(m);  // other segment
  m = grant(0, Access::kRead, 3, 1);
  m.from = 3;
  clear();
  c.on_message(m, 0, out, local);  // not from the home
  recv(grant(0, Access::kRead, 3, 1));  // no request outstanding
  recv(grant(9, Access::kRead, 3, 1));  // block out of range
  recv(make(MsgType::kLeaveDone, 1, 2, 0));  // not leaving
  recv(make(MsgType::kDone, 1, 2, 0));  // a directory message
  EXPECT_TRUE(local.empty());
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(c.bad_messages(), 6u);
  EXPECT_EQ(c.state(0), NodeCache::State::kInvalid);
  NodeCache home{kSeg, 1, 1, 1};
  home.leave(out);  // the home never leaves
  EXPECT_EQ(home.bad_messages(), 1u);
}

TEST(DsmNodeCache, ReadAheadWindowGrowsOnSequentialMissesAndResetsOnARandomOne) {
  NodeCache c{kSeg, 64, 2, 1, 8};
  std::vector<Msg> out;
  std::vector<LA> local;
  auto miss = [&](uint32_t b) {
    out.clear();
    EXPECT_EQ(c.on_fault(b, Access::kRead, out), NodeCache::Fault::kParked);
    EXPECT_EQ(out.size(), 1u);
    return out.empty() ? uint16_t{0} : out[0].count;
  };
  auto grant_all = [&](uint32_t b, uint16_t n) {
    grant_pushed_run(c, b, n, out, local);
    EXPECT_TRUE(out.empty());  // no Done for txn 0
  };
  EXPECT_EQ(miss(0), 1);
  grant_all(0, 1);
  EXPECT_EQ(miss(1), 2);  // sequential: doubles
  grant_all(1, 2);
  EXPECT_EQ(c.state(2), NodeCache::State::kShared);
  EXPECT_EQ(miss(3), 4);
  grant_all(3, 4);
  EXPECT_EQ(miss(7), 8);
  EXPECT_EQ(c.state(14), NodeCache::State::kIS);  // asked for, no access waits on it
  grant_all(7, 8);
  EXPECT_EQ(miss(15), 8);  // capped
  grant_all(15, 8);
  EXPECT_EQ(miss(40), 2);  // random, after a run that went on: 2 (a stencil's row of two blocks in one round trip)
  grant_all(40, 2);
  EXPECT_EQ(miss(50), 1);  // random, after a run that did not go past its first block (41, its mark, untouched): 1
  grant_all(50, 1);
  EXPECT_EQ(miss(52), 1);
  grant_all(52, 1);
  EXPECT_EQ(miss(30), 1);
  grant_all(30, 1);
  EXPECT_EQ(miss(31), 2);  // sequential
  grant_all(31, 2);
  EXPECT_EQ(miss(44), 2);  // that run went on
  grant_all(44, 2);
  out.clear();
  EXPECT_EQ(c.on_fault(45, Access::kRead, out), NodeCache::Fault::kProceed);  // the reader reached the mark
  EXPECT_EQ(miss(60), 2);  // so this run went on too (the mark asked for 46..49 already)
  EXPECT_EQ(c.prefetched(), 1u + 3 + 7 + 7 + 1 + 1 + 1);
  // The window stops at a block held or asked for already.
  NodeCache d{kSeg, 8, 2, 1, 8};
  out.clear();
  d.on_fault(3, Access::kWrite, out);
  d.on_fault(0, Access::kRead, out);
  out.clear();
  EXPECT_EQ(d.on_fault(1, Access::kRead, out), NodeCache::Fault::kParked);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].count, 2);  // blocks 1 and 2; 3 has a write request outstanding
  EXPECT_EQ(c.bad_messages() + d.bad_messages(), 0u);
}

// The reader's first touch of a window's mark asks for the next windows before the reader reaches them, until
// `depth` windows are ahead of it; a reader that waits on a mark's grant already asks when the grant arrives.
TEST(DsmNodeCache, ReadAheadRunsAheadOfTheReaderFromTheMarks) {
  for (uint32_t depth : {1u, 2u}) {
    SCOPED_TRACE("depth " + std::to_string(depth));
    NodeCache c{kSeg, 64, 2, 1, 8, depth};
    std::vector<Msg> out;
    std::vector<LA> local;
    auto grant = [&](uint32_t b, uint16_t n) { grant_pushed_run(c, b, n, out, local); };
    c.on_fault(0, Access::kRead, out);
    grant(0, 1);
    EXPECT_FALSE(c.readahead_mark(0));  // a window of one block has no mark
    EXPECT_FALSE(c.readahead_mark(1));
    out.clear();
    c.on_fault(1, Access::kRead, out);  // window 1..2: block 2 is its mark
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].count, 2);
    EXPECT_TRUE(c.readahead_mark(2));
    grant(1, 2);
    EXPECT_TRUE(out.empty());
    out.clear();
    EXPECT_EQ(c.on_fault(2, Access::kRead, out), NodeCache::Fault::kProceed);  // held: the caller maps it
    EXPECT_FALSE(c.readahead_mark(2));
    // ... and the next windows leave at once, each twice as large as the one before, up to the cap (8).
    ASSERT_EQ(out.size(), depth);
    EXPECT_EQ(out[0].type, MsgType::kReadReq);
    EXPECT_EQ(out[0].block, 3u);
    EXPECT_EQ(out[0].count, 4);
    EXPECT_TRUE(c.readahead_mark(3));
    EXPECT_EQ(c.state(3), NodeCache::State::kIS);
    if (depth == 2) {
      EXPECT_EQ(out[1].block, 7u);
      EXPECT_EQ(out[1].count, 8);
      EXPECT_TRUE(c.readahead_mark(7));
    }
    out.clear();
    EXPECT_EQ(c.on_fault(3, Access::kRead, out), NodeCache::Fault::kParked);  // the reader caught up: it waits
    EXPECT_TRUE(out.empty());
    grant(3, 4);  // ... and the grant of the mark it waits on asks for the next window
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].block, depth == 2 ? 15u : 7u);
    EXPECT_EQ(out[0].count, 8);
    if (depth == 1) {
      grant(7, 8);
      EXPECT_TRUE(out.empty());
      EXPECT_EQ(c.on_fault(7, Access::kRead, out), NodeCache::Fault::kProceed);
      ASSERT_EQ(out.size(), 1u);
      EXPECT_EQ(out[0].block, 15u);
    }
    out.clear();
    EXPECT_EQ(c.on_fault(3, Access::kRead, out), NodeCache::Fault::kProceed);  // once per mark
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(c.bad_messages(), 0u);
  }
  // A block held already ends a window there; nothing is asked for past it.
  NodeCache d{kSeg, 16, 2, 1, 8, 2};
  std::vector<Msg> out;
  std::vector<LA> local;
  d.on_fault(0, Access::kRead, out);
  d.on_fault(5, Access::kWrite, out);
  Msg g = make(MsgType::kGrant, 1, 2, 0, 0);
  g.node = 2;
  d.on_message(g, 0, out, local);
  out.clear();
  d.on_fault(1, Access::kRead, out);  // window 1..2, mark 2
  ASSERT_EQ(out.size(), 1u);
  g.block = 1;
  g.count = 2;
  out.clear();
  d.on_message(g, 0, out, local);
  out.clear();
  EXPECT_EQ(d.on_fault(2, Access::kRead, out), NodeCache::Fault::kProceed);
  ASSERT_EQ(out.size(), 1u);  // 3 and 4 (block 5 has a write request outstanding), and no second window
  EXPECT_EQ(out[0].block, 3u);
  EXPECT_EQ(out[0].count, 2);
  EXPECT_EQ(d.bad_messages(), 0u);
}

TEST(DsmNodeCache, RefusedReadAheadAsksAgainOnlyForBlocksAnAccessWaitsOn) {
  NodeCache c{kSeg, 8, 2, 1, 4};
  std::vector<Msg> out;
  std::vector<LA> local;
  c.on_fault(0, Access::kRead, out);
  out.clear();
  c.on_fault(1, Access::kRead, out);  // window 1..2
  ASSERT_EQ(out.size(), 1u);
  ASSERT_EQ(out[0].count, 2);
  out.clear();
  EXPECT_EQ(c.on_fault(2, Access::kRead, out), NodeCache::Fault::kParked);  // waits on the read-ahead
  EXPECT_TRUE(out.empty());
  Msg no = make(MsgType::kNoGrant, 1, 2, 2, 0);  // block 1 is the fault's own: the home grants it later
  c.on_message(no, 0, out, local);
  ASSERT_EQ(out.size(), 1u);  // block 2 asked for alone; block 1's demand request still stands
  EXPECT_EQ(out[0].type, MsgType::kReadReq);
  EXPECT_EQ(out[0].block, 2u);
  EXPECT_EQ(out[0].count, 1);
  EXPECT_EQ(c.state(1), NodeCache::State::kIS);
  EXPECT_EQ(c.state(2), NodeCache::State::kIS);
  // A refusal of blocks nobody asked for is a bad message.
  out.clear();
  c.on_message(no, 0, out, local);
  EXPECT_EQ(c.bad_messages(), 1u);
}

TEST(DsmNodeCache, InvalidationWhileAGrantWithoutDoneIsCopyingIsAcknowledgedAfterTheCopy) {
  NodeCache c{kSeg, 2, 2, 1};
  std::vector<Msg> out;
  std::vector<LA> local;
  c.on_fault(0, Access::kRead, out);
  Msg g = make(MsgType::kGrant, 1, 2, 0, 0);
  g.node = 1;  // from the home's frame, not pushed
  out.clear();
  c.on_message(g, 0, out, local);
  EXPECT_EQ(local, (std::vector<LA>{LA{LA::kFetchData, 0, false, 1}}));
  out.clear();
  local.clear();
  c.on_message(make(MsgType::kInvalidate, 1, 2, 0, 44), 0, out, local);
  EXPECT_TRUE(out.empty());  // the copy of the home's frame is still in flight
  c.on_data_ready(0, 5, out, local);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kInvAck);
  EXPECT_EQ(out[0].txn, 44u);
  EXPECT_EQ(local, (std::vector<LA>{LA{LA::kWake, 0, false, kNoNode}}));  // not installed: the access faults again
  EXPECT_EQ(c.state(0), NodeCache::State::kInvalid);
  EXPECT_EQ(c.bad_messages(), 0u);
}

TEST(DsmNodeCache, HomeWritesBackInPlace) {
  NodeCache h{kSeg, 1, 1, 1};
  std::vector<Msg> out;
  std::vector<LA> local;
  Msg f = make(MsgType::kFetch, 1, 1, 0, 3);
  f.mode = FetchMode::kWriteBack;
  h.on_message(f, 0, out, local);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kFetchAck);
}

// ---------------------------------------------------------------------------------------------------------------
// HomeDirectory transitions (home 1, nodes 2..4)

struct DirFixture : ::testing::Test {
  HomeDirectory d{kSeg, 4, 1, 0};
  std::vector<Msg> out;
  int64_t now = 1000;
  void send(MsgType t, NodeId from, uint32_t b, uint32_t txn = 0, HomeDirectory* dir = nullptr) {
    out.clear();
    (dir ? dir : &d)->on_message(make(t, from, 1, b, txn), now, out);
  }
  static void expect_msg(const Msg& m, MsgType t, NodeId to, uint32_t b) {
    EXPECT_EQ(m.type, t) << m.str();
    EXPECT_EQ(m.to, to) << m.str();
    EXPECT_EQ(m.from, 1) << m.str();
    EXPECT_EQ(m.block, b) << m.str();
    EXPECT_EQ(m.segment, kSeg) << m.str();
  }
  // Runs a complete read or write transaction of `node` on block b, acknowledging everything.
  void txn(NodeId node, uint32_t b, Access a, HomeDirectory* dir = nullptr) {
    HomeDirectory& h = dir ? *dir : d;
    std::vector<Msg> pending;
    h.on_message(make(a == Access::kRead ? MsgType::kReadReq : MsgType::kWriteReq, node, 1, b), now, pending);
    for (size_t guard = 0; guard < 20 && !pending.empty(); ++guard) {
      std::vector<Msg> next;
      for (const Msg& m : pending) {
        if (m.type == MsgType::kFetch) h.on_message(make(MsgType::kFetchAck, m.to, 1, m.block, m.txn), now, next);
        if (m.type == MsgType::kInvalidate) h.on_message(make(MsgType::kInvAck, m.to, 1, m.block, m.txn), now, next);
        if (m.type == MsgType::kGrant && m.txn != 0)  // txn 0: recorded at grant time, no Done
          h.on_message(make(MsgType::kDone, m.to, 1, m.block, m.txn), now, next);
      }
      pending = next;
    }
    ASSERT_TRUE(pending.empty());
    ASSERT_EQ(h.check(), "");
  }
  static NodeSet set(std::initializer_list<NodeId> l) {
    NodeSet s;
    for (NodeId n : l) s.add(n);
    return s;
  }
};

TEST_F(DirFixture, ReadOfNeverWrittenBlockZeroFills) {
  send(MsgType::kReadReq, 2, 0);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 2, 0);
  EXPECT_EQ(out[0].access, Access::kRead);
  EXPECT_EQ(out[0].node, kNoNode);
  EXPECT_EQ(out[0].txn, 0u);  // recorded at once: no Done, no transaction
  EXPECT_FALSE(d.block(0).busy);
  auto v = d.block(0);
  EXPECT_EQ(v.owner, 1);  // the home's frame holds the zeros of a block never written
  EXPECT_FALSE(v.exclusive);
  EXPECT_EQ(v.copyset, set({2}));
  EXPECT_FALSE(v.busy);
  EXPECT_TRUE(d.idle());
  EXPECT_EQ(d.check(), "");
}

TEST_F(DirFixture, ReadOfSharedBlockCopiesFromOwner) {
  txn(2, 0, Access::kWrite);
  txn(3, 0, Access::kRead);  // 2 downgraded, still the owner
  send(MsgType::kReadReq, 4, 0);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 4, 0);
  EXPECT_EQ(out[0].node, 2);
  EXPECT_NE(out[0].txn, 0u);  // a copy from a third node's frame is closed by Done
  EXPECT_TRUE(d.block(0).busy);
  send(MsgType::kDone, 4, 0, out[0].txn);
  EXPECT_EQ(d.block(0).copyset, set({2, 3, 4}));
  EXPECT_EQ(d.block(0).owner, 2);
}

TEST_F(DirFixture, ReadOfABlockTheHomeHoldsIsGrantedFromTheHomesFrameWithoutDone) {
  txn(1, 0, Access::kWrite);  // the home's own writable copy
  send(MsgType::kReadReq, 2, 0);
  ASSERT_EQ(out.size(), 2u);
  expect_msg(out[0], MsgType::kFetch, 1, 0);  // the home downgrades itself, unacknowledged
  EXPECT_EQ(out[0].mode, FetchMode::kDowngrade);
  EXPECT_EQ(out[0].txn, 0u);
  expect_msg(out[1], MsgType::kGrant, 2, 0);
  EXPECT_EQ(out[1].node, 1);
  EXPECT_EQ(out[1].txn, 0u);
  auto v = d.block(0);
  EXPECT_FALSE(v.busy);
  EXPECT_FALSE(v.exclusive);
  EXPECT_EQ(v.copyset, set({1, 2}));
  // A third reader copies from the home too, though node 2 holds a copy as well.
  send(MsgType::kReadReq, 3, 0);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].node, 1);
  EXPECT_EQ(out[0].txn, 0u);
  // A Done for a grant without one is a stale message.
  send(MsgType::kDone, 3, 0, 0);
  EXPECT_EQ(d.bad_messages(), 1u);
  EXPECT_EQ(d.check(), "");
}

TEST_F(DirFixture, ReadAheadGrantsRunsAtOnceAndRefusesFromTheFirstBlockItCannotGrant) {
  HomeDirectory h{kSeg, 8, 1, 0};
  txn(1, 1, Access::kWrite, &h);  // block 1: the home's writable copy (downgraded for the window)
  txn(1, 2, Access::kWrite, &h);
  txn(3, 5, Access::kWrite, &h);  // block 5: node 3's writable copy (not waited for)
  Msg r = make(MsgType::kReadReq, 2, 1, 0);
  r.count = 8;
  out.clear();
  h.on_message(r, now, out);
  // The home's downgrades first (carried out before the grants leave), then one grant per run: block 0 (never
  // written) a zero fill, blocks 1..2 from the home's frame, 3..4 zero fills; block 5 and after refused.
  ASSERT_EQ(out.size(), 6u) << out[0].str();
  expect_msg(out[0], MsgType::kFetch, 1, 1);
  EXPECT_EQ(out[0].txn, 0u);
  expect_msg(out[1], MsgType::kFetch, 1, 2);
  expect_msg(out[2], MsgType::kGrant, 2, 0);
  EXPECT_EQ(out[2].node, kNoNode);
  EXPECT_EQ(out[2].count, 1);
  expect_msg(out[3], MsgType::kGrant, 2, 1);
  EXPECT_EQ(out[3].node, 1);
  EXPECT_EQ(out[3].count, 2);
  EXPECT_EQ(out[3].txn, 0u);
  EXPECT_EQ(out[3].access, Access::kRead);
  expect_msg(out[4], MsgType::kGrant, 2, 3);
  EXPECT_EQ(out[4].node, kNoNode);
  EXPECT_EQ(out[4].count, 2);
  expect_msg(out[5], MsgType::kNoGrant, 2, 5);
  EXPECT_EQ(out[5].count, 3);
  EXPECT_TRUE(h.idle());
  for (uint32_t b = 0; b < 5; ++b) EXPECT_TRUE(h.block(b).copyset.has(2)) << b;
  EXPECT_FALSE(h.block(5).copyset.has(2));
  EXPECT_FALSE(h.block(1).exclusive);
  EXPECT_EQ(h.check(), "");
}

TEST_F(DirFixture, ReadOfExclusiveBlockDowngradesOwner) {
  txn(2, 0, Access::kWrite);
  EXPECT_TRUE(d.block(0).exclusive);
  send(MsgType::kReadReq, 3, 0);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kFetch, 2, 0);
  EXPECT_EQ(out[0].mode, FetchMode::kDowngrade);
  EXPECT_EQ(out[0].node, 3);
  uint32_t t = out[0].txn;
  send(MsgType::kFetchAck, 2, 0, t);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 3, 0);
  EXPECT_EQ(out[0].node, 2);
  EXPECT_EQ(out[0].txn, t);
  send(MsgType::kDone, 3, 0, t);
  auto v = d.block(0);
  EXPECT_FALSE(v.exclusive);
  EXPECT_EQ(v.owner, 2);
  EXPECT_EQ(v.copyset, set({2, 3}));
}

// The home's own read of a block another node holds writable: the owner's acknowledgement with the data (kPushed)
// makes the home's frame current, so the home is granted in place (txn 0, no Done, no copy from the owner's frame);
// without the data, or with data for another transaction, the grant names the owner's frame as before.
TEST_F(DirFixture, HomeReadDowngradeAcknowledgedWithData) {
  for (bool with_data : {true, false}) {
    HomeDirectory h{kSeg, 4, 1, 0};
    txn(2, 0, Access::kWrite, &h);
    send(MsgType::kReadReq, 1, 0, 0, &h);
    ASSERT_EQ(out.size(), 1u);
    expect_msg(out[0], MsgType::kFetch, 2, 0);
    EXPECT_EQ(out[0].node, 1);
    uint32_t t = out[0].txn;
    Msg ack = make(MsgType::kFetchAck, 2, 1, 0, t);
    ack.mode = FetchMode::kPushed;
    Msg stale = ack;
    stale.txn = t + 1;
    EXPECT_FALSE(h.wants_data_ack(stale));  // a wrong txn never writes the home's frame
    Msg other = ack;
    other.from = 3;
    EXPECT_FALSE(h.wants_data_ack(other));  // nor a node the home did not fetch from
    EXPECT_TRUE(h.wants_data_ack(ack));
    if (!with_data) ack.mode = FetchMode::kNone;
    out.clear();
    h.on_message(ack, now, out);
    ASSERT_EQ(out.size(), 1u);
    expect_msg(out[0], MsgType::kGrant, 1, 0);
    EXPECT_EQ(out[0].access, Access::kRead);
    EXPECT_EQ(out[0].node, with_data ? 1 : 2) << with_data;
    EXPECT_EQ(out[0].txn, with_data ? 0u : t) << with_data;
    if (!with_data) send(MsgType::kDone, 1, 0, t, &h);
    EXPECT_TRUE(h.idle());
    EXPECT_EQ(h.block(0).owner, with_data ? 1 : 2);
    EXPECT_EQ(h.block(0).copyset, set({1, 2}));
    EXPECT_EQ(h.check(), "");
  }
}

TEST_F(CacheFixture, DowngradeForTheHomeOffersTheData) {
  get(0, Access::kWrite);
  Msg f = fetch(0, FetchMode::kDowngrade, 5);
  f.node = 1;  // the requester is the home
  recv(f);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kFetchAck);
  EXPECT_EQ(out[0].mode, FetchMode::kPushed);
  get(1, Access::kWrite);
  f = fetch(1, FetchMode::kDowngrade, 6);
  f.node = 3;  // for another node: it copies this node's frame
  recv(f);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].mode, FetchMode::kNone);
}

TEST_F(DirFixture, WriteInvalidatesEveryCopy) {
  txn(2, 0, Access::kWrite);
  txn(3, 0, Access::kRead);  // 2 downgraded, the owner
  send(MsgType::kWriteReq, 4, 0);
  ASSERT_EQ(out.size(), 2u);
  expect_msg(out[0], MsgType::kInvalidate, 2, 0);
  expect_msg(out[1], MsgType::kInvalidate, 3, 0);
  uint32_t t = out[0].txn;
  send(MsgType::kInvAck, 3, 0, t);
  EXPECT_TRUE(out.empty());  // one ack still outstanding
  send(MsgType::kInvAck, 2, 0, t);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 4, 0);
  EXPECT_EQ(out[0].access, Access::kWrite);
  EXPECT_EQ(out[0].node, 2);  // the (unmapped, stable) frame of the previous owner
  send(MsgType::kDone, 4, 0, t);
  auto v = d.block(0);
  EXPECT_TRUE(v.exclusive);
  EXPECT_EQ(v.owner, 4);
  EXPECT_EQ(v.copyset, set({4}));
  EXPECT_EQ(d.check(), "");
}

TEST_F(DirFixture, UpgradeGrantsInPlace) {
  txn(2, 0, Access::kRead);
  txn(3, 0, Access::kRead);
  send(MsgType::kWriteReq, 3, 0);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kInvalidate, 2, 0);
  send(MsgType::kInvAck, 2, 0, out[0].txn);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 3, 0);
  EXPECT_EQ(out[0].node, 3);
  // Nothing is copied: the home records the new owner at once, no Done closes the transaction.
  EXPECT_EQ(out[0].txn, 0u);
  EXPECT_EQ(out[0].access, Access::kWrite);
  auto v = d.block(0);
  EXPECT_EQ(v.owner, 3);
  EXPECT_TRUE(v.exclusive);
  EXPECT_EQ(v.copyset, set({3}));
  EXPECT_FALSE(v.busy);
  // The sole reader upgrades with no invalidation at all.
  txn(2, 1, Access::kRead);
  send(MsgType::kWriteReq, 2, 1);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 2, 1);
  EXPECT_EQ(out[0].node, 2);
}

TEST_F(DirFixture, WriteOfExclusiveBlockFetchesInvalidate) {
  txn(2, 0, Access::kWrite);
  send(MsgType::kWriteReq, 3, 0);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kFetch, 2, 0);
  EXPECT_EQ(out[0].mode, FetchMode::kInvalidate);
  send(MsgType::kFetchAck, 2, 0, out[0].txn);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 3, 0);
  EXPECT_EQ(out[0].node, 2);
  auto mid = d.block(0);  // between grant and Done: the old owner's frame is the (unmapped) source
  EXPECT_EQ(mid.owner, 2);
  EXPECT_FALSE(mid.exclusive);
  EXPECT_TRUE(mid.copyset.empty());
  send(MsgType::kDone, 3, 0, out[0].txn);
  EXPECT_EQ(d.block(0).owner, 3);
  EXPECT_TRUE(d.block(0).exclusive);
}

TEST_F(DirFixture, OneTransactionPerBlockRequestsQueue) {
  txn(2, 0, Access::kWrite);
  send(MsgType::kReadReq, 3, 0);
  ASSERT_EQ(out.size(), 1u);
  uint32_t t1 = out[0].txn;
  send(MsgType::kWriteReq, 4, 0);
  EXPECT_TRUE(out.empty());
  send(MsgType::kReadReq, 2, 1);  // other blocks are independent
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 2, 1);
  EXPECT_EQ(d.block(0).queued, 1u);
  send(MsgType::kFetchAck, 2, 0, t1);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 3, 0);
  send(MsgType::kDone, 3, 0, t1);  // closes t1, starts node 4's write
  ASSERT_EQ(out.size(), 2u);
  expect_msg(out[0], MsgType::kInvalidate, 2, 0);
  expect_msg(out[1], MsgType::kInvalidate, 3, 0);
  EXPECT_NE(out[0].txn, t1);
}

TEST_F(DirFixture, StaleAndForeignMessagesAreDropped) {
  txn(3, 0, Access::kWrite);
  send(MsgType::kReadReq, 2, 0);  // a transaction: node 3 downgrades, node 2 copies from its frame
  send(MsgType::kFetchAck, 3, 0, out[0].txn);
  uint32_t t = out[0].txn;
  send(MsgType::kDone, 2, 0, t + 1);  // wrong txn
  send(MsgType::kDone, 3, 0, t);      // not the requester
  send(MsgType::kInvAck, 2, 0, t);    // not waiting for acks
  send(MsgType::kReadReq, 2, 9);      // block out of range
  send(MsgType::kGrant, 2, 0, t);     // a node-side message
  Msg m = make(MsgType::kReadReq, 2, 1, 0);
  m.segment = 5;
  d.on_message(m, now, out);
  m = make(MsgType::kReadReq, kNoNode, 1, 0);
  d.on_message(m, now, out);
  EXPECT_EQ(d.bad_messages(), 7u);
  EXPECT_TRUE(d.block(0).busy);
  send(MsgType::kDone, 2, 0, t);
  EXPECT_FALSE(d.block(0).busy);
}

TEST(DsmDirectory, QuantumDelaysConflictingTransactions) {
  HomeDirectory d{kSeg, 2, 1, 50};
  std::vector<Msg> out;
  d.on_message(make(MsgType::kWriteReq, 2, 1, 0), 100, out);
  ASSERT_EQ(out.size(), 1u);
  uint32_t t = out[0].txn;
  out.clear();
  d.on_message(make(MsgType::kDone, 2, 1, 0, t), 100, out);
  EXPECT_EQ(d.block(0).hold_until, 150);
  EXPECT_EQ(d.next_timer_us(), kNever);
  d.on_message(make(MsgType::kReadReq, 3, 1, 0), 120, out);
  EXPECT_TRUE(out.empty());  // delayed, not refused
  EXPECT_TRUE(d.block(0).busy);
  EXPECT_EQ(d.next_timer_us(), 150);
  d.on_timer(149, out);
  EXPECT_TRUE(out.empty());
  d.on_timer(150, out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kFetch);
  EXPECT_EQ(out[0].to, 2);
  EXPECT_EQ(d.next_timer_us(), kNever);
  t = out[0].txn;
  out.clear();
  d.on_message(make(MsgType::kFetchAck, 2, 1, 0, t), 151, out);
  out.clear();
  d.on_message(make(MsgType::kDone, 3, 1, 0, t), 160, out);
  // A read of a shared block takes nothing away: granted at once inside the quantum.
  out.clear();
  d.on_message(make(MsgType::kReadReq, 4, 1, 0), 161, out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kGrant);
  t = out[0].txn;
  out.clear();
  d.on_message(make(MsgType::kDone, 4, 1, 0, t), 161, out);
  EXPECT_EQ(d.block(0).copyset.size(), 3u);
  EXPECT_EQ(d.bad_messages(), 0u);
}

TEST(DsmDirectory, QuantumAppliesToUpgradeInvalidations) {
  HomeDirectory d{kSeg, 1, 1, 1000};
  std::vector<Msg> out;
  d.on_message(make(MsgType::kReadReq, 2, 1, 0), 0, out);  // read grants without Done: held from the grant
  d.on_message(make(MsgType::kReadReq, 3, 1, 0), 30, out);
  EXPECT_EQ(out.back().txn, 0u);
  out.clear();
  d.on_message(make(MsgType::kWriteReq, 2, 1, 0), 40, out);  // would invalidate 3, which got it at 30
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(d.next_timer_us(), 1030);
  d.on_timer(2000, out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MsgType::kInvalidate);
  EXPECT_EQ(out[0].to, 3);
}

TEST_F(DirFixture, LeaveWritesBackExclusiveBlocks) {
  txn(2, 0, Access::kWrite);  // 2 exclusive
  txn(2, 1, Access::kWrite);
  txn(2, 2, Access::kWrite);
  txn(3, 2, Access::kRead);   // 2 owner, 3 also has it
  txn(3, 3, Access::kWrite);
  txn(2, 3, Access::kRead);   // 2 a reader, 3 owner
  send(MsgType::kLeave, 2, 0);
  ASSERT_EQ(out.size(), 4u);  // blocks 0 and 1 are written back, the copies of 2 and 3 invalidated
  expect_msg(out[0], MsgType::kFetch, 2, 0);
  EXPECT_EQ(out[0].mode, FetchMode::kWriteBack);
  expect_msg(out[1], MsgType::kFetch, 2, 1);
  EXPECT_EQ(out[1].mode, FetchMode::kWriteBack);
  expect_msg(out[2], MsgType::kInvalidate, 2, 2);
  expect_msg(out[3], MsgType::kInvalidate, 2, 3);
  EXPECT_EQ(d.block(2).owner, 3);  // the other holder owns it at once
  EXPECT_EQ(d.check(), "");
  std::vector<Msg> fetches = out;
  send(MsgType::kInvAck, 2, 2, fetches[2].txn);
  send(MsgType::kInvAck, 2, 3, fetches[3].txn);
  EXPECT_EQ(d.block(2).copyset, set({3}));
  EXPECT_EQ(d.block(3).copyset, set({3}));
  send(MsgType::kFetchAck, 2, 0, fetches[0].txn);
  EXPECT_TRUE(out.empty());
  send(MsgType::kFetchAck, 2, 1, fetches[1].txn);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kLeaveDone, 2, 0);
  for (uint32_t b : {0u, 1u}) {
    auto v = d.block(b);
    EXPECT_EQ(v.owner, 1) << b;  // parked in the home's frame
    EXPECT_FALSE(v.exclusive);
    EXPECT_TRUE(v.copyset.empty());
  }
  EXPECT_EQ(d.check(), "");
  // A reader now copies from the home's frame, which stays the owner; the home itself gets it in place.
  send(MsgType::kReadReq, 3, 0);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].node, 1);
  EXPECT_EQ(out[0].txn, 0u);
  EXPECT_EQ(d.block(0).owner, 1);
  EXPECT_EQ(d.block(0).copyset, set({3}));
  send(MsgType::kWriteReq, 1, 1);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 1, 1);
  EXPECT_EQ(out[0].node, 1);
  EXPECT_EQ(d.check(), "");
}

TEST_F(DirFixture, LeaveOfUninvolvedNodeAndQueuedRequests) {
  send(MsgType::kLeave, 4, 0);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kLeaveDone, 4, 0);
  send(MsgType::kLeave, 1, 0);  // the home never leaves
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(d.bad_messages(), 1u);
  // Node 3's write is queued behind node 2's; node 3 then leaves: its request is served first, then written back.
  send(MsgType::kWriteReq, 2, 0);
  uint32_t t2 = out[0].txn;
  send(MsgType::kWriteReq, 3, 0);
  send(MsgType::kLeave, 3, 0);
  EXPECT_TRUE(out.empty());
  send(MsgType::kReadReq, 3, 1);  // a leaving node sends no request; dropped
  EXPECT_EQ(d.bad_messages(), 2u);
  send(MsgType::kDone, 2, 0, t2);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kFetch, 2, 0);
  send(MsgType::kFetchAck, 2, 0, out[0].txn);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 3, 0);
  send(MsgType::kDone, 3, 0, out[0].txn);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kFetch, 3, 0);
  EXPECT_EQ(out[0].mode, FetchMode::kWriteBack);
  send(MsgType::kFetchAck, 3, 0, out[0].txn);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kLeaveDone, 3, 0);
  EXPECT_EQ(d.block(0).owner, 1);
}

TEST_F(DirFixture, NodeLostDuringTransactions) {
  txn(2, 0, Access::kWrite);  // block 0: only node 2 has it -> lost
  txn(3, 1, Access::kWrite);
  txn(2, 1, Access::kRead);   // block 1: 3 owns, 2 reads
  txn(4, 2, Access::kWrite);
  txn(3, 2, Access::kRead);   // block 2: 4 owns, 3 reads
  send(MsgType::kWriteReq, 4, 1);  // waits for 2's and 3's InvAck
  ASSERT_EQ(out.size(), 2u);
  uint32_t t = out[0].txn;
  send(MsgType::kReadReq, 2, 2);   // in flight for node 2 (copying from 4's frame: closed by Done)
  send(MsgType::kReadReq, 3, 2);   // queued behind it
  out.clear();
  std::vector<uint32_t> lost = d.on_node_lost(2, now, out);
  EXPECT_EQ(lost, (std::vector<uint32_t>{0}));
  EXPECT_EQ(d.lost_blocks(), 1u);
  EXPECT_EQ(d.block(0).owner, 1);
  // Block 2: node 2's grant is void, node 3's read is granted next.
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 3, 2);
  send(MsgType::kInvAck, 3, 1, t);  // block 1 no longer waits for node 2
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 4, 1);
  EXPECT_EQ(out[0].node, 3);
  EXPECT_EQ(d.check(), "");
}

TEST_F(DirFixture, SourceLostMidCopyIsGrantedAgain) {
  txn(2, 0, Access::kWrite);
  send(MsgType::kWriteReq, 3, 0);
  send(MsgType::kFetchAck, 2, 0, out[0].txn);
  ASSERT_EQ(out.size(), 1u);
  uint32_t t = out[0].txn;
  EXPECT_EQ(out[0].node, 2);
  out.clear();
  d.on_node_lost(2, now, out);
  ASSERT_EQ(out.size(), 1u);
  expect_msg(out[0], MsgType::kGrant, 3, 0);
  EXPECT_EQ(out[0].txn, t);
  EXPECT_EQ(out[0].node, 1);  // the home's (stale) frame
  send(MsgType::kDone, 3, 0, t);
  EXPECT_EQ(d.block(0).owner, 3);
  EXPECT_TRUE(d.block(0).exclusive);
}

// ---------------------------------------------------------------------------------------------------------------
// Simulated cluster: every node runs a NodeCache (the home also the HomeDirectory), pages carry one 64-bit word.

constexpr uint64_t kGarbage = 0xdeaddeaddeaddeadull;  // the frames of a node that left

struct Sim {
  enum class Map : uint8_t { kNone, kRO, kRW };
  struct Async {
    LA::Kind kind;
    uint32_t block;
    NodeId src;
  };
  struct Op {
    enum Kind : uint8_t { kRead, kWrite, kAdd } kind;
    uint32_t block;
  };
  struct Proc {
    std::deque<Op> ops;
    bool parked = false;
    uint32_t parked_on = 0;
    uint64_t parked_step = 0;
  };
  struct Node {
    NodeId id = 0;
    std::unique_ptr<NodeCache> cache;
    std::vector<uint64_t> frame;
    std::vector<Map> map;
    std::vector<Async> async;
    std::vector<Proc> procs;
    bool left = false;  // LeaveDone received, not joined again
    std::vector<int64_t> granted_at;  // home clock of the last grant without Done of each block (-1: with Done)
  };

  std::mt19937_64 rng;
  NodeId home = 1;
  uint32_t nblocks;
  int64_t quantum;
  int64_t now = 0;
  uint64_t step = 0;
  HomeDirectory dir;
  std::map<NodeId, Node> nodes;
  std::map<std::pair<NodeId, NodeId>, std::deque<Msg>> chan;
  std::vector<uint64_t> ref;  // the latest written value of each block
  uint64_t next_value = 1;
  std::string failure;
  // statistics
  uint64_t reads = 0, writes = 0, adds = 0, faults = 0, msgs = 0, max_wait = 0, quantum_waits = 0, leaves = 0;
  uint64_t write_grants_in_place = 0;  // write grants without Done (the upgrade of a read copy, write-ahead)
  uint64_t write_ahead_runs = 0;       // write grants of a run of more than one block
  uint64_t deferred_fetches = 0;       // Fetches that reached a write-ahead grant still being copied
  uint64_t home_gave_up = 0;           // the home's writable copies taken back at once for a write-ahead grant
  uint64_t batched_invalidations = 0;  // Invalidates of a run of blocks (one per holder for a write-ahead window)
  uint64_t batched_acks = 0;           // InvAcks of a run
  uint64_t data_acks = 0;              // downgrades acknowledged with the data, for the home's own read
  std::map<std::tuple<NodeId, uint32_t, uint32_t>, uint64_t> ack_data;  // (from, block, txn) -> value sent
  uint64_t max_fault_wait_bound = 20000;
  bool trace = false;

  Sim(uint64_t seed, int n_others, uint32_t nb, int64_t q, uint32_t readahead = 1, uint32_t writeahead = 1)
      : rng(seed), nblocks(nb), quantum(q), dir(kSeg, nb, 1, q), ref(nb, 0) {
    for (NodeId id = 1; id <= static_cast<NodeId>(n_others + 1); ++id) {
      Node& n = nodes[id];
      n.id = id;
      n.cache = std::make_unique<NodeCache>(kSeg, nb, id, home, readahead, 1 + static_cast<uint32_t>(seed % 2),
                                            writeahead);
      n.granted_at.assign(nb, -1);
      n.frame.assign(nb, 0);
      n.map.assign(nb, Map::kNone);
    }
  }
  uint64_t rnd(uint64_t n) { return n ? rng() % n : 0; }
  void fail(const std::string& s) {
    if (failure.empty()) failure = "step " + std::to_string(step) + ": " + s;
  }

  void script(Node& n, int procs, int ops_per_proc, bool with_adds) {
    n.procs.resize(static_cast<size_t>(procs));
    for (Proc& p : n.procs) {
      for (int i = 0; i < ops_per_proc; ++i) {
        if (rnd(8) == 0) {  // a sequential read sweep (read-ahead windows grow)
          for (uint32_t b = 0; b + 1 < nblocks; ++b) p.ops.push_back(Op{Op::kRead, b});
          continue;
        }
        if (rnd(8) == 0) {  // a sequential write sweep, from a random block on (write-ahead windows grow)
          for (uint32_t b = static_cast<uint32_t>(rnd(nblocks / 2)); b + 1 < nblocks; ++b)
            p.ops.push_back(Op{Op::kWrite, b});
          continue;
        }
        Op op;
        uint64_t r = rnd(10);
        if (with_adds && r < 3) {
          op.kind = Op::kAdd;
          op.block = nblocks - 1;  // the counter block: fetch-adds only
        } else {
          op.kind = r < 7 ? Op::kRead : Op::kWrite;
          op.block = static_cast<uint32_t>(rnd(with_adds ? nblocks - 1 : nblocks));
        }
        p.ops.push_back(op);
      }
    }
  }

  void send_all(std::vector<Msg>& out, NodeId from) {
    for (Msg& m : out) {
      if (m.type == MsgType::kFetch && m.to == home && from == home && m.txn == 0) {
        // The caller contract: the home's own downgrade for a read-ahead grant is carried out at once.
        std::vector<Msg> o;
        std::vector<LA> l;
        Node& h = nodes.at(home);
        h.cache->on_message(m, now, o, l);
        apply(h, l);
        if (!o.empty()) fail("the home acknowledged its own txn-0 downgrade or invalidation");
        if (m.mode == FetchMode::kInvalidate) ++home_gave_up;
        ++msgs;
        continue;
      }
      if (m.from != from) fail("message with wrong sender " + m.str());
      if (m.type == MsgType::kFetchAck && m.mode == FetchMode::kPushed) {
        // The data offered with a downgrade's ack for the home's read: sent with it (its value now), or, as a
        // Segment that cannot send it does, the offer withdrawn.
        if (from == home || m.txn % 4 == 0) m.mode = FetchMode::kNone;  // (not rng: same schedules)
        else ack_data[{from, m.block, m.txn}] = nodes.at(from).frame[m.block];
        data_acks += m.mode == FetchMode::kPushed;
      }
      if (m.type == MsgType::kGrant && m.access == Access::kWrite && m.txn == 0) ++write_grants_in_place;
      if (m.type == MsgType::kGrant && m.access == Access::kWrite && m.count > 1) ++write_ahead_runs;
      if (m.type == MsgType::kGrant && m.to <= nodes.size())
        for (uint32_t b = m.block; b < m.block + m.count && b < nblocks; ++b)
          nodes.at(m.to).granted_at[b] = m.txn == 0 ? now : -1;
      chan[{m.from, m.to}].push_back(m);
      ++msgs;
    }
    out.clear();
  }

  void apply(Node& n, std::vector<LA>& local) {
    for (const LA& a : local) {
      switch (a.kind) {
        case LA::kInstall:
          n.map[a.block] = a.writable ? Map::kRW : Map::kRO;
          break;
        case LA::kWriteProtect:
          if (n.map[a.block] != Map::kRW) fail("write-protect of a block not mapped writable");
          n.map[a.block] = Map::kRO;
          break;
        case LA::kInvalidate:
          n.map[a.block] = Map::kNone;
          break;
        case LA::kWake:
          for (Proc& p : n.procs)
            if (p.parked && p.parked_on == a.block) p.parked = false;
          break;
        case LA::kFetchData:
        case LA::kWriteBack:
          n.async.push_back(Async{a.kind, a.block, a.node});
          break;
        case LA::kLeft:
          for (Map m : n.map)
            if (m != Map::kNone) fail("a mapping survived LeaveDone");
          n.frame.assign(nblocks, kGarbage);  // frames released; a protocol bug reading them shows
          n.left = true;
          break;
      }
    }
    local.clear();
  }

  // Delivers the head of one channel.
  void deliver(std::pair<NodeId, NodeId> key) {
    auto& q = chan[key];
    Msg m = q.front();
    q.pop_front();
    if (trace) std::printf("%llu t=%lld deliver %s\n", static_cast<unsigned long long>(step), static_cast<long long>(now), m.str().c_str());
    std::vector<Msg> out;
    if (for_directory(m.type)) {
      if (m.to != home) fail("directory message to a non-home node");
      if (m.type == MsgType::kInvAck && m.count > 1) ++batched_acks;
      if (m.type == MsgType::kFetchAck && m.mode == FetchMode::kPushed) {
        // Segment::on_data_ack: into the home's frame only when the directory waits for this ack.
        auto it = ack_data.find({m.from, m.block, m.txn});
        if (it == ack_data.end()) fail("a data ack without data");
        else if (dir.wants_data_ack(m)) nodes.at(home).frame[m.block] = it->second;
        else m.mode = FetchMode::kNone;
        if (it != ack_data.end()) ack_data.erase(it);
      }
      dir.on_message(m, now, out);
      send_all(out, home);
      return;
    }
    Node& n = nodes.at(m.to);
    // Quantum: a node that holds the block never gives it up sooner than quantum after installing it.
    bool takes_away = m.type == MsgType::kInvalidate ||
                      (m.type == MsgType::kFetch && m.mode != FetchMode::kWriteBack);
    // (A read copy granted without Done holds from the grant: the home never learns when it was installed.)
    // An Invalidate of a run takes every block of it.
    for (uint32_t x = m.block; x < m.block + m.count && x < nblocks; ++x) {
      int64_t held_from = n.granted_at[x] >= 0 ? n.granted_at[x] : n.cache->installed_at(x);
      if (takes_away && n.cache->readable(x) && !n.cache->leaving() && now - held_from < quantum)
        fail("quantum violated at node " + std::to_string(n.id) + " by " + m.str());
    }
    if (m.type == MsgType::kInvalidate && m.count > 1) ++batched_invalidations;
    std::vector<LA> local;
    // Only a write grant without Done can be filling when a Fetch comes (the home waits for the Done of the others).
    if (m.type == MsgType::kFetch && n.cache->state(m.block) == NodeCache::State::kIMD) ++deferred_fetches;
    n.cache->on_message(m, now, out, local);
    apply(n, local);  // local pages first, then the acknowledgements leave
    send_all(out, n.id);
  }

  void complete_async(Node& n, size_t i) {
    Async a = n.async[i];
    n.async.erase(n.async.begin() + static_cast<std::ptrdiff_t>(i));
    if (trace) std::printf("%llu node %u async %d b=%u src=%u\n", static_cast<unsigned long long>(step), n.id, a.kind, a.block, a.src);
    std::vector<Msg> out;
    std::vector<LA> local;
    if (a.kind == LA::kFetchData) {
      n.frame[a.block] = a.src == kNoNode ? 0 : nodes.at(a.src).frame[a.block];
      n.cache->on_data_ready(a.block, now, out, local);
    } else {
      nodes.at(home).frame[a.block] = n.frame[a.block];
      n.cache->on_writeback_done(a.block, out);
    }
    apply(n, local);
    send_all(out, n.id);
  }

  void run_op(Node& n, Proc& p) {
    Op op = p.ops.front();
    Map m = n.map[op.block];
    if (trace) std::printf("%llu node %u op %d b=%u map=%d\n", static_cast<unsigned long long>(step), n.id, op.kind, op.block, static_cast<int>(m));
    bool ok = op.kind == Op::kRead ? m != Map::kNone : m == Map::kRW;
    if (ok && op.kind == Op::kRead && n.cache->readahead_mark(op.block)) {
      // The read-ahead mark is held but not mapped (Segment leaves it out of the view): its first read faults,
      // proceeds, and asks for the next window.
      std::vector<Msg> out;
      ++faults;
      if (n.cache->on_fault(op.block, Access::kRead, out) != NodeCache::Fault::kProceed)
        fail("a read of the held read-ahead mark did not proceed");
      send_all(out, n.id);
    }
    if (ok) {
      uint64_t& v = n.frame[op.block];
      if (op.kind == Op::kRead) {
        ++reads;
        if (v != ref[op.block])
          fail("node " + std::to_string(n.id) + " read " + std::to_string(v) + " from block " +
               std::to_string(op.block) + ", latest write was " + std::to_string(ref[op.block]));
      } else if (op.kind == Op::kWrite) {
        ++writes;
        v = ref[op.block] = next_value++;
      } else {
        ++adds;
        if (v != ref[op.block]) fail("fetch-add saw a stale value");
        v = ref[op.block] = v + 1;
      }
      if (p.parked_step) {
        max_wait = std::max(max_wait, step - p.parked_step);
        if (step - p.parked_step > max_fault_wait_bound) fail("a fault waited more than the bound");
        p.parked_step = 0;
      }
      p.ops.pop_front();
      return;
    }
    std::vector<Msg> out;
    ++faults;
    NodeCache::Fault f = n.cache->on_fault(op.block, op.kind == Op::kRead ? Access::kRead : Access::kWrite, out);
    send_all(out, n.id);
    if (f == NodeCache::Fault::kProceed) {
      fail("fault told to proceed on a block the caller does not map");
      return;
    }
    p.parked = true;
    p.parked_on = op.block;
    if (!p.parked_step) p.parked_step = step;
  }

  void check_invariants() {
    if (std::string s = dir.check(); !s.empty()) fail("directory: " + s);
    for (uint32_t b = 0; b < nblocks; ++b) {
      int rw = 0, ro = 0, excl = 0, shared = 0;
      for (auto& [id, n] : nodes) {
        Map m = n.map[b];
        rw += m == Map::kRW;
        ro += m == Map::kRO;
        if (m != Map::kNone && n.frame[b] != ref[b])
          fail("node " + std::to_string(id) + " maps block " + std::to_string(b) + " with a stale value");
        if ((m != Map::kNone) != n.cache->readable(b) || (m == Map::kRW) != n.cache->writable(b))
          fail("mapping differs from the cache state");
        excl += n.cache->writable(b);
        shared += n.cache->readable(b) && !n.cache->writable(b);
      }
      if (rw > 1 || (rw == 1 && ro > 0)) fail("two writers, or a writer and a reader, on block " + std::to_string(b));
      if (excl > 1 || (excl == 1 && shared > 0)) fail("single-writer invariant broken on block " + std::to_string(b));
    }
  }

  bool all_done() const {
    for (auto& [id, n] : nodes) {
      if (!n.async.empty() || n.cache->leaving()) return false;
      for (const Proc& p : n.procs)
        if (!p.ops.empty()) return false;
    }
    for (auto& [k, q] : chan)
      if (!q.empty()) return false;
    return dir.idle();
  }

  // One random enabled event. Returns false when nothing at all can happen.
  bool one_step() {
    ++step;
    now += static_cast<int64_t>(rnd(4));
    struct Ev {
      int kind;
      NodeId a, b;
      size_t i;
    };
    std::vector<Ev> ev;
    for (auto& [k, q] : chan)
      if (!q.empty()) ev.push_back({0, k.first, k.second, 0});
    for (auto& [id, n] : nodes) {
      for (size_t i = 0; i < n.async.size(); ++i) ev.push_back({1, id, 0, i});
      for (size_t i = 0; i < n.procs.size(); ++i)
        if (!n.procs[i].ops.empty() && !n.procs[i].parked) ev.push_back({2, id, 0, i});
      // A non-home node whose processes are all finished may leave the segment (then maybe join again).
      bool idle = std::all_of(n.procs.begin(), n.procs.end(), [](const Proc& p) { return p.ops.empty(); });
      if (id != home && idle && !n.left && !n.cache->leaving() && rnd(50) == 0) ev.push_back({3, id, 0, 0});
    }
    if (dir.next_timer_us() <= now) ev.push_back({4, 0, 0, 0});
    if (ev.empty()) {
      if (dir.next_timer_us() != kNever) {
        now = dir.next_timer_us();  // nothing else to do: time passes until the quantum expires
        ev.push_back({4, 0, 0, 0});
      } else {
        return false;
      }
    }
    const Ev e = ev[rnd(ev.size())];
    switch (e.kind) {
      case 0:
        deliver({e.a, e.b});
        break;
      case 1:
        complete_async(nodes.at(e.a), e.i);
        break;
      case 2: {
        Node& n = nodes.at(e.a);
        run_op(n, n.procs[e.i]);
        break;
      }
      case 3: {
        Node& n = nodes.at(e.a);
        std::vector<Msg> out;
        n.cache->leave(out);
        send_all(out, n.id);
        ++leaves;
        break;
      }
      case 4: {
        std::vector<Msg> out;
        ++quantum_waits;
        dir.on_timer(now, out);
        send_all(out, home);
        break;
      }
    }
    // A node that left may join again with a new script; its first faults fetch everything afresh.
    for (auto& [id, n] : nodes)
      if (n.left && rnd(20) == 0) {
        n.left = false;
        script(n, 2, 6, true);
      }
    check_invariants();
    return true;
  }

  // Runs to completion; returns "" or the first failure.
  std::string run(uint64_t max_steps) {
    while (failure.empty()) {
      if (all_done()) break;
      if (step >= max_steps) {
        fail("no completion within " + std::to_string(max_steps) + " steps (livelock?)");
        break;
      }
      if (!one_step()) {
        fail("deadlock: nothing can happen but work remains");
        break;
      }
    }
    if (!failure.empty()) return failure;
    // Final: the owner's frame of every block holds the latest value; nothing was dropped as bad.
    for (uint32_t b = 0; b < nblocks; ++b) {
      auto v = dir.block(b);
      uint64_t val = v.owner == kNoNode ? 0 : nodes.at(v.owner).frame[b];
      if (val != ref[b]) fail("owner frame of block " + std::to_string(b) + " lost the latest write");
    }
    if (dir.bad_messages()) fail("directory dropped messages");
    for (auto& [id, n] : nodes)
      if (n.cache->bad_messages()) fail("node " + std::to_string(id) + " dropped messages");
    return failure;
  }
};

// Directed scenario on the simulator: three nodes fault on one block at once (reads and writes), with the home's own
// processes taking part; everything is delivered in a fixed order.
TEST(DsmSim, ConcurrentFaultsOnOneBlock) {
  Sim s(1, 3, 1, 0);
  for (NodeId id = 1; id <= 4; ++id) {
    Sim::Node& n = s.nodes.at(id);
    n.procs.resize(1);
    n.procs[0].ops = {{id % 2 ? Sim::Op::kWrite : Sim::Op::kRead, 0}, {Sim::Op::kAdd, 0}, {Sim::Op::kRead, 0}};
  }
  EXPECT_EQ(s.run(10000), "");
  EXPECT_EQ(s.adds, 4u);
  EXPECT_EQ(s.dir.lost_blocks(), 0u);
}

struct SimTotals {
  uint64_t seeds = 0, steps = 0, max_steps = 0, reads = 0, writes = 0, adds = 0, faults = 0, msgs = 0, max_wait = 0,
           quantum_waits = 0, leaves = 0, prefetched = 0, write_grants_in_place = 0, data_acks = 0, written_ahead = 0,
           write_ahead_runs = 0, deferred_fetches = 0, home_gave_up = 0, batched_invalidations = 0, batched_acks = 0;
};

void run_seeds(uint64_t first, uint64_t count, SimTotals& tot) {
  for (uint64_t seed = first; seed < first + count; ++seed) {
    std::mt19937_64 pick(seed * 7919 + 1);
    int others = 3 + static_cast<int>(pick() % 2);              // 3..4 nodes besides the home
    uint32_t nb = 2 + static_cast<uint32_t>(pick() % 3);        // 2..4 blocks, the last one a counter
    int64_t q = std::array<int64_t, 4>{0, 3, 20, 100}[pick() % 4];
    // Read-ahead windows up to 1 (none), 2, 4 or 8 blocks; with read-ahead, sometimes up to 9 blocks.
    uint32_t ra = std::array<uint32_t, 4>{1, 2, 4, 8}[pick() % 4];
    if (ra > 1 && pick() % 2) nb += static_cast<uint32_t>(pick() % 6);
    // Write-ahead windows up to 1 (none), 2, 4 or 8 blocks, drawn independently of the read-ahead's.
    uint32_t wa = std::array<uint32_t, 4>{1, 2, 4, 8}[pick() % 4];
    if (wa > 1 && nb < 5 && pick() % 2) nb += static_cast<uint32_t>(pick() % 6);
    Sim s(seed, others, nb, q, ra, wa);
    if (const char* tr = std::getenv("DSM_TRACE"); tr && std::strtoull(tr, nullptr, 10) == seed) s.trace = true;
    uint64_t expected_adds = 0;
    for (auto& [id, n] : s.nodes) s.script(n, 2, 25, true);
    std::string r = s.run(400000);
    ASSERT_EQ(r, "") << "seed " << seed << " nodes " << others + 1 << " blocks " << nb << " quantum " << q;
    // Every fetch-add landed exactly once: the counter equals the number of fetch-adds executed.
    expected_adds = s.adds;
    auto v = s.dir.block(nb - 1);
    uint64_t counter = v.owner == kNoNode ? 0 : s.nodes.at(v.owner).frame[nb - 1];
    ASSERT_EQ(counter, expected_adds) << "seed " << seed;
    ++tot.seeds;
    tot.steps += s.step;
    tot.max_steps = std::max(tot.max_steps, s.step);
    tot.reads += s.reads;
    tot.writes += s.writes;
    tot.adds += s.adds;
    tot.faults += s.faults;
    tot.msgs += s.msgs;
    tot.max_wait = std::max(tot.max_wait, s.max_wait);
    tot.quantum_waits += s.quantum_waits;
    tot.leaves += s.leaves;
    tot.write_grants_in_place += s.write_grants_in_place;
    tot.data_acks += s.data_acks;
    for (auto& [id, n] : s.nodes) tot.prefetched += n.cache->prefetched();
    for (auto& [id, n] : s.nodes) tot.written_ahead += n.cache->written_ahead();
    tot.write_ahead_runs += s.write_ahead_runs;
    tot.deferred_fetches += s.deferred_fetches;
    tot.home_gave_up += s.home_gave_up;
    tot.batched_invalidations += s.batched_invalidations;
    tot.batched_acks += s.batched_acks;
  }
}

TEST(DsmSim, RandomizedModelCheck) {
  SimTotals tot;
  // DSM_SIM_SEEDS: more seeds for a longer search (the default keeps the unit suite fast).
  const char* more = std::getenv("DSM_SIM_SEEDS");
  uint64_t seeds = more ? std::strtoull(more, nullptr, 10) : 1500;
  run_seeds(1, seeds, tot);
  EXPECT_EQ(tot.seeds, seeds);
  EXPECT_GT(tot.leaves, 0u);
  EXPECT_GT(tot.quantum_waits, 0u);
  EXPECT_GT(tot.prefetched, 0u);  // read-ahead windows were granted
  EXPECT_GT(tot.write_grants_in_place, 0u);  // upgrades in place were granted without Done
  EXPECT_GT(tot.data_acks, 0u);  // downgrades for the home's reads were acknowledged with the data
  EXPECT_GT(tot.written_ahead, 0u);  // write-ahead windows were granted
  EXPECT_GT(tot.write_ahead_runs, 0u);  // as runs of more than one block
  EXPECT_GT(tot.deferred_fetches, 0u);  // a Fetch met a write-ahead grant still being copied
  EXPECT_GT(tot.home_gave_up, 0u);  // the home's own writable copy was taken back for a write-ahead grant
  EXPECT_GT(tot.batched_invalidations, 0u);  // one Invalidate per holder for the run of a write-ahead window
  EXPECT_GT(tot.batched_acks, 0u);           // and one InvAck back
  std::printf(
      "seeds %llu, steps %llu (max %llu per seed), reads %llu, writes %llu, fetch-adds %llu, faults %llu, "
      "messages %llu, longest fault wait %llu steps, quantum timer firings %llu, leaves %llu, prefetched %llu, write grants in place %llu, data acks %llu, "
      "written ahead %llu (runs of 2+ blocks %llu, Fetches deferred while copying one %llu, home copies taken back %llu, Invalidates of a run %llu, InvAcks of a run %llu)\n",
      static_cast<unsigned long long>(tot.seeds), static_cast<unsigned long long>(tot.steps),
      static_cast<unsigned long long>(tot.max_steps), static_cast<unsigned long long>(tot.reads),
      static_cast<unsigned long long>(tot.writes), static_cast<unsigned long long>(tot.adds),
      static_cast<unsigned long long>(tot.faults), static_cast<unsigned long long>(tot.msgs),
      static_cast<unsigned long long>(tot.max_wait), static_cast<unsigned long long>(tot.quantum_waits),
      static_cast<unsigned long long>(tot.leaves), static_cast<unsigned long long>(tot.prefetched),
      static_cast<unsigned long long>(tot.write_grants_in_place), static_cast<unsigned long long>(tot.data_acks),
      static_cast<unsigned long long>(tot.written_ahead),
      static_cast<unsigned long long>(tot.write_ahead_runs), static_cast<unsigned long long>(tot.deferred_fetches),
      static_cast<unsigned long long>(tot.home_gave_up), static_cast<unsigned long long>(tot.batched_invalidations),
      static_cast<unsigned long long>(tot.batched_acks));
}

}  // namespace
}  // namespace dipc::dsm
