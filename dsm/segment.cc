#include "dsm/segment.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <new>
#include <sstream>

#include "common/log.h"

// At log level debug, every coherence message in and out, fault, local action and copy of a node is logged (the
// arguments are built only then): a coherence bug is read off the daemons' logs.
#define DSM_TRACE(...)                                                        \
  do {                                                                        \
    if (spdlog::should_log(spdlog::level::debug)) spdlog::debug(__VA_ARGS__); \
  } while (0)

namespace dipc::dsm {

namespace {
constexpr uint64_t kStateBytesPerBlock = 128;  // home directory, node cache and flags of one block, about
constexpr uint32_t kMaxGarbage = 64;            // events an attach's userfaultfd may send that are not its faults
constexpr unsigned kMfdHugeShift = 26;          // MFD_HUGE_SHIFT (<linux/memfd.h>): log2 of the huge page size
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

// F's mapping and descriptor, released when the last deregistration of its chunks completed (the transport may
// still copy into F until then).
struct FramesMapping {
  uint8_t* p = nullptr;
  uint64_t len = 0;
  int fd = -1;
  FramesMapping() = default;
  FramesMapping(const FramesMapping&) = delete;
  FramesMapping& operator=(const FramesMapping&) = delete;
  ~FramesMapping() {
    if (p) munmap(p, len);
    if (fd >= 0) close(fd);
  }
};

uint64_t addr_of(const void* p) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)); }

Status errno_status(const char* what) {
  int e = errno;
  DIPC_LOG_ERROR("dsm: {}: {}", what, strerror(e));
  return Status::err(e);
}
}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Segment

Segment::Segment(Manager& m, uint64_t id, NodeId home, uint64_t size, const Geometry& g)
    : m_(m),
      id_(id),
      home_(home),
      size_(size),
      mapped_(g.mapped),
      block_(g.block),
      huge_(g.huge_page),
      nblocks_(g.nblocks),
      cache_(id, nblocks_, m.self(), home, readahead_blocks(), kReadAheadWindows, writeahead_blocks()) {
  chunk_ = m.transport()->caps().pins_memory ? std::max(kPinChunk, block_) : mapped_;
  chunks_.resize((mapped_ + chunk_ - 1) / chunk_);
  if (home == m.self()) dir_ = std::make_unique<HomeDirectory>(id, nblocks_, home, m.quantum_us());
  flags_.assign(nblocks_, 0);
}

Segment::~Segment() {
  dead_ = true;
  m_.awaiting_ -= awaiting_.size();
  if (timer_) m_.loop().cancel_timer(timer_);
  for (auto& [aid, a] : attaches_) {
    m_.loop().remove(a.fd);
    close(a.fd);
  }
  // Programs may keep a descriptor of V for their next attach (preload/shm.cc): the segment's memory is not held
  // by them once it is gone (their next attach of it is refused: ESTALE).
  if (view_fd_.get() >= 0 && mapped_ > 0 &&
      fallocate(view_fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(mapped_)) != 0)
    DIPC_LOG_DEBUG("dsm: emptying the view of segment {}: {}", static_cast<int32_t>(id_), strerror(errno));
  if (install_) munmap(install_, mapped_);  // with the view's last mapping in dipcd, its huge page reservation
  if (view_ro_) munmap(const_cast<uint8_t*>(view_ro_), mapped_);
  // F stays mapped until the transport has finished or cancelled every operation on it.
  std::shared_ptr<void> mapping = std::move(frames_map_);
  for (auto& c : chunks_) {
    if (!c.id) continue;
    m_.stats().registered_bytes -= c.length;
    m_.transport()->deregister_region(c.id, [mapping] {});
  }
}

Result<const transport::MemRegion*> Segment::frames_chunk(uint64_t offset) {
  uint64_t i = offset / chunk_;
  if (!frames_ || i >= chunks_.size()) return Status::err(EINVAL);
  transport::MemRegion& c = chunks_[i];
  if (!c.id) {
    uint64_t at = i * chunk_, len = std::min(chunk_, mapped_ - at);
    auto r = m_.transport()->register_region(frames_ + at, len);
    if (!r) {
      DIPC_LOG_ERROR("dsm: segment {}: cannot register {} bytes of frames with the {} transport: {}{}", id_, len,
                     m_.transport()->name(), r.status().str(),
                     r.status().code() == ENOMEM ? " (raise the memlock limit: LimitMEMLOCK in dipcd.service)" : "");
      return r.status();
    }
    c = *r;
    m_.stats().registered_bytes += len;
  }
  return &c;
}

Status Segment::init() {
  if (nblocks_ == 0) return Status::err(EINVAL);
  unsigned huge = huge_ ? MFD_HUGETLB | (static_cast<unsigned>(std::countr_zero(huge_)) << kMfdHugeShift) : 0;
  view_fd_.reset(memfd_create("dipc-shm-view", MFD_CLOEXEC | MFD_ALLOW_SEALING | huge));
  if (!view_fd_) {
    if (huge_ && errno == EINVAL) {  // no pool of pages of that size on this node
      DIPC_LOG_WARN("dsm: segment {}: this node has no huge pages of {} bytes", static_cast<int32_t>(id_), huge_);
      return Status::err(EINVAL);
    }
    return errno_status("memfd_create");
  }
  if (ftruncate(view_fd_.get(), static_cast<off_t>(mapped_)) != 0) return errno_status("ftruncate view");
  // Only the daemon may open the view by name: a program given a read-only descriptor cannot reopen it writable
  // through /proc/self/fd (the kernel checks the inode's mode there; an open descriptor keeps its access mode).
  if (fchmod(view_fd_.get(), 0600) != 0) return errno_status("chmod view");
  // Programs get this fd: they may map it, never resize it under the other processes.
  if (fcntl(view_fd_.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) return errno_status("seal view");
  if (huge_) {
    if (Status st = init_huge(); !st) return st;
  }
  frames_fd_.reset(memfd_create("dipc-shm-frames", MFD_CLOEXEC));
  if (!frames_fd_) return errno_status("memfd_create");
  if (ftruncate(frames_fd_.get(), static_cast<off_t>(mapped_)) != 0) return errno_status("ftruncate frames");
  void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_SHARED, frames_fd_.get(), 0);
  if (p == MAP_FAILED) return errno_status("mmap frames");
  frames_ = static_cast<uint8_t*>(p);
  auto fm = std::make_shared<FramesMapping>();
  fm->p = frames_;
  fm->len = mapped_;
  fm->fd = frames_fd_.release();
  frames_fd_num_ = fm->fd;
  frames_map_ = std::move(fm);
  // Memory a provider does not pin is registered whole at once; pinned memory chunk by chunk as it is used.
  if (!m_.transport()->caps().pins_memory) {
    auto r = frames_chunk(0);
    if (!r) return r.status();
  }
  return Status::ok();
}

// hugetlbfs refuses write(2), so blocks are installed with UFFDIO_COPY through a mapping of V that only dipcd has and
// never touches: the kernel copies a whole huge page, then adds it to V's page cache and maps it, so no local process
// ever sees a page half written (a memcpy through a plain mapping would fault a zeroed page into V first, visible
// to every process that touches it meanwhile). The mapping is shared, so it reserves the segment's huge pages on
// this node as the kernel's shmget(SHM_HUGETLB) does: a node that cannot is refused here (ENOMEM), never later.
Status Segment::init_huge() {
  void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_SHARED, view_fd_.get(), 0);
  if (p == MAP_FAILED) {
    int e = errno;
    DIPC_LOG_WARN("dsm: segment {}: cannot reserve {} huge pages of {} bytes on this node: {}",
                  static_cast<int32_t>(id_), mapped_ / huge_, huge_, strerror(e));
    return Status::err(e == EINVAL ? EINVAL : ENOMEM);
  }
  install_ = static_cast<uint8_t*>(p);
  install_uffd_.reset(static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)));
  if (!install_uffd_) return errno_status("userfaultfd for installs");
  uffdio_api api{UFFD_API, 0, 0};
  if (ioctl(install_uffd_.get(), UFFDIO_API, &api) != 0) return errno_status("UFFDIO_API");
  uffdio_register r{{addr_of(install_), mapped_}, UFFDIO_REGISTER_MODE_MISSING, 0};
  if (ioctl(install_uffd_.get(), UFFDIO_REGISTER, &r) != 0) return errno_status("UFFDIO_REGISTER of the install map");
  if (!(r.ioctls & (uint64_t{1} << _UFFDIO_COPY))) return Status::err(ENOSYS);
  return Status::ok();
}

