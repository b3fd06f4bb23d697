// Shared memory bookkeeping: the attaches of this node's programs (per client connection) and, at the home, the
// segment's ShmSeg (attach counts, IPC_RMID, destruction once the last attach is gone).
#include "ipc/service.h"

#include <fcntl.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <string>

#include "common/log.h"
#include "ipc/service_internal.h"

namespace dipc::ipc {

using namespace service_detail;

// ---------------------------------------------------------------------------------------------------------------
// Shared memory: the home keeps the segment's bookkeeping (ShmSeg); every node that attaches it keeps a DSM
// segment (dsm::Manager) whose view the local processes map.

void Service::client_shmat(const Creds& c, ByteView body, FdReplyFn reply) {
  ShmAtReq req;
  if (!decode_body(body, req)) return reply(EINVAL, {}, -1);
  uint16_t home = id_node(req.id);
  if (!is_dipc_id(req.id) || !cfg_.node(home)) return reply(EINVAL, unknown_id(), -1);
  Creds cc = c;
  cc.node = cfg_.self;
  Encoder e;
  HomeHeader{cc, 0}.encode(e);
  req.encode(e);
  call(home, kShmAt, e.take(), [this, req, home, reply](int st, ByteView b) {
    ShmAtResp r;
    if (st) return reply(st, Bytes(b.begin(), b.end()), -1);
    if (!decode_body(b, r) || r.mapped == 0 || r.block == 0) return reply(EIO, {}, -1);
    auto seg = dsm_.open(static_cast<uint32_t>(req.id), home, r.size, r.block, r.huge_page);
    if (!seg) return reply(seg.status().code() == EINVAL ? EINVAL : ENOMEM, {}, -1);
    if ((*seg)->mapped_size() != r.mapped || (*seg)->block_size() != r.block || (*seg)->huge_page() != r.huge_page)
      return reply(EIO, {}, -1);
    // A read-only attach gets a read-only descriptor: the program cannot map it writable.
    std::string path = "/proc/self/fd/" + std::to_string((*seg)->view_fd());
    int fd = (req.flg & SHM_RDONLY) ? open(path.c_str(), O_RDONLY | O_CLOEXEC)
                                    : fcntl((*seg)->view_fd(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return reply(EMFILE, {}, -1);
    r.mapped = (*seg)->mapped_size();
    reply(0, encode_body(r), fd);
  });
}

void Service::client_shm_attached(const Creds& c, uint64_t conn, ByteView body, int uffd, ReplyFn reply) {
  ShmAttachReq req;
  if (!decode_body(body, req)) {
    close(uffd);
    return reply(EINVAL, {});
  }
  dsm::Segment* seg = dsm_.find(static_cast<uint32_t>(req.id));
  struct stat vst {};
  if (req.view_ino && (!seg || fstat(seg->view_fd(), &vst) != 0 || static_cast<uint64_t>(vst.st_ino) != req.view_ino)) {
    close(uffd);  // the program mapped a view it kept, and this node's view of the segment is another one (or none)
    return reply(ESTALE, {});
  }
  if (!seg) {
    close(uffd);
    return reply(EINVAL, {});
  }
  if (req.utok) {  // a token names one userfaultfd of the connection
    bool used = dormant_.count({conn, req.utok}) != 0;
    if (auto it = attaches_.find(conn); it != attaches_.end())
      for (const LocalAttach& x : it->second) used = used || x.utok == req.utok;
    if (used) {
      close(uffd);
      return reply(EINVAL, {});
    }
  }
  uint64_t aid = next_attach_++;
  bool rdonly = req.flg & SHM_RDONLY;
  if (Status st = seg->add_attach(aid, uffd, req.addr, req.len, rdonly); !st) return reply(st.code(), {});
  Creds cc = c;
  cc.node = cfg_.self;
  attaches_[conn].push_back(LocalAttach{aid, req.id, req.addr, cc, req.utok, rdonly});
  Encoder e;
  HomeHeader{cc, 0}.encode(e);
  req.encode(e);
  call(id_node(req.id), kShmAttached, e.take(), [this, conn, aid, id = req.id, reply](int st, ByteView) {
    if (st) {
      if (dsm::Segment* s = dsm_.find(static_cast<uint32_t>(id))) s->remove_attach(aid);
      auto it = attaches_.find(conn);
      if (it != attaches_.end()) std::erase_if(it->second, [aid](const LocalAttach& a) { return a.attach == aid; });
    }
    reply(st, {});
  });
}

void Service::client_shm_attach_note(const Creds& c, uint64_t conn, ByteView body, int uffd, int view) {
  ShmAttachReq req;
  const char* why = nullptr;
  dsm::Segment* seg = nullptr;
  ShmSeg* s = nullptr;
  struct stat vst {}, sst {};
  if (!decode_body(body, req)) {
    why = "malformed";
  } else if (id_node(req.id) != cfg_.self || !(s = find_shm(req.id)) ||
             !(seg = dsm_.find(static_cast<uint32_t>(req.id)))) {
    why = "names no segment homed here";
  } else if (fstat(view, &vst) != 0 || fstat(seg->view_fd(), &sst) != 0 || vst.st_dev != sst.st_dev ||
             vst.st_ino != sst.st_ino) {
    why = "comes with a descriptor that is not the segment's view";
  } else if (!(req.flg & SHM_RDONLY) && (fcntl(view, F_GETFL) & O_ACCMODE) != O_RDWR) {
    why = "asks for a writable attach through a read-only view";  // the view proves the mode dipcd checked
  }
  close(view);
  if (why) {
    DIPC_LOG_DEBUG("client pid {}: a one-way attach {}; not counted", c.pid, why);
    close(uffd);
    return;
  }
  uint64_t aid = next_attach_++;
  if (Status st = seg->add_attach(aid, uffd, req.addr, req.len, req.flg & SHM_RDONLY); !st) {
    DIPC_LOG_DEBUG("client pid {}: a one-way attach: {}; not counted", c.pid, st.str());
    return;
  }
  Creds cc = c;
  cc.node = cfg_.self;
  attaches_[conn].push_back(LocalAttach{aid, req.id, req.addr, cc});
  s->attached(c.pid, now_s());
}

Service::LocalAttach* Service::find_local_attach(uint64_t conn, int32_t id, uint64_t addr) {
  auto it = attaches_.find(conn);
  if (it == attaches_.end()) return nullptr;
  auto a = std::find_if(it->second.begin(), it->second.end(),
                        [&](const LocalAttach& x) { return x.id == id && x.addr == addr; });
  return a == it->second.end() ? nullptr : &*a;
}

void Service::erase_local_attach(uint64_t conn, const LocalAttach* a) {
  auto it = attaches_.find(conn);
  it->second.erase(it->second.begin() + (a - it->second.data()));
  if (it->second.empty()) attaches_.erase(it);
}

void Service::park_local_attach(uint64_t conn, const LocalAttach& a) {
  dsm::Segment* seg = dsm_.find(static_cast<uint32_t>(a.id));
  if (!seg) return;
  size_t n = 0;
  for (auto it = dormant_.lower_bound({conn, 0}); it != dormant_.end() && it->first.first == conn; ++it) ++n;
  if (n >= kMaxDormantPerConn) drop_dormant(conn, dormant_.lower_bound({conn, 0})->first.second);  // the oldest
  seg->park_attach(a.attach);
  dormant_[{conn, a.utok}] = Dormant{a.id, a.attach, a.rdonly};
}

void Service::drop_dormant(uint64_t conn, uint64_t utok) {
  auto it = dormant_.find({conn, utok});
  if (it == dormant_.end()) return;
  if (dsm::Segment* seg = dsm_.find(static_cast<uint32_t>(it->second.id))) seg->remove_attach(it->second.attach);
  dormant_.erase(it);
}

int Service::client_shm_revive(const Creds& c, uint64_t conn, ByteView body, bool sync) {
  ShmAttachReq req;
  if (!decode_body(body, req)) return EINVAL;
  if (req.utok == 0) return EBADF;  // kShmAttached without its userfaultfd and without a kept one
  auto d = dormant_.find({conn, req.utok});
  if (d == dormant_.end()) return ESTALE;  // no such kept userfaultfd (or still attached): the full path
  ShmSeg* s = id_node(req.id) == cfg_.self ? find_shm(req.id) : nullptr;
  dsm::Segment* seg = dsm_.find(static_cast<uint32_t>(req.id));
  if (d->second.id != req.id || !s || !seg || !seg->has_attach(d->second.attach)) {
    if (!seg || !seg->has_attach(d->second.attach)) dormant_.erase(d);  // its segment is gone
    return ESTALE;
  }
  bool rdonly = req.flg & SHM_RDONLY;
  if (rdonly != d->second.rdonly) return EINVAL;  // a record checked read-only never serves a writable attach
  Creds cc = c;
  cc.node = cfg_.self;
  if (sync)
    if (int e = s->attach_check(cc, req.flg)) return e;
  if (Status st = seg->revive_attach(d->second.attach, req.addr, req.len, rdonly); !st) return st.code();
  attaches_[conn].push_back(LocalAttach{d->second.attach, req.id, req.addr, cc, req.utok, rdonly});
  dormant_.erase(d);
  s->attached(c.pid, now_s());
  return 0;
}

void Service::client_shm_forget(uint64_t conn, ByteView body) {
  ShmAttachReq req;
  if (decode_body(body, req)) drop_dormant(conn, req.utok);
}

void Service::client_shm_attach_check(const Creds& c, uint64_t conn, ByteView body, ReplyFn reply) {
  ShmAttachReq req;
  if (!decode_body(body, req)) return reply(EINVAL, {});
  LocalAttach* a = find_local_attach(conn, req.id, req.addr);
  if (!a) return reply(ESTALE, {});  // the note was refused: the program takes the full path
  ShmSeg* s = find_shm(req.id);
  Creds cc = c;
  cc.node = cfg_.self;
  int e = s ? s->attach_check(cc, req.flg) : EINVAL;
  if (!e) return reply(0, {});
  // The rights changed before the program could see its attach counted (the kernel's order: IPC_SET first). A kept
  // userfaultfd stays the program's (it unmaps the range).
  LocalAttach gone = *a;
  erase_local_attach(conn, a);
  if (gone.utok)
    park_local_attach(conn, gone);
  else if (dsm::Segment* seg = dsm_.find(static_cast<uint32_t>(req.id)))
    seg->remove_attach(gone.attach);
  if (s) s->unattached();
  reply(e, {});
}

void Service::fence_and_drain_notes() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (notes_hook_) notes_hook_();
}

void Service::shm_shared(uint64_t id) {
  ShmSeg* s = find_shm(static_cast<int32_t>(id));
  if (!s || s->shared() || id_node(static_cast<int32_t>(id)) != cfg_.self) return;
  s->set_shared();
  if (!s->removed() && s->perm().key != IPC_PRIVATE) shm_table_changed();
  fence_and_drain_notes();
}

void Service::shm_detach_at_home(const Creds& c, int32_t id, ReplyFn reply) {
  Encoder e;
  HomeHeader{c, 0}.encode(e);
  ShmAttachReq{id, 0, 0, 0}.encode(e);
  call(id_node(id), kShmDt, e.take(), [reply](int st, ByteView b) { reply(st, Bytes(b.begin(), b.end())); });
}

void Service::client_shmdt(const Creds& c, uint64_t conn, ByteView body, ReplyFn reply) {
  ShmAttachReq req;
  if (!decode_body(body, req)) return reply(EINVAL, {});
  LocalAttach* a = find_local_attach(conn, req.id, req.addr);
  if (!a) return reply(EINVAL, {});
  LocalAttach gone = *a;
  erase_local_attach(conn, a);
  if (gone.utok && req.utok == gone.utok)
    park_local_attach(conn, gone);  // the program keeps the userfaultfd for its next attach
  else if (dsm::Segment* s = dsm_.find(static_cast<uint32_t>(gone.id)))
    s->remove_attach(gone.attach);
  Creds cc = c;
  cc.node = cfg_.self;
  shm_detach_at_home(cc, gone.id, std::move(reply));
}

void Service::client_conn_closed(uint64_t conn) {
  while (true) {
    auto d = dormant_.lower_bound({conn, 0});
    if (d == dormant_.end() || d->first.first != conn) break;
    drop_dormant(conn, d->first.second);
  }
  auto it = attaches_.find(conn);
  if (it == attaches_.end()) return;
  std::vector<LocalAttach> list = std::move(it->second);
  attaches_.erase(it);
  for (const auto& a : list) {
    if (dsm::Segment* s = dsm_.find(static_cast<uint32_t>(a.id))) s->remove_attach(a.attach);
    shm_detach_at_home(a.creds, a.id, [](int, Bytes) {});
  }
}

std::vector<ShmTableRow> Service::shm_table_rows() const {
  std::vector<ShmTableRow> rows;
  for (const auto& [tk, id] : home_keys_) {
    if (tk.first != static_cast<uint8_t>(ObjType::kShm)) continue;
    auto it = shms_.by_id.find(id);
    if (it == shms_.by_id.end() || it->second->removed()) continue;
    const Perm& p = it->second->perm();
    rows.push_back(ShmTableRow{p.key, id, static_cast<uint32_t>(p.mode & 0777), p.uid, p.gid, p.cuid, p.cgid,
                               it->second->size(), it->second->shared() ? kShmRowShared : 0u});
  }
  return rows;
}

ShmSeg* Service::find_shm(int32_t id) {
  auto it = shms_.by_id.find(id);
  return it == shms_.by_id.end() ? nullptr : it->second.get();
}

void Service::home_shmat(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  ShmAtReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  ShmSeg* s = find_shm(r.id);
  if (!s) return reply(EINVAL, unknown_id());
  if (int e = s->attach_check(h.creds, r.flg)) return reply(e, {});
  dsm::Segment* seg = dsm_.find(static_cast<uint32_t>(r.id));
  reply(0, encode_body(ShmAtResp{s->size(), seg ? seg->mapped_size() : 0, seg ? seg->block_size() : 0,
                                 seg ? seg->huge_page() : 0}));
}

void Service::home_shm_attach(uint16_t op, const HomeHeader& h, ByteView body, ReplyFn& reply) {
  ShmAttachReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  ShmSeg* s = find_shm(r.id);
  if (!s) return reply(EINVAL, {});
  if (op == kShmAttached) {
    // The attach's rights are checked again here: kShmAt granted a mode, this names the mode actually mapped.
    if (int e = s->attach_check(h.creds, r.flg)) return reply(e, {});
    s->attached(h.creds.pid, now_s());
  } else {
    s->detached(h.creds.pid, now_s());
    ShmDtResp resp{static_cast<uint8_t>(s->removed() ? 1 : 0)};
    shm_destroy_if_gone(r.id);
    return reply(0, encode_body(resp));
  }
  reply(0, {});
}

void Service::home_shmctl(const HomeHeader& h, ByteView body, ReplyFn& reply) {
  ShmCtlReq r;
  if (!decode_body(body, r)) return reply(EINVAL, {});
  ShmSeg* s = find_shm(r.id);
  if (!s) return reply(EINVAL, unknown_id());
  int e = 0;
  switch (r.cmd) {
    case IPC_STAT: {
      ShmCtlResp resp;
      e = s->stat(h.creds, resp.stat);
      return e ? reply(e, {}) : reply(0, encode_body(resp));
    }
    case IPC_SET:
      e = s->set(r.uid, r.gid, r.mode, h.creds, now_s());
      if (!e && !s->removed() && s->perm().key != IPC_PRIVATE) shm_table_changed();  // before the answer
      return reply(e, {});
    case IPC_RMID: {
      int32_t key = s->perm().key;
      bool was_removed = s->removed();
      e = s->rmid(h.creds);
      if (!e && !was_removed) home_key_drop(ObjType::kShm, key, r.id);
      if (!e && !was_removed && key != IPC_PRIVATE)
        notify(referee_for(key), kKeyUnbind, encode_body(KeyReq{ObjType::kShm, key, 0, r.id}));
      reply(e, {});
      // The key left the table above: a one-way attach whose program still saw it is in its socket now, and is
      // counted before the segment may be destroyed (docs/ARCHITECTURE.md, "One-way shmat").
      if (!e && !was_removed && key != IPC_PRIVATE) fence_and_drain_notes();
      if (!e) shm_destroy_if_gone(r.id);
      return;
    }
    case SHM_LOCK:
    case SHM_UNLOCK:
      return reply(s->lock(h.creds, r.cmd == SHM_LOCK, now_s()), {});
    default:
      return reply(EINVAL, {});
  }
}

void Service::shm_destroy_if_gone(int32_t id) {
  auto it = shms_.by_id.find(id);
  if (it == shms_.by_id.end() || !it->second->gone()) return;
  home_key_drop(ObjType::kShm, it->second->perm().key, id);
  shm_pages_ -= (it->second->size() + dsm_.page_size() - 1) / dsm_.page_size();
  shms_.by_id.erase(it);
  shms_.free.push_back(id_slot(id));
  for (uint16_t n : node_ids_)
    if (n == cfg_.self || tr_->peer_up(n)) notify(n, kShmDestroy, encode_body(ShmDestroyMsg{id}));
}

}  // namespace dipc::ipc
