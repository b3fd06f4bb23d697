// The DSM runtime (dsm::Manager, dsm::Segment) on two nodes in this process over the loopback provider: real
// memfds and userfaultfds, a thread per "process" touching the views, the nodes' daemons sharing one EventLoop, and
// the fabric's faults injected (link loss during a write upgrade, no resources, chunked registration).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "common/event_loop.h"
#include "dsm/segment.h"
#include "transport/loopback/loopback_transport.h"

namespace dipc::dsm {
namespace {

constexpr uint64_t kSeg = 7;

int make_uffd() {
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0) return -1;
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
  if (ioctl(fd, UFFDIO_API, &api) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

struct Node {
  std::unique_ptr<transport::Transport> tr;
  std::unique_ptr<Manager> dsm;
  uint8_t* view = nullptr;
  uint64_t len = 0;
  int uffd = -1;
};

class DsmOverLoopback : public ::testing::Test {
 protected:
  void build(transport::LoopbackOptions opt, uint64_t size, NodeId nodes = 2) {
    std::vector<transport::NodeId> ids;
    for (NodeId id = 1; id <= nodes; ++id) ids.push_back(id);
    fabric_ = std::make_unique<transport::LoopbackFabric>(loop_, ids, opt);
    for (NodeId id : ids) {
      auto n = std::make_unique<Node>();
      n->tr = fabric_->make(id);
      n->dsm = std::make_unique<Manager>(loop_, n->tr.get(), id, 4096, 0);
      ASSERT_TRUE(n->tr->set_handler(transport::ops::kDsm, n->dsm.get()));
      ASSERT_TRUE(n->tr->start());
      nodes_.push_back(std::move(n));
    }
    ASSERT_TRUE(pump([&] {
      for (auto& x : nodes_)
        for (NodeId id : ids)
          if (id != x->dsm->self() && !x->tr->peer_up(id)) return false;
      return true;
    }));
    for (auto& n : nodes_) {
      auto s = n->dsm->open(kSeg, 1, size, 4096);  // the home's block size, as ShmAtResp carries it
      ASSERT_TRUE(s) << s.status().str();
      n->len = (*s)->mapped_size();
      void* p = mmap(nullptr, n->len, PROT_READ | PROT_WRITE, MAP_SHARED, (*s)->view_fd(), 0);
      ASSERT_NE(p, MAP_FAILED);
      n->view = static_cast<uint8_t*>(p);
      int uffd = make_uffd();
      if (uffd < 0) GTEST_SKIP() << "no userfaultfd with shmem write-protection here";
      uffdio_register r{};
      r.range.start = reinterpret_cast<uint64_t>(p);
      r.range.len = n->len;
      r.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
      ASSERT_EQ(ioctl(uffd, UFFDIO_REGISTER, &r), 0) << strerror(errno);
      n->uffd = dup(uffd);  // the test's own handle on the attach's userfaultfd (the segment owns `uffd`)
      ASSERT_TRUE((*s)->add_attach(1, uffd, reinterpret_cast<uint64_t>(p), n->len, false));
    }
  }
  void TearDown() override {
    for (auto& n : nodes_) {
      if (n->dsm) n->dsm->destroy(kSeg);  // closes the userfaultfds: a thread still faulting is released
      if (n->view) munmap(n->view, n->len);
      if (n->uffd >= 0) close(n->uffd);
    }
    for (auto& t : threads_) t.join();
    for (auto& n : nodes_)
      if (n->tr) n->tr->stop();
  }
  // Runs the daemons' loop until `done`; bounded (10 s).
  bool pump(const std::function<bool()>& done) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      loop_.run_once(1);
    }
    return true;
  }
  // Runs `fn` on a thread of its own (a process of the node touching its view); true once it returned.
  bool access(std::function<void()> fn) {
    auto finished = std::make_shared<std::atomic<bool>>(false);
    threads_.emplace_back([fn = std::move(fn), finished] {
      fn();
      finished->store(true);
    });
    return pump([&] { return finished->load(); });
  }
  Node& n(int i) { return *nodes_[i - 1]; }
  void sequential_reader(transport::LoopbackOptions opt);