// An install that fails leaves the block out of V: F (or, for a push, F once on_push copied it there) still holds
// its data, and the parked accesses are woken, fault again and retry through handle_fault. With hugetlbfs that is
// the pool without a free page (ENOMEM): only if something took the page a punch freed before drop_view reserved it
// again. Logged once, then every 1000th time.
uint64_t Segment::write_view(const uint8_t* src, uint64_t len, uint64_t off) {
  uint64_t done = install_via_attach_ && !huge_ ? copy_via_attach(src, len, off) : 0;
  while (done < len) {
    if (!huge_) {
      ssize_t w = pwrite(view_fd_.get(), src + done, len - done, static_cast<off_t>(off + done));
      if (w > 0) done += static_cast<uint64_t>(w);
      if (w > 0 || (w < 0 && errno == EINTR)) continue;
    } else {
      uffdio_copy c{addr_of(install_ + off + done), addr_of(src + done), len - done, UFFDIO_COPY_MODE_DONTWAKE, 0};
      int rc = ioctl(install_uffd_.get(), UFFDIO_COPY, &c);
      if (c.copy > 0) done += static_cast<uint64_t>(c.copy);
      if (rc == 0 || errno == EAGAIN) continue;  // EAGAIN: interrupted part-way (c.copy counts what was done)
    }
    if (install_failures_++ % 1000 == 0)
      DIPC_LOG_ERROR("dsm: segment {}: installing {} bytes at {:#x} into the view failed ({} time(s)): {}{}",
                     static_cast<int32_t>(id_), len - done, off + done, install_failures_, strerror(errno),
                     huge_ && errno == ENOMEM ? " (no free huge page: the access waits for one)" : "");
    break;
  }
  return done;
}

// UFFDIO_COPY on a shmem mapping allocates the page, copies into it, adds it to V's page cache (every other local
// process then maps it at its next fault, as after pwrite) and maps it in the attach's process; a read copy is mapped
// write-protected (UFFDIO_COPY_MODE_WP; install_run protected the range in every attach before). DONTWAKE: the
// parked accesses are woken after the install, as for pwrite. What V is not confirmed to hold (uffd_copy_into_view)
// write_view pwrites.
uint64_t Segment::copy_via_attach(const uint8_t* src, uint64_t len, uint64_t off) {
  auto it = attaches_.find(last_fault_attach_);
  // A read-only attach is a private mapping (preload/shm.cc, map_view): UFFDIO_COPY would give that process an
  // anonymous copy of its own, which no punch of V (an invalidation) would ever take back.
  // A dormant attach (park_attach) has no range to copy into.
  if (it == attaches_.end() || it->second.rdonly || it->second.len == 0) return 0;
  return uffd_copy_into_view(it->second, src, off, len, UFFDIO_COPY_MODE_DONTWAKE | UFFDIO_COPY_MODE_WP);
}

// The one way data reaches V through a program's userfaultfd (copy_install, copy_via_attach): UFFDIO_COPY into the
// attach's range, resumed while the kernel stops part-way, then the check that the pages landed in V. The program
// owns its userfaultfd and may have moved or re-registered the range, or mapped it privately: the pages are then not
// V's (a copy only that process sees, stale for it alone: the kernel lets a userfaultfd cover a shared mapping only
// of a file its process may write), so whatever view_holds does not confirm counts as not installed (0), and the
// caller writes V itself (the same bytes over any page that did land). EEXIST (a page mapped there or in V already), ENOENT/EINVAL (the range
// moved) end the copy early.
uint64_t Segment::uffd_copy_into_view(const Attach& a, const uint8_t* src, uint64_t off, uint64_t len, uint64_t mode) {
  uint64_t done = 0;
  while (done < len) {
    uffdio_copy c{a.addr + off + done, addr_of(src + done), len - done, mode, 0};
    int rc = ioctl(a.fd, UFFDIO_COPY, &c);
    if (c.copy > 0) done += static_cast<uint64_t>(c.copy);
    if (rc == 0 || (errno == EAGAIN && c.copy > 0)) continue;
    break;
  }
  if (done == 0 || !view_holds(off, done)) return 0;
  return done;
}

uint64_t Segment::block_len(uint32_t b) const { return std::min(block_, mapped_ - block_off(b)); }

Status Segment::add_attach(uint64_t attach, int uffd, uint64_t addr, uint64_t len, bool rdonly) {
  if (len != mapped_ || addr % std::max(m_.page_size(), huge_)) {
    close(uffd);
    return Status::err(EINVAL);
  }
  attaches_[attach] = Attach{uffd, addr, len, rdonly};
  protect_new(attaches_[attach]);
  Status s = m_.loop().add(uffd, EPOLLIN, [this, attach](uint32_t) { on_uffd(attach); });
  if (!s) {
    DIPC_LOG_WARN("dsm: cannot watch an attach's userfaultfd: {}", s.str());
    remove_attach(attach);
  }
  return s;
}

void Segment::protect_new(const Attach& a) {
  // The new process sees the node's current state: blocks held read-only are write-protected in it too.
  if (a.rdonly) return;
  for (uint32_t b = 0; b < nblocks_; ++b) {
    if (in_view(b) && !cache_.writable(b)) {
      uffdio_writeprotect wp{{a.addr + block_off(b), block_len(b)}, UFFDIO_WRITEPROTECT_MODE_WP};
      if (ioctl(a.fd, UFFDIO_WRITEPROTECT, &wp) != 0)
        DIPC_LOG_WARN("dsm: write-protect at attach: {}", strerror(errno));
    } else {
      flags_[b] &= static_cast<uint8_t>(~kProtected);  // not in the new attach
    }
  }
}

void Segment::park_attach(uint64_t attach) {
  auto it = attaches_.find(attach);
  if (it == attaches_.end()) return;
  it->second.addr = it->second.len = 0;  // no range: any fault on it drains the notes first
  for (auto& [b, set] : parked_) set.erase(attach);
}

Status Segment::revive_attach(uint64_t attach, uint64_t addr, uint64_t len, bool rdonly) {
  auto it = attaches_.find(attach);
  if (it == attaches_.end() || it->second.len != 0 || it->second.rdonly != rdonly || len != mapped_ ||
      addr % std::max(m_.page_size(), huge_) || addr == 0)
    return Status::err(EINVAL);
  it->second.addr = addr;
  it->second.len = len;
  it->second.garbage = 0;
  protect_new(it->second);
  return Status::ok();
}

void Segment::remove_attach(uint64_t attach) {
  auto it = attaches_.find(attach);
  if (it == attaches_.end()) return;
  m_.loop().remove(it->second.fd);
  close(it->second.fd);
  attaches_.erase(it);
  for (auto& [b, set] : parked_) set.erase(attach);
}

void Segment::on_uffd(uint64_t attach) {
  bool drained = false;
  for (int i = 0; i < 64; ++i) {  // a bounded batch; the fd stays readable for the rest
    auto it = attaches_.find(attach);
    if (it == attaches_.end() || dead_) return;
    uffd_msg msgs[16];
    ssize_t n = read(it->second.fd, msgs, sizeof msgs);
    bool more = n == static_cast<ssize_t>(sizeof msgs);  // else the queue is empty: no EAGAIN read needed
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) {
        DIPC_LOG_WARN("dsm: userfaultfd read: {}", strerror(errno));
        remove_attach(attach);
      }
      return;
    }
    if (n == 0) return;
    for (size_t k = 0; k < static_cast<size_t>(n) / sizeof(uffd_msg); ++k) {
      const uffd_msg& um = msgs[k];
      bool write = (um.arg.pagefault.flags & (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP)) != 0;
      auto outside = [&](const Attach& x) {
        return um.arg.pagefault.address < x.addr || um.arg.pagefault.address >= x.addr + x.len;
      };
      if (um.event == UFFD_EVENT_PAGEFAULT && outside(it->second) && !drained) {
        // A re-attach registered on this kept userfaultfd whose note is not read yet: the notes first (they may
        // also detach, or destroy the segment: destruction waits for the end of the iteration).
        drained = true;
        m_.notes_first();
        it = attaches_.find(attach);
        if (it == attaches_.end() || dead_) return;
      }
      Attach& a = it->second;
      // The program owns this userfaultfd and may register anything with it: a fault outside the attach, another
      // event, or a write through a read-only attach (which would take the block away from every other node) is
      // garbage. A few are ignored; past kMaxGarbage the attach is dropped, logged once.
      if (um.event != UFFD_EVENT_PAGEFAULT || um.arg.pagefault.address < a.addr ||
          um.arg.pagefault.address >= a.addr + a.len || (write && a.rdonly)) {
        if (++a.garbage > kMaxGarbage) {
          DIPC_LOG_WARN("dsm: segment {}: an attach's userfaultfd sends events that are not its faults; detached",
                        static_cast<int32_t>(id_));
          remove_attach(attach);
          return;
        }
        continue;
      }
      handle_fault(attach, um.arg.pagefault.address, write);
      if (attaches_.find(attach) == attaches_.end()) return;
    }
    if (!more) return;
  }
}

void Segment::handle_fault(uint64_t attach, uint64_t addr, bool write) {
  ++m_.stats().faults;
  const Attach& a = attaches_.at(attach);
  DSM_TRACE("dsm: seg {} fault attach {} off {:#x} {}", id_, attach, addr - a.addr, write ? "W" : "R");
  if (addr < a.addr || addr >= a.addr + a.len) return;
  uint32_t b = static_cast<uint32_t>((addr - a.addr) / block_);
  last_fault_attach_ = attach;
  std::vector<Msg> out;
  NodeCache::Fault f = cache_.on_fault(b, write ? Access::kWrite : Access::kRead, out);
  if (f == NodeCache::Fault::kProceed) {
    // The block allows the access already (the fault raced with an install, or it is the read-ahead mark): make
    // sure, then let it retry. A read copy is protected first (an attach added since its install is not yet).
    if (!in_view(b)) {
      if (!cache_.writable(b)) write_protect_all(b, true);
      if (fill_view(b) && cache_.writable(b)) flags_[b] |= kDirty;
      if (in_view(b) && home_spares()) spare_installed(b, 1);
      if (in_view(b) && (flags_[b] & kSpareFrame)) spare_q_.emplace_back(b, 1);
    }
    parked_[b].insert(attach);
    wake(b);
  } else {
    parked_[b].insert(attach);
    // A request left for a remote home: its answer is on the fault's critical path.
    if (!out.empty() && home_ != m_.self() && m_.answer_poll_us() > 0 && awaiting_.insert(b).second) {
      ++m_.awaiting_;
      m_.loop().poll_until_us(Manager::now_us() + m_.answer_poll_us());
    }
  }
  m_.send(out);
  spare_queued();
}

void Segment::on_msg(const Msg& m) {
  DSM_TRACE("dsm: seg {} in {} from {}", id_, m.str(), m.from);
  std::vector<Msg> out;
  std::vector<LocalAction> local;
  int64_t now = Manager::now_us();
  if (for_directory(m.type)) {
    if (!dir_) return;
    dir_->on_message(m, now, out);
    send_dir(out);
    arm_timer();
    return;
  }
  if (m.type == MsgType::kGrant && m.block < nblocks_ && m.count <= nblocks_ - m.block) {
    // The frames of a read copy the home pushed hold nothing another node needs once it is in V (spare_frames).
    bool spare = !dir_ && !m_.transport()->caps().pins_memory && m.mode == FetchMode::kPushed &&
                 m.access == Access::kRead && m.txn == 0;
    for (uint32_t b = m.block; b < m.block + m.count; ++b) {
      flags_[b] = static_cast<uint8_t>((flags_[b] & ~kSpareFrame) | (spare ? kSpareFrame : 0));
      // F holds it again, unless the data is in the message being handled (on_push: F is not written, so a frame
      // released before stays released, and spare_frames has nothing to punch).
      if (m.mode == FetchMode::kPushed && !from_push(b)) flags_[b] &= static_cast<uint8_t>(~kFrameGone);
    }
  }
  uint64_t before = cache_.prefetched(), wbefore = cache_.written_ahead();
  cache_.on_message(m, now, out, local);
  m_.stats().prefetched += cache_.prefetched() - before;
  m_.stats().written_ahead += cache_.written_ahead() - wbefore;
  run(out, local);
}

// A pushed run that came as one message (push(), providers without native one-sided operations). A read copy whose
// frame would be released once in V anyway (spare_frames) is copied from the message straight into V; a block of
// it that is not installed now (the read-ahead mark, left out of V) goes into F, where its install looks later.
// Anything else lands in F first, as a one-sided write would have.
void Segment::on_push(const Msg& m, ByteView data) {
  if (m.type != MsgType::kGrant || m.mode != FetchMode::kPushed || m.node != m_.self() || m.block >= nblocks_ ||
      m.count > nblocks_ - m.block ||
      data.size() != block_off(m.block + m.count - 1) + block_len(m.block + m.count - 1) - block_off(m.block)) {
    DIPC_LOG_WARN("dsm: segment {}: malformed push {} ({} bytes) from node {} dropped", id_, m.str(), data.size(),
                  m.from);
    return;
  }
  bool spare = !dir_ && !m_.transport()->caps().pins_memory && m.access == Access::kRead && m.txn == 0;
  if (!spare || push_src_.data) {
    std::memcpy(frames_ + block_off(m.block), data.data(), data.size());
    on_msg(m);
    return;
  }
  push_src_.data = data.data();
  push_src_.first = m.block;
  push_src_.n = m.count;
  push_src_.used.assign(m.count, false);
  on_msg(m);
  PushSrc p = std::move(push_src_);
  push_src_ = PushSrc{};
  for (uint32_t i = 0; i < p.n; ++i) {
    uint32_t b = p.first + i;
    if (p.used[i]) {  // V holds it, F does not (released as spare_frames does)
      flags_[b] = static_cast<uint8_t>((flags_[b] & ~kSpareFrame) | kFrameGone);
      continue;
    }
    std::memcpy(frames_ + block_off(b), p.data + (block_off(b) - block_off(p.first)), block_len(b));
    flags_[b] &= static_cast<uint8_t>(~kFrameGone);
  }
}

void Segment::on_timer() {
  timer_ = 0;
  timer_at_ = kNever;
  if (!dir_ || dead_) return;
  std::vector<Msg> out;
  dir_->on_timer(Manager::now_us(), out);
  send_dir(out);
  arm_timer();
}

void Segment::arm_timer() {
  if (!dir_ || dead_) return;
  int64_t at = dir_->next_timer_us();
  if (at == kNever || at == timer_at_) return;
  if (timer_) m_.loop().cancel_timer(timer_);
  timer_at_ = at;
  timer_ = m_.loop().add_timer_us(at - Manager::now_us(), [this] { on_timer(); });
}

void Segment::on_node_lost(NodeId node) {
  if (node == home_ && !dir_) reset_copies();
  if (!dir_) return;
  std::vector<Msg> out;
  auto lost = dir_->on_node_lost(node, Manager::now_us(), out);
  if (!lost.empty())
    DIPC_LOG_WARN("dsm: segment {}: {} block(s) held only by lost node {} revert to the home's copy", id_,
                  lost.size(), node);
  send_dir(out);
  arm_timer();
}

void Segment::reset_copies() {
  // The home forgets this node's copies and requests when it loses the link (HomeDirectory::on_node_lost), so
  // keeping them would let local processes read data the cluster has moved past, and a request lost with the link
  // would never be answered. Drop every copy and start over: parked accesses fault again and ask anew (the
  // transport holds a request for a peer that is not connected until its connect timeout).
  for (uint32_t b = 0; b < nblocks_; ++b) {
    if (in_view(b) && (flags_[b] & kFrameGone)) save_view(b);  // F holds the node's copy again, as the home knew it
    if (in_view(b)) drop_view(b);
  }
  std::fill(flags_.begin(), flags_.end(), uint8_t{0});
  cache_ = NodeCache(id_, nblocks_, m_.self(), home_, readahead_blocks(), kReadAheadWindows, writeahead_blocks());
  m_.awaiting_ -= awaiting_.size();
  awaiting_.clear();
  std::vector<uint32_t> blocks;
  for (auto& [b, set] : parked_) blocks.push_back(b);
  for (uint32_t b : blocks) wake(b);
}

// The directory's messages. A grant that names the home's own frame as the source (the common case: the home held
// the block, or took it back) is turned into a push: the home writes the block into the requester's frame with a
// one-sided write, then sends the grant naming the requester itself, which installs in place. The transport
// delivers the write before the grant (same peer, issue order), so the requester saves a round trip. Until the
// requester's frames descriptor is known (asked once, in the background), the grant goes out as is.
//
// A Fetch the directory sends the home itself with txn 0 downgrades (invalidates) the home's writable copy for a
// read-ahead (write-ahead) grant that follows it in `out`: it is carried out here, at once (its block has no transaction, so nothing queued for the
// local cache concerns it), so the frame holds the data before the push copies it. A grant of a run of blocks is
// pushed with one write per frames chunk it spans.
void Segment::send_dir(std::vector<Msg>& out) {
  std::vector<Msg> rest;
  rest.reserve(out.size());
  std::vector<Msg> o;
  std::vector<LocalAction> l;
  for (size_t i = 0; i < out.size(); ++i) {
    Msg& g = out[i];
    if (g.type == MsgType::kFetch && g.to == m_.self() && g.txn == 0) {
      cache_.on_message(g, Manager::now_us(), o, l);
      bool more = i + 1 < out.size() && out[i + 1].type == MsgType::kFetch && out[i + 1].to == m_.self() &&
                  out[i + 1].txn == 0;
      if (!more) {  // the run of downgrades together (one write-protect and one copy per run)
        // The directory names the write-ahead requester the owner already: the frame the grant names is the home's.
        home_gives_up_ = true;
        run(o, l);
        home_gives_up_ = false;
        o.clear();
        l.clear();
      }
      continue;
    }
    if (g.type != MsgType::kGrant || g.node != m_.self() || g.to == m_.self()) {
      rest.push_back(g);
      continue;
    }
    // Split at chunk boundaries (blocks never straddle one).
    uint32_t b = g.block, end = g.block + g.count;
    while (b < end) {
      uint32_t per_chunk = static_cast<uint32_t>(std::max<uint64_t>(1, chunk_ / block_));
      uint32_t stop = std::min(end, (b / per_chunk + 1) * per_chunk);
      Msg part = g;
      part.block = b;
      part.count = static_cast<uint16_t>(stop - b);
      if (!push(part)) {
        // The requester copies the run from this node's frames, when it will: F must hold it until then.
        lend_frames(part.block, part.count);
        rest.push_back(part);
      }
      b = stop;
    }
  }
  out.clear();
  m_.send(rest);
}