  EventLoop loop_;
  std::unique_ptr<transport::LoopbackFabric> fabric_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<std::thread> threads_;
};

TEST_F(DsmOverLoopback, AWriteOnOneNodeIsReadOnTheOther) {
  build({}, 4 * 4096);
  if (IsSkipped() || HasFatalFailure()) return;  // no userfaultfd here (qemu-user, old kernels)
  ASSERT_TRUE(access([&] { n(1).view[100] = 0x42; }));
  uint8_t got = 0;
  ASSERT_TRUE(access([&] { got = n(2).view[100]; }));
  EXPECT_EQ(got, 0x42);
  ASSERT_TRUE(access([&] { n(2).view[4096 + 5] = 7; }));  // node 2 writes; the home reads it back
  ASSERT_TRUE(access([&] { got = n(1).view[4096 + 5]; }));
  EXPECT_EQ(got, 7);
  EXPECT_GT(n(2).dsm->stats().pushes + n(2).dsm->stats().remote_fetches + n(1).dsm->stats().pushes, 0u);
}

TEST_F(DsmOverLoopback, APinningProviderGetsTheFramesRegisteredChunkByChunkAsTheyAreUsed) {
  transport::LoopbackOptions o;
  o.pins_memory = true;
  const uint64_t size = 8 * kPinChunk;
  build(o, size);
  if (IsSkipped() || HasFatalFailure()) return;  // no userfaultfd here (qemu-user, old kernels)
  EXPECT_EQ(n(2).dsm->stats().registered_bytes, 0u);  // nothing pinned at shmget/shmat
  ASSERT_TRUE(access([&] {
    n(1).view[0] = 1;
    n(1).view[5 * kPinChunk + 3] = 2;
  }));
  uint8_t a = 0, b = 0;
  ASSERT_TRUE(access([&] {
    a = n(2).view[0];
    b = n(2).view[5 * kPinChunk + 3];
  }));
  EXPECT_EQ(a, 1);
  EXPECT_EQ(b, 2);
  EXPECT_EQ(n(2).dsm->stats().registered_bytes, 2 * kPinChunk);
  EXPECT_LE(n(1).dsm->stats().registered_bytes, 2 * kPinChunk);
}

TEST_F(DsmOverLoopback, NoCoherenceMessageIsLostWhenTheTransportRunsOutOfResources) {
  build({}, 16 * 4096);
  if (IsSkipped() || HasFatalFailure()) return;  // no userfaultfd here (qemu-user, old kernels)
  fabric_->set_max_outstanding(1);
  fabric_->set_delay_us(200);
  ASSERT_TRUE(access([&] {
    for (int p = 0; p < 16; ++p) n(1).view[p * 4096] = static_cast<uint8_t>(p + 1);
  }));
  std::vector<uint8_t> got(16);
  ASSERT_TRUE(access([&] {
    for (int p = 0; p < 16; ++p) got[p] = n(2).view[p * 4096];
  })) << "a coherence message was dropped: a transaction hangs";
  for (int p = 0; p < 16; ++p) EXPECT_EQ(got[p], p + 1);
  EXPECT_GT(n(1).dsm->stats().messages_deferred + n(2).dsm->stats().messages_deferred, 0u);
}

TEST_F(DsmOverLoopback, LinkLossDuringAWriteUpgradeNeitherHangsNorLosesCoherence) {
  build({}, 4 * 4096);
  if (IsSkipped() || HasFatalFailure()) return;  // no userfaultfd here (qemu-user, old kernels)
  ASSERT_TRUE(access([&] { n(1).view[0] = 1; }));
  uint8_t got = 0;
  ASSERT_TRUE(access([&] { got = n(2).view[0]; }));  // node 2 holds the block Shared
  ASSERT_EQ(got, 1);
  // Node 2 upgrades to write; the home's answer never gets through: the link goes down meanwhile.
  fabric_->pause(1, 2, true);
  auto finished = std::make_shared<std::atomic<bool>>(false);
  threads_.emplace_back([this, finished] {
    n(2).view[0] = 9;
    finished->store(true);
  });
  for (int i = 0; i < 50; ++i) loop_.run_once(1);
  EXPECT_FALSE(finished->load()) << "the write upgrade completed without the home's grant";
  fabric_->set_link(1, 2, false);
  fabric_->pause(1, 2, false);
  for (int i = 0; i < 20; ++i) loop_.run_once(1);
  fabric_->set_link(1, 2, true);
  ASSERT_TRUE(pump([&] { return finished->load(); })) << "the writer hangs after the link came back";
  ASSERT_TRUE(access([&] { got = n(1).view[0]; }));
  EXPECT_EQ(got, 9) << "the home reads a value the cluster has moved past";
}

// A punch of V (the invalidation of a read copy) may cost the block its uffd-wp protection: the kernel keeps it as
// a pte marker when it unmaps a protected page, but a process that faults the page back in while the punch runs (a
// reader spinning on the block) has its pte zapped once more by the truncation, and that zap drops markers
// (unmap_mapping_folio, ZAP_FLAG_DROP_MARKER). The next read copy must then be write-protected anew: installed
// unprotected, the process's writes stay in its node's view, never fault, and every other node reads a stale value
// for good (ShmBigBlocksNoQuantum.TwoWritersPingPongOnePageStillBothProgress hung that way about one run in ten
// under load). The kernel's race is not reproducible on demand; its outcome is: the test clears node 2's
// protection itself after the punch, as that zap would.
TEST_F(DsmOverLoopback, AReadCopyIsWriteProtectedAgainAfterThePunchDroppedItsProtection) {
  build({}, 4 * 4096);
  if (IsSkipped() || HasFatalFailure()) return;  // no userfaultfd here (qemu-user, old kernels)
  ASSERT_TRUE(access([&] { n(1).view[0] = 1; }));
  uint8_t got = 0;
  ASSERT_TRUE(access([&] { got = n(2).view[0]; }));  // node 2 holds a read copy, write-protected
  ASSERT_EQ(got, 1);
  ASSERT_TRUE(access([&] { n(1).view[0] = 2; }));  // node 2's copy is invalidated: V punched
  uffdio_writeprotect clear{{reinterpret_cast<uint64_t>(n(2).view), 4096}, 0};
  ASSERT_EQ(ioctl(n(2).uffd, UFFDIO_WRITEPROTECT, &clear), 0) << strerror(errno);  // the marker dropped
  ASSERT_TRUE(access([&] { got = n(2).view[0]; }));                                // a read copy again
  ASSERT_EQ(got, 2);
  ASSERT_TRUE(access([&] { n(2).view[0] = 3; }));  // must fault and take the block from node 1
  ASSERT_TRUE(access([&] { got = n(1).view[0]; }));
  EXPECT_EQ(got, 3) << "node 2 wrote into a read copy without a fault: node 1 reads a stale value";
}

// A sequential reader on node 2 gets node 1's pages window by window (read-ahead: each window pushed and installed
// in one piece, the next asked for at the first touch of the window's mark): it reads every page's own value, with
// a fault per window rather than per page, and holds them once (its frames punched). The pages so installed are read
// copies like any other: a write into one (inside a window, or its mark) still faults and takes the block, so node 1
// reads the new value (copied from node 2's view into its frames when node 1 asks for it).
// A sequential reader on node 2 of what node 1 wrote: every page right, windows installed whole, read copies held
// once and still write-protected (the read-ahead mark too, installed later from the frame).
void DsmOverLoopback::sequential_reader(transport::LoopbackOptions opt) {
  constexpr uint32_t kPages = 1024;
  build(opt, uint64_t{kPages} * 4096);
  if (IsSkipped() || HasFatalFailure()) return;  // no userfaultfd here (qemu-user, old kernels)
  auto word = [](Node& x, uint32_t p) { return reinterpret_cast<volatile uint32_t*>(x.view + uint64_t{p} * 4096 + 8); };
  ASSERT_TRUE(access([&] {
    for (uint32_t p = 0; p < kPages; ++p) *word(n(1), p) = 0x1000 + p;
  }));
  std::vector<uint32_t> got(kPages);
  ASSERT_TRUE(access([&] {
    for (uint32_t p = 0; p < kPages; ++p) got[p] = *word(n(2), p);
  }));
  for (uint32_t p = 0; p < kPages; ++p) ASSERT_EQ(got[p], 0x1000 + p) << "page " << p;
  const Stats& s2 = n(2).dsm->stats();
  EXPECT_LT(s2.faults, kPages / 16) << "node 2 took about a fault per page: the windows were not installed whole";
  EXPECT_GT(s2.prefetched, kPages / 2);
  // Held once: the read copies the home pushed are punched from node 2's frames once in its view.
  EXPECT_GT(s2.frames_released, kPages / 2);
  uint64_t faults = s2.faults;
  uint32_t mark = 0;
  for (uint32_t p = kPages - 1; p > 0 && !mark; --p)  // a window's mark, if one is left unmapped
    if (n(2).dsm->find(kSeg)->cache().readahead_mark(p)) mark = p;
  for (uint32_t p : {kPages / 2 + 3, kPages - 1, mark}) {
    if (p == 0) continue;
    ASSERT_TRUE(access([&] { *word(n(2), p) = 0xbeef0000 + p; }));
    uint32_t v = 0;
    ASSERT_TRUE(access([&] { v = *word(n(1), p); }));
    EXPECT_EQ(v, 0xbeef0000 + p) << "node 2 wrote page " << p << " of its read copy without a fault";
  }
  EXPECT_GT(s2.faults, faults);
}

TEST_F(DsmOverLoopback, ASequentialReaderSeesEveryPageWithTheWindowsInstalledInBulkAndTheirCopiesStayProtected) {
  sequential_reader({});
}

// Without native one-sided operations (as over tcp) the home pushes each window as one message (kOpPush), which
// node 2 copies straight into its view: the same pages, the same protection.
TEST_F(DsmOverLoopback, ASequentialReaderOverAProviderWithoutNativeRmaGetsEachWindowAsOneMessage) {
  transport::LoopbackOptions opt;
  opt.native_rma = false;
  sequential_reader(opt);
  if (IsSkipped() || HasFatalFailure()) return;
  EXPECT_GT(n(1).dsm->stats().pushes, 512u);
}

// The home holds a segment once too (docs/ARCHITECTURE.md, "Memory on a node"): what its processes wrote stays in
// its view, and its frames are released once the view holds the block; a push to a reader is copied from the view.
// After node 2 read all of it, each node's view and frames memfds together hold about the segment's size, not twice
// it, and the data still moves both ways: the home's writes after the remote read are seen on node 2, node 2's
// writes on the home, and a second full read by node 2 of what the home wrote again leaves the memory as it was.
TEST_F(DsmOverLoopback, ATouchedSegmentIsHeldOnceOnTheHomeAndOnTheReaderOverAProviderWithoutNativeRma) {
  constexpr uint32_t kPages = 512;
  constexpr uint64_t kSize = uint64_t{kPages} * 4096;
  transport::LoopbackOptions opt;
  opt.native_rma = false;  // as tcp
  build(opt, kSize);
  if (IsSkipped() || HasFatalFailure()) return;  // no userfaultfd here (qemu-user, old kernels)
  auto word = [](Node& x, uint32_t p) { return reinterpret_cast<volatile uint32_t*>(x.view + uint64_t{p} * 4096 + 8); };
  auto held = [&](int i) {
    Segment::Footprint f = n(i).dsm->find(kSeg)->footprint();
    return f.view + f.frames;
  };
  for (uint32_t round = 1; round <= 2; ++round) {
    ASSERT_TRUE(access([&] {
      for (uint32_t p = 0; p < kPages; ++p) *word(n(1), p) = round << 16 | p;
    }));
    std::vector<uint32_t> got(kPages);
    ASSERT_TRUE(access([&] {
      for (uint32_t p = 0; p < kPages; ++p) got[p] = *word(n(2), p);
    }));
    for (uint32_t p = 0; p < kPages; ++p) ASSERT_EQ(got[p], round << 16 | p) << "round " << round << " page " << p;
    // About once: the view whole, the frames at most a read-ahead window or two (marks, blocks in flight).
    EXPECT_LE(held(1), kSize + kSize / 8) << "round " << round << ": the home holds the segment twice";
    EXPECT_LE(held(2), kSize + kSize / 8) << "round " << round << ": the reader holds the segment twice";
    EXPECT_GE(n(1).dsm->find(kSeg)->footprint().view, kSize);
  }
  // Both ways after the release: a home write is seen remotely, a remote write at the home.
  ASSERT_TRUE(access([&] { *word(n(1), 7) = 0xabc; }));
  uint32_t v = 0;
  ASSERT_TRUE(access([&] { v = *word(n(2), 7); }));
  EXPECT_EQ(v, 0xabcu);
  // The home writes page 9 again (node 2's copy invalidated), then node 2 writes one word of it: the rest of the
  // page is the home's data (the home put it back into its frame from its view when it gave the page up), and the
  // home reads both back.
  ASSERT_TRUE(access([&] { *word(n(1), 9) = 0x999; }));
  ASSERT_TRUE(access([&] { *reinterpret_cast<volatile uint32_t*>(n(2).view + 9 * 4096 + 100) = 0xdef; }));
  uint32_t w = 0;
  ASSERT_TRUE(access([&] {
    v = *reinterpret_cast<volatile uint32_t*>(n(1).view + 9 * 4096 + 100);
    w = *word(n(1), 9);
  }));
  EXPECT_EQ(v, 0xdefu);
  EXPECT_EQ(w, 0x999u) << "the home's data of a page node 2 wrote one word of is lost";
  EXPECT_LE(held(1), kSize + kSize / 8);
}

// A writer on the home and a reader on node 2 taking turns on one page, with the home's frame released: every remote
// read gets the value of the latest write completed before it (pushed from the home's write-protected view), and
// every home write after it takes the page back (node 2's copy invalidated); the home's frame is never filled.
TEST_F(DsmOverLoopback, ARemoteReaderAlternatingWithAWriterOnTheHomeReadsEveryCompletedWrite) {
  transport::LoopbackOptions opt;
  opt.native_rma = false;
  build(opt, 4 * 4096);
  if (IsSkipped() || HasFatalFailure()) return;  // no userfaultfd here (qemu-user, old kernels)
  constexpr uint32_t kWrites = 300;
  auto home = reinterpret_cast<volatile uint32_t*>(n(1).view + 64);
  auto remote = reinterpret_cast<volatile uint32_t*>(n(2).view + 64);
  struct Shared {
    std::atomic<uint32_t> written{0}, read{0}, stale{0};
    std::atomic<bool> stop{false}, done{false};
  };
  auto sh = std::make_shared<Shared>();
  threads_.emplace_back([home, sh] {
    for (uint32_t i = 1; i <= kWrites && !sh->stop.load(); ++i) {
      *home = i;
      sh->written.store(i);
      while (sh->read.load() < i && !sh->stop.load()) std::this_thread::yield();  // node 2 read it
    }
  });
  threads_.emplace_back([remote, sh] {
    while (!sh->stop.load()) {
      uint32_t w = sh->written.load();
      uint32_t x = *remote;
      if (x < w && !sh->stale.load()) sh->stale.store(w);
      sh->read.store(w);
      if (w == kWrites) break;
    }
    sh->done.store(true);
  });
  bool finished = pump([&] { return sh->done.load(); });
  sh->stop.store(true);
  ASSERT_TRUE(finished) << "the alternation hangs at write " << sh->written.load();
  EXPECT_EQ(sh->stale.load(), 0u) << "node 2 read a value older than the home's write that completed before";
  EXPECT_GE(n(1).dsm->stats().pushes, kWrites / 2);
  Segment::Footprint f = n(1).dsm->find(kSeg)->footprint();
  EXPECT_LE(f.frames, 4096u) << "the home keeps the page in its frames too";
}

// The home gives up a page it holds read-only with its frame released (it wrote the page, node 2 read it): node 3's
// write takes it from the home's frame, which the home filled from its view before it dropped the page, so the rest
// of the page is the home's data on node 3, not zeros.
TEST_F(DsmOverLoopback, AWriterOnAThirdNodeGetsThePageTheHomeHeldInItsViewAlone) {
  transport::LoopbackOptions opt;
  opt.native_rma = false;
  build(opt, 4 * 4096, 3);
  if (IsSkipped() || HasFatalFailure()) return;  // no userfaultfd here (qemu-user, old kernels)
  auto at = [](Node& x, uint64_t off) { return reinterpret_cast<volatile uint32_t*>(x.view + off); };
  ASSERT_TRUE(access([&] { *at(n(1), 4096 + 8) = 0x1234; }));
  uint32_t v = 0;
  ASSERT_TRUE(access([&] { v = *at(n(2), 4096 + 8); }));  // the home's copy downgraded, node 2 holds one
  ASSERT_EQ(v, 0x1234u);
  ASSERT_TRUE(access([&] { *at(n(3), 4096 + 100) = 0x5678; }));  // both copies invalidated
  uint32_t w = 0;
  ASSERT_TRUE(access([&] {
    v = *at(n(3), 4096 + 8);
    w = *at(n(3), 4096 + 100);
  }));
  EXPECT_EQ(v, 0x1234u) << "node 3 got the page without the home's data";
  EXPECT_EQ(w, 0x5678u);
  ASSERT_TRUE(access([&] { v = *at(n(1), 4096 + 100); }));
  EXPECT_EQ(v, 0x5678u);
}

// Grants the home cannot push (here the provider refuses messages as large as a block) name the home's frame: the
// reader copies the block from there when it will, so the home puts what its view holds back into the frame first
// and keeps it there (a released frame would give the reader zeros).
TEST_F(DsmOverLoopback, AGrantTheHomeCannotPushIsCopiedFromItsFrameFilledFromTheView) {
  transport::LoopbackOptions opt;
  opt.native_rma = false;
  opt.max_message = 1024;  // no kOpPush gets through; coherence messages do
  build(opt, 16 * 4096);
  if (IsSkipped() || HasFatalFailure()) return;  // no userfaultfd here (qemu-user, old kernels)
  ASSERT_TRUE(access([&] {
    for (int p = 0; p < 16; ++p) n(1).view[p * 4096 + 1] = static_cast<uint8_t>(p + 1);
  }));
  EXPECT_LE(n(1).dsm->find(kSeg)->footprint().frames, 4096u);  // released: the view holds the pages
  std::vector<uint8_t> got(16);
  ASSERT_TRUE(access([&] {
    for (int p = 0; p < 16; ++p) got[p] = n(2).view[p * 4096 + 1];
  }));
  for (int p = 0; p < 16; ++p) EXPECT_EQ(got[p], p + 1) << "page " << p;
  EXPECT_EQ(n(1).dsm->stats().pushes, 0u);
  EXPECT_GT(n(2).dsm->stats().remote_fetches, 0u);
}

}  // namespace
}  // namespace dipc::dsm