// A pushed run the home's own processes wrote is read from V. Through dipcd's read-only mapping of V (made at the
// first such push) it is one copy into the message; pread needs the message buffer grown first, which zero-fills it
// (a memset of the whole run, and of fresh pages). A read fault of that mapping on a hole of V would put a zeroed page
// into V behind the processes' userfaultfd (they would read zeros instead of faulting to dipcd): so the mapping is
// read only where mincore finds every page of the run in V (the loop is single-threaded: nothing of dipcd punches V
// in between; a page swapped out counts as absent), pread otherwise. Not SEEK_HOLE: on a V that holds everything it
// scans to the end of the file at every push (a quarter of the home's time at 128 MiB). hugetlbfs: pread (V's pages
// are whole huge pages; no mapping of it is made here).
bool Segment::view_holds(uint64_t off, uint64_t len) {
  if (huge_) return false;
  if (!view_ro_) {
    void* p = mmap(nullptr, mapped_, PROT_READ, MAP_SHARED, view_fd_.get(), 0);
    if (p == MAP_FAILED) return false;
    view_ro_ = static_cast<const uint8_t*>(p);
  }
  uint64_t ps = m_.page_size();
  incore_.resize((len + ps - 1) / ps);
  return mincore(const_cast<uint8_t*>(view_ro_ + off), len, incore_.data()) == 0 &&
         std::all_of(incore_.begin(), incore_.end(), [](unsigned char c) { return c & 1; });
}

bool Segment::push_src_view(Bytes& buf, uint64_t off, uint64_t len) {
  size_t at = buf.size();
  if (view_holds(off, len)) {
    buf.insert(buf.end(), view_ro_ + off, view_ro_ + off + len);
    return true;
  }
  buf.resize(at + len);
  ssize_t r = pread(view_fd_.get(), buf.data() + at, len, static_cast<off_t>(off));
  if (r == static_cast<ssize_t>(len)) return true;
  if (r >= 0) errno = EIO;  // short read
  buf.resize(at);
  return false;
}

uint32_t Segment::readahead_blocks() const {
  return static_cast<uint32_t>(std::clamp<uint64_t>(kReadAheadBytes / block_, 1, Msg::kMaxCount));
}

uint32_t Segment::writeahead_blocks() const {
  return static_cast<uint32_t>(std::clamp<uint64_t>(kWriteAheadBytes / block_, 1, Msg::kMaxCount));
}

// The grant travels as write_notify's message: the transport delivers it after the block landed (RDMA
// WRITE_WITH_IMM). Refused for lack of resources: the grant goes out unpushed, behind what is queued already.
bool Segment::push(Msg& g) {
  uint64_t off = block_off(g.block), len = block_off(g.block + g.count - 1) + block_len(g.block + g.count - 1) - off;
  Msg pushed = g;
  pushed.node = g.to;
  pushed.mode = FetchMode::kPushed;
  if (!m_.transport()->caps().native_rma) {
    // The provider carries one-sided operations through the peer's CPU anyway (tcp): send the run with its grant as
    // one message. The requester copies it from the message into V (on_push): its frames are not touched.
    // A block whose frame the home released is read from V (push_src_view: what V holds; the home holds the block
    // read-only now, write-protected, so V holds the value the grant orders), the rest from F.
    Encoder e;
    e.buf().reserve(Msg::kEncodedSize + len);  // one allocation, no copy as it grows
    pushed.encode(e);
    if (!append_blocks(e, g.block, g.block + g.count)) return false;  // sent unpushed (send_dir lends F)
    if (!m_.transport()->send(g.to, kOpPush, e.take())) return false;
    m_.stats().pushes += g.count;
    DSM_TRACE("dsm: seg {} pushed {} to {} in a message", id_, pushed.str(), g.to);
    ++m_.stats().messages_out;
    return true;
  }
  uint64_t coff = 0;
  const transport::RemoteKey* k = m_.cached_region(id_, g.to, off, len, coff);
  if (!k) {
    m_.region_of(id_, g.to, off, [](Status, const transport::RemoteKey&, uint64_t) {});
    return false;
  }
  auto local = frames_chunk(off);
  if (!local) return false;
  lend_frames(g.block, g.count);  // the provider copies F when it will
  Encoder e;
  pushed.encode(e);
  uint64_t src_off = off - off / chunk_ * chunk_;
  Status s = m_.transport()->write_notify(**local, src_off, *k, off - coff, len, kOpMsg, e.take(), [](Status) {});
  if (!s) return false;
  m_.stats().pushes += g.count;
  DSM_TRACE("dsm: seg {} pushed {} to {}", id_, pushed.str(), g.to);
  ++m_.stats().messages_out;
  return true;
}

bool Segment::append_blocks(Encoder& e, uint32_t first, uint32_t end) {
  for (uint32_t b = first; b < end;) {
    bool gone = flags_[b] & kFrameGone;
    uint32_t x = b + 1;
    while (x < end && static_cast<bool>(flags_[x] & kFrameGone) == gone) ++x;
    uint64_t o = block_off(b), l = block_off(x - 1) + block_len(x - 1) - o;
    if (!gone) {
      e.raw(ByteView(frames_ + o, l));
    } else if (!push_src_view(e.buf(), o, l)) {
      DIPC_LOG_ERROR("dsm: segment {}: blocks {}..{} from the view: {}", id_, b, x - 1, strerror(errno));
      return false;
    }
    b = x;
  }
  return true;
}

// The offer is taken only over a provider without native one-sided operations (tcp), where the home's read of this
// node's frame is a round trip through this daemon anyway; with RDMA the home reads the frame without it. The block
// is write-protected here and F holds it (the downgrade was carried out before the ack leaves, run()).
void Segment::send_data_acks(std::vector<Msg>& out) {
  for (Msg& m : out) {
    if (m.type != MsgType::kFetchAck || m.mode != FetchMode::kPushed) continue;
    m.mode = FetchMode::kNone;
    if (m_.transport()->caps().native_rma || dir_ || m.to != home_ || m.block >= nblocks_) continue;
    Msg a = m;
    a.mode = FetchMode::kPushed;
    Encoder e;
    e.buf().reserve(Msg::kEncodedSize + block_len(m.block));
    a.encode(e);
    if (!append_blocks(e, m.block, m.block + 1) || !m_.transport()->send(m.to, kOpAckData, e.take())) continue;
    DSM_TRACE("dsm: seg {} acknowledged {} with its data", id_, a.str());
    ++m_.stats().messages_out;
    m.type = MsgType::kLeaveDone;  // sent: marked for removal (a node never sends LeaveDone)
  }
  out.erase(std::remove_if(out.begin(), out.end(), [](const Msg& m) { return m.type == MsgType::kLeaveDone; }),
            out.end());
}

// The home: the data of a downgrade for its own read, into its frame before the directory handles the ack. Only the
// acknowledgement the block's transaction waits for may write the frame; any other is handled as a plain FetchAck.
void Segment::on_data_ack(const Msg& m, ByteView data) {
  Msg a = m;
  if (dir_ && m.block < nblocks_ && m.count == 1 && data.size() == block_len(m.block) && dir_->wants_data_ack(m)) {
    std::memcpy(frames_ + block_off(m.block), data.data(), data.size());
    ++m_.stats().remote_fetches;
    flags_[m.block] &= static_cast<uint8_t>(~(kInView | kFrameGone | kSpareFrame | kZeroFill));  // as fetched()
  } else {
    DIPC_LOG_WARN("dsm: segment {}: data with {} from node {} not expected: handled without it", id_, m.str(), m.from);
    a.mode = FetchMode::kNone;
  }
  on_msg(a);
}

// Local actions first, then the messages (an invalidation has taken effect in every local process before its
// acknowledgement leaves), then installs whose data was ready at once (zero fill).
// The read copies of a granted run arrive as Install/Wake pairs of consecutive blocks: they are installed together
// (one write-protect per attach and one copy into the view for the run), then woken block by block.
void Segment::run(std::vector<Msg>& out, std::vector<LocalAction>& local) {
  std::vector<uint32_t> ready;
  for (size_t i = 0; i < local.size(); ++i) {
    const LocalAction& a = local[i];
    if (a.kind == LocalAction::kFetchData && a.node == kNoNode) {
      // On the home, F of a block never written reads as zeros: only V is filled, with zeros (copy_into_view).
      if (home_spares()) flags_[a.block] |= kZeroFill;
      else std::memset(frames_ + block_off(a.block), 0, block_len(a.block));
      ++m_.stats().zero_fills;
      ready.push_back(a.block);
      continue;
    }
    if (a.kind == LocalAction::kWriteProtect) {
      size_t j = i;
      while (j + 1 < local.size() && local[j + 1].kind == LocalAction::kWriteProtect &&
             local[j + 1].block == local[j].block + 1)
        ++j;
      if (j > i) {
        downgrade_run(a.block, static_cast<uint32_t>(j - i + 1));
        i = j;
        continue;
      }
    }
    if (a.kind == LocalAction::kInstall && !a.writable) {
      size_t j = i;
      while (j + 2 < local.size() && local[j + 1].kind == LocalAction::kWake &&
             local[j + 1].block == local[j].block && local[j + 2].kind == LocalAction::kInstall &&
             !local[j + 2].writable && local[j + 2].block == local[j].block + 1)
        j += 2;
      if (j > i) {
        install_run(a.block, static_cast<uint32_t>((j - i) / 2 + 1));
        for (size_t k = i; k <= j; k += 2) wake(local[k].block);
        i = j + (j + 1 < local.size() && local[j + 1].kind == LocalAction::kWake && local[j + 1].block == local[j].block);
        continue;
      }
    }
    apply(a);
  }
  send_data_acks(out);
  m_.send(out);
  for (uint32_t b : ready) {
    std::vector<Msg> o2;
    std::vector<LocalAction> l2;
    cache_.on_data_ready(b, Manager::now_us(), o2, l2);
    run(o2, l2);
  }
  spare_queued();
}

void Segment::apply(const LocalAction& a) {
  const uint32_t b = a.block;
  DSM_TRACE("dsm: seg {} local {} b={} w={} node={} flags={:#x}", id_, static_cast<int>(a.kind), b, a.writable, a.node,
            flags_[b]);
  switch (a.kind) {
    case LocalAction::kFetchData:
      fetch(b, a.node);
      return;
    case LocalAction::kInstall:
      if (awaiting_.erase(b) && --m_.awaiting_ == 0) m_.loop().stop_polling();
      if (!in_view(b) && (a.writable || !lazy(b)) && copy_install(b, a.writable)) {
        // Protection, data and wake-up in one call (a miss's install).
      } else if (a.writable && in_view(b)) {
        // An upgrade in place: the data is in V already, so clearing the protection may wake the writers at once.
        write_protect_all(b, false, true);
      } else {
        // Protection first, then the data: no local process ever sees the block with more access than granted.
        write_protect_all(b, !a.writable);
        if (!in_view(b) && (a.writable || !lazy(b))) (void)fill_view(b);
      }
      if (a.writable) flags_[b] &= static_cast<uint8_t>(~kSpareFrame);
      if (a.writable && in_view(b)) flags_[b] |= kDirty;  // else F still holds it (write_view failed)
      // Every other copy is gone (acknowledged once its copy landed): nothing reads the home's frame any more.
      if (a.writable && dir_) flags_[b] &= static_cast<uint8_t>(~kFrameLent);
      if (in_view(b) && home_spares()) spare_installed(b, 1);
      if (in_view(b) && (flags_[b] & kSpareFrame)) spare_q_.emplace_back(b, 1);
      return;
    case LocalAction::kWriteProtect:
      ++m_.stats().downgrades;
      write_protect_all(b, true);
      if (flags_[b] & kDirty) keep_view(b);
      return;
    case LocalAction::kInvalidate:
      ++m_.stats().invalidations;
      flags_[b] &= static_cast<uint8_t>(~kZeroFill);  // held no more: what the home gets next comes through F
      // The block leaves V: F must hold it if it was written here, or if the home released F while its frame is
      // the block's source (the directory names it the owner; once its copy is gone the home's frame is named for
      // no other reason).
      if ((flags_[b] & kDirty) ||
          (dir_ && in_view(b) && (flags_[b] & kFrameGone) && (dir_->block(b).owner == m_.self() || home_gives_up_))) {
        write_protect_all(b, true);  // stop writers before the last copy into the frame
        save_view(b);
      }
      if (in_view(b)) drop_view(b);  // a block never written here: F already holds what V holds
      else flags_[b] &= static_cast<uint8_t>(~kProtected);  // (a lazy mark) protected anew at its next install
      return;
    case LocalAction::kWake:
      wake(b);
      return;
    case LocalAction::kWriteBack: {
      uint64_t off = block_off(b), len = block_len(b);
      std::weak_ptr<int> alive = alive_;
      m_.region_of(id_, home_, off, [this, alive, b, off, len](Status st, const transport::RemoteKey& k, uint64_t coff) {
        if (!st || alive.expired()) return;
        auto local = frames_chunk(off);
        if (!local) return;
        const transport::MemRegion* src = *local;
        uint64_t src_off = off - off / chunk_ * chunk_;
        Status s = m_.issue(home_, [this, alive, b, src, src_off, k, off, coff, len] {
          if (alive.expired()) return Status::ok();
          return m_.transport()->write(*src, src_off, k, off - coff, len, [this, alive, b](Status st2) {
            if (!st2 || alive.expired()) return;
            std::vector<Msg> out;
            cache_.on_writeback_done(b, out);
            m_.send(out);
          });
        });
        if (!s) DIPC_LOG_WARN("dsm: write-back of block {}: {}", b, s.str());
      });
      return;
    }
    case LocalAction::kLeft:
      return;
  }
}

void Segment::install_run(uint32_t first, uint32_t n) {
  shared_first();
  for (uint32_t b = first; b < first + n; ++b)
    if (awaiting_.erase(b) && --m_.awaiting_ == 0) m_.loop().stop_polling();
  // Protection first, then the data, as for one block.
  bool all_protected = true;
  for (uint32_t b = first; b < first + n; ++b) {
    all_protected = all_protected && (flags_[b] & kProtected);
    flags_[b] |= kProtected;
  }
  uint64_t off = block_off(first), len = block_off(first + n - 1) + block_len(first + n - 1) - off;
  if (!all_protected) {
    for (auto& [aid, a] : attaches_) {
      if (a.rdonly) continue;
      uffdio_writeprotect w{{a.addr + off, len}, UFFDIO_WRITEPROTECT_MODE_WP};
      if (ioctl(a.fd, UFFDIO_WRITEPROTECT, &w) != 0 && errno != ENOENT)
        DIPC_LOG_WARN("dsm: write-protect blocks {}..{}: {}", first, first + n - 1, strerror(errno));
    }
  }
  for (uint32_t b = first; b < first + n;) {
    if (in_view(b) || lazy(b)) {
      ++b;
      continue;
    }
    uint32_t e = b;
    while (e < first + n && !in_view(e) && !lazy(e)) ++e;
    install_via_attach_ = true;
    uint32_t in = copy_into_view(b, e);  // blocks in..e-1 stay out of V (write_view failed): faulted in later
    install_via_attach_ = false;
    bool spare = false;
    for (uint32_t x = b; x < in; ++x) flags_[x] |= kInView;
    if (home_spares()) spare_installed(b, in - b);
    for (uint32_t x = b; x < in; ++x) spare = spare || (flags_[x] & kSpareFrame);
    if (spare) spare_q_.emplace_back(b, in - b);
    b = e;
  }
}

// The read-ahead mark (NodeCache::readahead_mark) is installed but left out of V while no access waits on it: the
// reader's first touch faults (a minor round trip through this daemon, no message) and asks for the next window.
bool Segment::lazy(uint32_t b) const { return cache_.readahead_mark(b) && parked_.find(b) == parked_.end(); }

void Segment::downgrade_run(uint32_t first, uint32_t n) {
  shared_first();
  m_.stats().downgrades += n;
  uint64_t off = block_off(first), len = block_off(first + n - 1) + block_len(first + n - 1) - off;
  for (auto& [aid, a] : attaches_) {
    if (a.rdonly) continue;
    uffdio_writeprotect w{{a.addr + off, len}, UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(a.fd, UFFDIO_WRITEPROTECT, &w) != 0 && errno != ENOENT)
      DIPC_LOG_WARN("dsm: write-protect blocks {}..{}: {}", first, first + n - 1, strerror(errno));
  }
  for (uint32_t b = first; b < first + n; ++b) flags_[b] |= kProtected;
  // Then V -> F for the dirty blocks, one copy per run of them (none on the home for a block V holds alone:
  // keep_view).
  for (uint32_t b = first; b < first + n;) {
    if (!(flags_[b] & kDirty)) {
      ++b;
      continue;
    }
    if (home_spares() && (flags_[b] & kFrameGone)) {
      keep_view(b);
      ++b;
      continue;
    }
    uint32_t e = b;
    while (e < first + n && (flags_[e] & kDirty) && !(home_spares() && (flags_[e] & kFrameGone))) ++e;
    uint64_t o = block_off(b), l = block_off(e - 1) + block_len(e - 1) - o;
    ssize_t r = pread(view_fd_.get(), frames_ + o, l, static_cast<off_t>(o));
    if (r != static_cast<ssize_t>(l)) DIPC_LOG_ERROR("dsm: save blocks {}..{}: {}", b, e - 1, strerror(errno));
    for (uint32_t x = b; x < e; ++x) flags_[x] &= static_cast<uint8_t>(~(kDirty | kFrameGone));
    b = e;
  }
}

void Segment::fetch(uint32_t b, NodeId from) {
  uint64_t off = block_off(b), len = block_len(b);
  std::weak_ptr<int> alive = alive_;
  m_.region_of(id_, from, off, [this, alive, b, off, len, from](Status st, const transport::RemoteKey& k,
                                                                  uint64_t coff) {
    if (alive.expired()) return;
    if (!st) {
      DIPC_LOG_WARN("dsm: segment {} block {}: no frames key: {}", id_, b, st.str());
      return;  // the home re-grants from another source once it learns the node is lost
    }
    auto chunk = frames_chunk(off);
    if (!chunk) return;
    const transport::MemRegion* dst = *chunk;
    uint64_t dst_off = off - off / chunk_ * chunk_;
    Status s = m_.issue(from, [this, alive, b, dst, dst_off, k, off, coff, len] {
      if (alive.expired()) return Status::ok();
      return m_.transport()->read(k, off - coff, *dst, dst_off, len, [this, alive, b](Status st2) {
        if (!alive.expired()) fetched(b, st2);
      });
    });
    if (!s) DIPC_LOG_WARN("dsm: segment {} block {}: read: {}", id_, b, s.str());
  });
}

void Segment::fetched(uint32_t b, Status st) {
  DSM_TRACE("dsm: seg {} fetched b={} {}", id_, b, st.str());
  if (!st) {
    DIPC_LOG_WARN("dsm: segment {} block {}: copy failed: {}", id_, b, st.str());
    return;
  }
  ++m_.stats().remote_fetches;
  flags_[b] &= static_cast<uint8_t>(~(kInView | kFrameGone | kSpareFrame | kZeroFill));  // into V at install
  std::vector<Msg> out;
  std::vector<LocalAction> local;
  cache_.on_data_ready(b, Manager::now_us(), out, local);
  run(out, local);
}

// Clearing write protection also wakes the faults waiting on the block in that attach unless told not to: only
// with `wake` (the data is in V already; the attaches woken so are no longer parked), else kWake does it once the
// data is in.
void Segment::write_protect_all(uint32_t b, bool wp, bool wake) {
  if (wp && (flags_[b] & kProtected)) return;
  if (wp) shared_first();
  if (wp)
    flags_[b] |= kProtected;
  else
    flags_[b] &= static_cast<uint8_t>(~kProtected);
  auto parked = wake && !wp ? parked_.find(b) : parked_.end();
  for (auto& [aid, a] : attaches_) {
    if (a.rdonly) continue;  // PROT_READ already
    uffdio_writeprotect w{{a.addr + block_off(b), block_len(b)},
                          wp ? UFFDIO_WRITEPROTECT_MODE_WP : wake ? 0 : UFFDIO_WRITEPROTECT_MODE_DONTWAKE};
    if (ioctl(a.fd, UFFDIO_WRITEPROTECT, &w) != 0) {
      if (errno != ENOENT) DIPC_LOG_WARN("dsm: write-protect block {}: {}", b, strerror(errno));
    } else if (parked != parked_.end()) {
      parked->second.erase(aid);
    }
  }
  if (parked != parked_.end() && parked->second.empty()) parked_.erase(parked);
}

// A block into V with one UFFDIO_COPY into the only attach that may write (a read copy in mode WP: installed
// write-protected; a writable one in mode 0), which also wakes its faults on the block, and a mincore check that V
// holds it: two system calls where write_protect_all + write_view + wake make three. The page lands in V's page cache, so every other attach
// (read-only ones) finds it there. False: nothing was installed, or only part of the block (the caller installs it
// the usual way, which overwrites the same data).
bool Segment::copy_install(uint32_t b, bool writable) {
  if (huge_ || (flags_[b] & kZeroFill) || ((flags_[b] & kFrameGone) && !from_push(b))) return false;
  uint64_t only = 0;
  Attach* w = nullptr;
  for (auto& [aid, a] : attaches_) {
    if (a.rdonly || a.len == 0) continue;  // a dormant attach (park_attach) maps nothing
    if (w) return false;
    w = &a;
    only = aid;
  }
  if (!w) return false;
  if (!writable) shared_first();
  const uint8_t* src = from_push(b) ? push_src_.data + (block_off(b) - block_off(push_src_.first)) : frames_ + block_off(b);
  // V must hold the whole block, else it is installed the usual way.
  if (uffd_copy_into_view(*w, src, block_off(b), block_len(b), writable ? 0 : UFFDIO_COPY_MODE_WP) != block_len(b))
    return false;
  flags_[b] |= kInView;
  if (writable)
    flags_[b] &= static_cast<uint8_t>(~kProtected);
  else
    flags_[b] |= kProtected;
  if (from_push(b)) push_src_.used[b - push_src_.first] = true;
  if (auto it = parked_.find(b); it != parked_.end()) {
    it->second.erase(only);
    if (it->second.empty()) parked_.erase(it);
  }
  return true;
}

// A dirty block now write-protected: on the home, a block whose frame was released stays in V alone (a transfer
// that needs it reads V, or copies it into F first: push, lend_frames); elsewhere, and on the home while F is
// allocated, V -> F.
void Segment::keep_view(uint32_t b) {
  if (home_spares() && (flags_[b] & kFrameGone) && in_view(b)) {
    flags_[b] &= static_cast<uint8_t>(~kDirty);
    return;
  }
  save_view(b);
}

void Segment::save_view(uint32_t b) {
  uint64_t off = block_off(b), len = block_len(b);
  ssize_t n = pread(view_fd_.get(), frames_ + off, len, static_cast<off_t>(off));
  if (n != static_cast<ssize_t>(len)) DIPC_LOG_ERROR("dsm: save block {}: {}", b, strerror(errno));
  flags_[b] &= static_cast<uint8_t>(~(kDirty | kFrameGone));
}

bool Segment::fill_view(uint32_t b) {
  if ((flags_[b] & kFrameGone) && !from_push(b)) DIPC_LOG_ERROR("dsm: segment {} block {}: filled from a punched frame", id_, b);
  if (copy_into_view(b, b + 1) != b + 1) return false;
  flags_[b] |= kInView;
  return true;
}

uint32_t Segment::copy_into_view(uint32_t first, uint32_t end) {
  static const uint8_t kZeros[64u << 10] = {};
  const PushSrc& p = push_src_;
  for (uint32_t b = first; b < end;) {
    if (flags_[b] & kZeroFill) {  // zeros into V; F holds nothing for it (kFrameGone: V holds the block)
      uint64_t o = block_off(b), l = block_len(b), done = 0;
      while (done < l) {
        size_t k = static_cast<size_t>(std::min<uint64_t>(sizeof kZeros, l - done));
        ssize_t w = pwrite(view_fd_.get(), kZeros, k, static_cast<off_t>(o + done));
        if (w <= 0) {
          DIPC_LOG_ERROR("dsm: zero fill of block {}: {}", b, w < 0 ? strerror(errno) : "short write");
          break;
        }
        done += static_cast<uint64_t>(w);
      }
      if (done < l) return b;  // not installed: F keeps nothing for it, kZeroFill stays, the next access retries
      flags_[b] = static_cast<uint8_t>((flags_[b] & ~kZeroFill) | kFrameGone);
      ++b;
      continue;
    }
    bool msg = p.data && b >= p.first && b < p.first + p.n;
    uint32_t stop = msg ? std::min(end, p.first + p.n) : (p.data && b < p.first ? std::min(end, p.first) : end);
    for (uint32_t z = b + 1; z < stop; ++z)
      if (flags_[z] & kZeroFill) stop = z;
    uint64_t o = block_off(b), l = block_off(stop - 1) + block_len(stop - 1) - o;
    const uint8_t* src = msg ? p.data + (o - block_off(p.first)) : frames_ + o;
    uint64_t done = write_view(src, l, o);
    if (done < l) stop = b + static_cast<uint32_t>(done / block_);  // the blocks wholly in V before the failure
    if (msg)
      for (uint32_t x = b; x < stop; ++x) push_src_.used[x - p.first] = true;
    if (done < l) return stop;
    b = stop;
  }
  return end;
}

// The punch also forgets the block's write protection (kProtected): uffd-wp is not reliably kept across it. The
// kernel turns a protected pte into a uffd-wp marker when it unmaps the page, but when a process faults the page
// back in while the punch runs (a spinning reader of the block), the truncation that follows zaps that pte again
// dropping the marker (ZAP_FLAG_DROP_MARKER): the next fill would then map writable, and the process's writes to a
// read copy would land in V unseen (a stale value on every other node). The next read-only install protects anew.
void Segment::drop_view(uint32_t b) {
  if (fallocate(view_fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(block_off(b)),
                static_cast<off_t>(block_len(b))) != 0)
    DIPC_LOG_ERROR("dsm: punch block {}: {}", b, strerror(errno));
  flags_[b] &= static_cast<uint8_t>(~(kInView | kProtected));
  if (huge_) {
    // A hugetlbfs punch frees the page's reservation with the page: a shared mapping of the block reserves it
    // again at once (the pool has the page just freed), so the next install of it never finds the pool empty.
    void* p = mmap(nullptr, block_len(b), PROT_NONE, MAP_SHARED, view_fd_.get(), static_cast<off_t>(block_off(b)));
    if (p == MAP_FAILED)
      DIPC_LOG_ERROR("dsm: segment {} block {}: huge page not reserved again: {}", static_cast<int32_t>(id_), b,
                     strerror(errno));
    else
      munmap(p, block_len(b));
  }
  // On the home F is the block's memory from now on (kFrameGone only ever marks a block V holds there): what it
  // holds is the block when the home owns it (kInvalidate copied it), else what lands there next is.
  if (dir_) flags_[b] &= static_cast<uint8_t>(~kFrameGone);
}

// Memory held once (docs/ARCHITECTURE.md, "Memory on a node"): a read copy the home pushed is punched from F once
// it is in V. Nobody reads it there again: the home recorded the copy with the home itself as its owner or as a
// copy holder (the source of a push), so the directory never names this node's frame as the source of the block,
// not even when another holder leaves or is lost, until this node writes it (then V is copied into F before any
// other node may read it, as for every writable block). Not on the home (its F is the segment's backing store)
// and not with a provider that pins F (a punched page would stay pinned under the registration while F maps a new
// one).
// Off the fault's critical path: after the wake-ups and the messages of the installs that queued them.
void Segment::spare_queued() {
  if (spare_q_.empty()) return;
  std::vector<std::pair<uint32_t, uint32_t>> q;
  q.swap(spare_q_);
  for (auto [first, n] : q) spare_frames(first, n);
}

void Segment::spare_frames(uint32_t first, uint32_t n) {
  auto spare = [this](uint32_t b) {
    return (flags_[b] & kSpareFrame) && in_view(b) && !(flags_[b] & (kFrameLent | kFrameGone));
  };
  for (uint32_t b = first; b < first + n;) {
    if (!spare(b)) {
      ++b;
      continue;
    }
    uint32_t e = b;
    while (e < first + n && spare(e)) ++e;
    uint64_t o = block_off(b), l = block_off(e - 1) + block_len(e - 1) - o;
    if (madvise(frames_ + o, l, MADV_REMOVE) != 0) {
      DIPC_LOG_WARN("dsm: release frames of blocks {}..{}: {}", b, e - 1, strerror(errno));
    } else {
      m_.stats().frames_released += e - b;
      for (uint32_t x = b; x < e; ++x)
        flags_[x] = static_cast<uint8_t>((flags_[x] & ~kSpareFrame) | kFrameGone);
    }
    b = e;
  }
}

// The home holds a block once too: V, when V holds it, else F (the segment's backing store). Its frame is released
// once the block is in V, unless a transfer may still read it (kFrameLent); whatever needs the block in F later
// copies it there from V first (kInvalidate, lend_frames) or reads V (push). A block written on the home is never
// copied into F while it stays in V (keep_view). Not with a provider that pins F (verbs): F stays as it is.
// Not for hugetlbfs views: a zero fill or a V -> F round trip there would need whole huge pages (no pwrite), and
// their F stays in normal pages as on every other node (docs/ARCHITECTURE.md, "Huge pages").
bool Segment::home_spares() const { return dir_ && !huge_ && !m_.transport()->caps().pins_memory; }

void Segment::spare_installed(uint32_t first, uint32_t n) {
  for (uint32_t b = first; b < first + n; ++b)
    if (in_view(b) && !(flags_[b] & (kFrameLent | kFrameGone))) flags_[b] |= kSpareFrame;
}

// On the home, before a transfer that reads F without the home seeing its end (a grant naming the home's frame, a
// one-sided push): copy the blocks whose frame was released from V (which holds them, write-protected: the home holds
// them read-only or not at all while another node is granted them) and keep F until the home next writes them.
void Segment::lend_frames(uint32_t first, uint32_t n) {
  if (!home_spares()) return;
  for (uint32_t b = first; b < first + n; ++b) {
    if ((flags_[b] & kFrameGone) && in_view(b)) {
      uint64_t off = block_off(b), len = block_len(b);
      ssize_t r = pread(view_fd_.get(), frames_ + off, len, static_cast<off_t>(off));
      if (r != static_cast<ssize_t>(len)) DIPC_LOG_ERROR("dsm: lend block {}: {}", b, strerror(errno));
      flags_[b] &= static_cast<uint8_t>(~kFrameGone);
    }
    flags_[b] = static_cast<uint8_t>((flags_[b] & ~kSpareFrame) | kFrameLent);
  }
}

Segment::Footprint Segment::footprint() const {
  Footprint f;
  struct stat st{};
  if (fstat(view_fd_.get(), &st) == 0) f.view = static_cast<uint64_t>(st.st_blocks) * 512;
  if (frames_fd_num_ >= 0 && fstat(frames_fd_num_, &st) == 0) f.frames = static_cast<uint64_t>(st.st_blocks) * 512;
  return f;
}

void Segment::wake(uint32_t b) {
  auto it = parked_.find(b);
  if (it == parked_.end()) return;
  for (uint64_t aid : it->second) {
    auto a = attaches_.find(aid);
    if (a == attaches_.end()) continue;
    uffdio_range r{a->second.addr + block_off(b), block_len(b)};
    if (ioctl(a->second.fd, UFFDIO_WAKE, &r) != 0 && errno != ENOENT)
      DIPC_LOG_WARN("dsm: wake block {}: {}", b, strerror(errno));
  }
  parked_.erase(it);
}

std::string Segment::status_line() const {
  uint32_t shared = 0, excl = 0;
  for (uint32_t b = 0; b < nblocks_; ++b) {
    if (cache_.writable(b)) ++excl;
    else if (cache_.readable(b)) ++shared;
  }
  std::ostringstream os;
  os << "  shmid " << static_cast<int32_t>(id_) << " home " << home_ << " size " << size_ << " block " << block_
     << (huge_ ? " (huge pages)" : "") << " held shared " << shared << " exclusive " << excl << " local attaches "
     << attaches_.size() << (dir_ ? " (home)" : "");
  Footprint f = footprint();
  os << " memory view " << f.view << " frames " << f.frames << "\n";
  return os.str();
}

// ---------------------------------------------------------------------------------------------------------------
// Manager

Manager::Manager(EventLoop& loop, transport::Transport* tr, NodeId self, uint64_t block_size, int64_t quantum_us,
                 int64_t answer_poll_us)
    : loop_(loop),
      tr_(tr),
      self_(self),
      block_size_(block_size),
      page_(static_cast<uint64_t>(sysconf(_SC_PAGESIZE))),
      quantum_(quantum_us),
      answer_poll_(answer_poll_us) {}

Manager::~Manager() = default;

int64_t Manager::now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Result<Segment*> Manager::open(uint64_t id, NodeId home, uint64_t size, uint64_t home_block, uint64_t huge_page) {
  auto it = segs_.find(id);
  if (it != segs_.end()) return it->second.get();
  // Per-block coherence state (about kStateBytesPerBlock a block) lives in the daemon. A segment whose state would
  // take more than 1/8 of the node's memory is refused with ENOMEM, as shmget(2) answers "no memory for the
  // segment's overhead", instead of an allocation that fails (or is OOM-killed) later.
  uint64_t want_block = home == self_ || home_block == 0 ? block_size_ : home_block;
  static const uint64_t budget = [] {
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    return pages > 0 && psize > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(psize) / 8 : uint64_t{1} << 30;
  }();
  if (want_block && size / want_block > budget / kStateBytesPerBlock) {
    DIPC_LOG_WARN("dsm: segment {} of {} bytes refused: its blocks' state needs more memory than allowed ({} bytes)",
                  static_cast<int32_t>(id), size, budget);
    return Status::err(ENOMEM);
  }
  Geometry g = segment_geometry(size, want_block, huge_page);
  if (g.block == 0) return Status::err(EINVAL);
  if (!fits_page(g, page_)) {
    DIPC_LOG_ERROR("dsm: segment {:#x} of node {} has {}-byte blocks, smaller than this node's {}-byte pages: it "
                   "cannot be attached here; set [dsm] block_size >= {} on every node",
                   id, home, g.block, page_, page_);
    return Status::err(EINVAL);
  }
  std::unique_ptr<Segment> s;
  try {
    s = std::make_unique<Segment>(*this, id, home, size, g);
  } catch (const std::bad_alloc&) {
    return Status::err(ENOMEM);
  }
  Status st = s->init();
  if (!st) return st;
  Segment* p = s.get();
  segs_.emplace(id, std::move(s));
  return p;
}

Segment* Manager::find(uint64_t id) {
  auto it = segs_.find(id);
  return it == segs_.end() ? nullptr : it->second.get();
}

void Segment::shared_first() {
  if (shared_) return;
  shared_ = true;
  m_.shared(id_);
}

void Manager::shared(uint64_t id) {
  if (shared_hook_) hooked([&] { shared_hook_(id); });
}

void Manager::notes_first() {
  if (notes_hook_) hooked(notes_hook_);
}

void Manager::hooked(const std::function<void()>& fn) {
  ++in_shared_hook_;
  fn();
  if (--in_shared_hook_ > 0) return;
  // The segment whose shared_first() called this is still at work on the stack: its destruction (and any other the
  // hook caused) waits for the end of the loop's iteration; a segment opened again under the id meanwhile stays.
  std::vector<uint64_t> ids = std::move(deferred_destroy_);
  deferred_destroy_.clear();
  std::weak_ptr<int> alive = alive_;
  for (uint64_t x : ids) {
    auto it = segs_.find(x);
    if (it == segs_.end()) continue;
    loop_.defer([this, alive, x, seg = it->second.get()] {
      if (alive.expired()) return;
      auto again = segs_.find(x);
      if (again != segs_.end() && again->second.get() == seg) destroy(x);
    });
  }
}

void Manager::destroy(uint64_t id) {
  if (in_shared_hook_ > 0) {  // a segment may be in the middle of its shared_first(): it goes afterwards
    deferred_destroy_.push_back(id);
    return;
  }
  segs_.erase(id);
  std::erase_if(region_waiters_, [id](const auto& w) { return std::get<0>(w.first) == id; });
  for (auto it = regions_.begin(); it != regions_.end();) it = it->first.first == id ? regions_.erase(it) : ++it;
  std::erase_if(local_q_, [id](const Msg& m) { return m.segment == id; });
}

void Manager::send(std::vector<Msg>& out) {
  for (Msg& m : out) {
    DSM_TRACE("dsm: out {} to {}", m.str(), m.to);
    ++stats_.messages_out;
    if (m.to == self_) {
      m.from = self_;
      local_q_.push_back(m);
      continue;
    }
    Encoder e;
    m.encode(e);
    send_one(m.to, e.take());
  }
  out.clear();
  drain_local();
}

void Manager::send_one(NodeId to, Bytes body) {
  bool first = true;
  Status s = issue(to, [this, to, body = std::move(body), first]() mutable {
    if (!first) ++stats_.messages_deferred;
    first = false;
    Status r = tr_->send(to, kOpMsg, body);
    if (!r && !r.retryable()) DIPC_LOG_DEBUG("dsm: message to node {} not sent: {}", to, r.str());
    return r;
  });
  // The link is down: the protocol learns it through on_peer(to, false) and recovers there.
  if (!s) DIPC_LOG_DEBUG("dsm: message to node {} not sent: {}", to, s.str());
}

Status Manager::issue(NodeId peer, std::function<Status()> op) {
  Status s = op();
  if (!s.retryable()) return s;
  std::weak_ptr<int> alive = alive_;
  return tr_->pending_add(peer, [alive, op = std::move(op)]() mutable {
    if (alive.expired()) return Status::ok();
    return op();
  });
}

void Manager::drain_local() {
  if (draining_) return;
  draining_ = true;
  while (!local_q_.empty()) {
    Msg m = local_q_.front();
    local_q_.pop_front();
    ++stats_.messages_in;
    if (Segment* s = find(m.segment)) s->on_msg(m);
  }
  draining_ = false;
}

void Manager::on_message(NodeId from, uint16_t op, ByteView body) {
  if (op != kOpMsg && op != kOpPush && op != kOpAckData) {
    DIPC_LOG_WARN("dsm: node {}: unknown message {}", from, op);
    return;
  }
  ByteView data;
  bool with_data = op == kOpPush || op == kOpAckData;
  if (with_data && body.size() > Msg::kEncodedSize) {
    data = body.subspan(Msg::kEncodedSize);
    body = body.first(Msg::kEncodedSize);
  }
  Decoder d(body);
  Msg m;
  if (!m.decode(d) || !d.done() || (with_data && data.empty()) ||
      (op == kOpAckData && (m.type != MsgType::kFetchAck || m.mode != FetchMode::kPushed))) {
    DIPC_LOG_WARN("dsm: node {}: malformed coherence message dropped", from);
    return;
  }
  m.from = from;
  m.to = self_;
  ++stats_.messages_in;
  if (Segment* s = find(m.segment)) {
    if (op == kOpPush) {
      s->on_push(m, data);
    } else if (op == kOpAckData) {
      s->on_data_ack(m, data);
    } else {
      if (m.type == MsgType::kFetchAck) m.mode = FetchMode::kNone;  // data comes only with kOpAckData
      s->on_msg(m);
    }
  }
  drain_local();
}

void Manager::on_request(NodeId from, uint16_t op, ByteView body, transport::ReplyToken token) {
  auto reply = [this, token](int st, Bytes b) { (void)tr_->reply(token, st, std::move(b)); };
  Decoder d(body);
  uint64_t id = d.u64(), offset = d.u64();
  if (op != kOpRegion || !d.done()) return reply(EPROTO, {});
  (void)from;
  Segment* s = find(id);
  if (!s) return reply(ENOENT, {});
  auto c = s->frames_chunk(offset);
  if (!c) return reply(c.status().code(), {});
  Encoder e;
  e.u64(offset / s->chunk_size() * s->chunk_size());
  (*c)->remote.encode(e);
  reply(0, e.take());
}

const transport::RemoteKey* Manager::cached_region(uint64_t id, NodeId node, uint64_t offset, uint64_t len,
                                                   uint64_t& chunk_off) const {
  auto it = regions_.find(std::make_pair(id, node));
  if (it == regions_.end()) return nullptr;
  auto k = it->second.upper_bound(offset);
  if (k == it->second.begin()) return nullptr;
  --k;
  if (offset + len > k->first + k->second.length()) return nullptr;
  chunk_off = k->first;
  return &k->second;
}

void Manager::region_of(uint64_t id, NodeId node, uint64_t offset, KeyCb cb) {
  uint64_t coff = 0;
  if (const transport::RemoteKey* k = cached_region(id, node, offset, 1, coff)) return cb(Status::ok(), *k, coff);
  auto wkey = std::make_tuple(id, node, offset);
  auto& waiters = region_waiters_[wkey];
  waiters.push_back(std::move(cb));
  if (waiters.size() > 1) return;
  Encoder e;
  e.u64(id);
  e.u64(offset);
  auto finish = [this, wkey](Status st, const transport::RemoteKey& k, uint64_t c) {
    auto it = region_waiters_.find(wkey);
    if (it == region_waiters_.end()) return;
    auto ws = std::move(it->second);
    region_waiters_.erase(it);
    for (auto& w : ws) w(st, k, c);
  };
  Status s = tr_->request(node, kOpRegion, e.take(), [this, id, node, offset, finish](Status st, ByteView b) {
    transport::RemoteKey k;
    uint64_t c = 0;
    if (st) {
      Decoder dec(b);
      c = dec.u64();
      if (!dec.ok() || !transport::RemoteKey::decode(dec, k) || !dec.done() || k.node() != node || c > offset ||
          offset - c >= k.length())
        st = Status::err(EPROTO);
    }
    if (st) regions_[std::make_pair(id, node)][c] = k;
    finish(st, k, c);
  });
  if (!s) finish(s, transport::RemoteKey{}, 0);
}

void Manager::on_peer(NodeId peer, bool up) {
  // A restarted peer registers new regions: forget what it told us.
  for (auto it = regions_.begin(); it != regions_.end();) it = it->first.second == peer ? regions_.erase(it) : ++it;
  if (up) return;
  for (auto& [id, s] : segs_) s->on_node_lost(peer);
  drain_local();
}

std::string Manager::status_text() const {
  std::ostringstream os;
  os << "shared memory segments on this node: " << segs_.size() << "\n";
  for (const auto& [id, s] : segs_) os << s->status_line();
  os << "pages fetched " << stats_.remote_fetches << "\n";
  os << "pages pushed " << stats_.pushes << "\n";
  os << "pages prefetched " << stats_.prefetched << "\n";
  os << "pages written ahead " << stats_.written_ahead << "\n";
  os << "pages frames_released " << stats_.frames_released << "\n";
  os << "dsm faults " << stats_.faults << " zero-fills " << stats_.zero_fills << " invalidations "
     << stats_.invalidations << " downgrades " << stats_.downgrades << " messages out " << stats_.messages_out
     << " in " << stats_.messages_in << "\n";
  return os.str();
}

}  // namespace dipc::dsm
