// The dipc protocol: operations between a program (libdipc.so) and its node's dipcd, and between daemons.
//
// Every message is a frame (common/frame.h). A client sends kRequest frames on its Unix socket and gets exactly one
// kResponse with the same id; the response's status field is the errno the SysV call returns (0: success). A client
// cancels a blocked request (signal, timeout) with a kOneWay kCancel frame naming the request id; it then still gets
// the request's one response: the result if the operation completed first, else ECANCELED.
//
// Between daemons the same bodies travel prefixed with the caller's credentials and a cluster-unique token
// (HomeHeader), so the object's home node applies the checks with the caller's real identity.
// Every body is encoded with common/wire.h (big-endian) and decoded strictly: trailing bytes are an error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/wire.h"
#include "ipc/msg_queue.h"
#include "ipc/sem_set.h"
#include "ipc/ids.h"
#include "ipc/types.h"

namespace dipc::ipc {

inline constexpr uint32_t kProtocolVersion = 8;  // 2: ShmAtResp carries the block size; 3: kernel-backed sets;
                                                 // 4: ShmAttachReq.view_ino, kShmDt answers ShmDtResp;
                                                 // 5: kernel-backed queues (kMsgCtlKernel, IpcInfoResp.hidden_b)
                                                 // 6: kShmDt of a segment homed here is a one-way note
                                                 // 7: ShmAtResp.huge_page (SHM_HUGETLB backing); kShmAttachCheck and
                                                 //    the one-way kShmAttached (a re-attach homed here)
                                                 // 8: ShmAttachReq.utok (an attach's userfaultfd kept from one
                                                 //    attach to the next), kShmNotes (the note channel), kShmForget
inline constexpr uint32_t kMaxSops = 32768;   // hard decode bound; the home enforces semopm
inline constexpr uint32_t kMaxSems = 65536;   // hard decode bound; the home enforces semmsl
inline constexpr uint32_t kMaxMsgText = 1u << 20;

enum Op : uint16_t {
  // client -> daemon (and forwarded daemon -> home)
  kHello = 1,
  kSemGet = 2,
  kSemOp = 3,
  kSemCtl = 4,
  kMsgGet = 5,
  kMsgSnd = 6,
  kMsgRcv = 7,
  kMsgCtl = 8,
  kShmGet = 9,       // GetReq (size) -> IdResp
  kShmAt = 10,       // ShmAtReq -> ShmAtResp; the node's view memfd comes with the response (SCM_RIGHTS)
  kShmAttached = 11, // ShmAttachReq, with the process's userfaultfd (SCM_RIGHTS) -> empty; counts in shm_nattch.
                     // With view_ino set (a re-attach through a view memfd the process kept): ESTALE when that is
                     // not this node's view of the segment any more
  kShmDt = 12,       // ShmAttachReq (addr, len unused) -> ShmDtResp; one-way (no answer) for a segment homed here
  kShmCtl = 13,      // ShmCtlReq -> ShmCtlResp (IPC_STAT) or empty
  kIpcInfo = 14,     // IpcInfoReq -> IpcInfoResp: the cluster's distributed objects of a type, for *_INFO
  kIpcStat = 15,     // IpcStatReq (a *_STAT index) -> IdResp + the type's CtlResp (stat filled)
  kShmAttachCheck = 16,  // ShmAttachReq (id, addr, flg) -> empty: the program's confirmation of a one-way attach
                         // (kShmAttached sent kOneWay with its userfaultfd and its view memfd, for a segment homed
                         // here): 0 once counted and the rights still allow it; ESTALE when the note was refused
  kShmNotes = 17,        // empty, with one end of an AF_UNIX SOCK_SEQPACKET socketpair the program made (SCM_RIGHTS)
                         // -> empty: the connection's note channel, which dipcd does not poll (docs/ARCHITECTURE.md,
                         // "The note channel"); the pair's SO_PEERCRED must be the connection's process
  kShmForget = 18,       // ShmAttachReq (utok): one-way on the note channel: the program closed its copy of the
                         // userfaultfd `utok` names; dipcd drops the dormant attach it kept for it
  kCancel = 20,  // one-way, client -> daemon; body: none (frame id names the request)
  kBlocked = 21, // one-way, daemon -> client; body: none: request (frame id) now waits at its home, registered
                 // there, so a program sleeps only once its wait is seen by every other caller (IPC_RMID: EIDRM)
  kAdminStatus = 30,
  kAdminEnable = 31,
  kAdminObjects = 32,  // empty -> ObjListResp: every object of the cluster (`dipc ipcs`)
  // daemon -> daemon only
  kKeyAcquire = 100,  // to the key's referee
  kKeyBind = 101,
  kKeyRelease = 102,
  kKeyUnbind = 103,
  kOpen = 104,        // to the home: permission and size checks of a *get that found an existing key
  kHomeCancel = 105,  // one-way: cancel a forwarded request by token
  kProcExit = 106,    // one-way: a process of the sender's node exited (apply SEM_UNDO)
  kShmDestroy = 107,  // one-way, home -> every node: the segment is gone (IPC_RMID and the last detach)
  kObjList = 108,     // empty (no HomeHeader) -> ObjListResp: the objects the receiver hosts
  kStatSlot = 109,
  kBlockedNote = 110, // one-way, home -> origin: HomeCancelMsg{token}: the request `token` is queued at the home    // to the home: IpcStatReq (index = the home's slot) -> as kIpcStat
  // 120..129: the DSM layer's own messages (dsm/segment.h)
};

// Whether serving `op`, from a local program or a peer node, may depend on the one-way shmdt notes of this node's
// programs (shm_nattch, shm_lpid, shm_dtime, a destruction, a listing): the daemon applies the notes first
// (daemon/client_server.h, drain_notes). Semaphore and queue operations do not: whatever follows a detach and
// reads shared memory state is one of these.
inline constexpr bool depends_on_shm_notes(uint16_t op) {
  return (op >= kShmGet && op <= kIpcStat) || op == kShmAttachCheck || op == kAdminObjects || op == kOpen || op == kObjList ||
         op == kStatSlot;
}

// An id (or key) the daemon does not know: the response carries this body with EINVAL so the preload knows to try
// the kernel instead.
inline constexpr uint8_t kUnknownIdMarker = 0xff;

// semctl command the preload uses to learn nsems before GETALL/SETALL copy arrays (no Linux command has this value).
inline constexpr int32_t kSemCtlNsems = 0x44490001;
// A set homed on the caller's node may be backed by a kernel set in the home dipcd's IPC namespace, which local
// programs operate on directly (docs/ARCHITECTURE.md, "Semaphores homed here"). kSemCtlKernel -> SemKernelResp:
// the kernel id (-1: none, or a caller of another node) and the daemon's IPC namespace. kSemCtlUndoClear (semnum,
// -1: all): after a program's own SETVAL/SETALL on the kernel set, the home forgets the SEM_UNDO adjustments it
// keeps for processes of other nodes on those semaphores, as the kernel's SETVAL does for local ones.
inline constexpr int32_t kSemCtlKernel = 0x44490002;
inline constexpr int32_t kSemCtlUndoClear = 0x44490003;
// The same for a message queue (docs/ARCHITECTURE.md, "Message queues homed here"): msgctl pseudo-command ->
// SemKernelResp (the kernel queue's id).
inline constexpr int32_t kMsgCtlKernel = 0x44490004;

struct HelloReq {
  uint32_t version = kProtocolVersion;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
// The daemon also passes its control page memfd with SCM_RIGHTS along with this response.
struct HelloResp {
  uint32_t version = kProtocolVersion;
  uint16_t node = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

struct GetReq {  // semget / msgget / shmget (nsems: semget only; size: shmget only)
  int32_t key = 0;
  int32_t nsems = 0;
  int32_t flg = 0;
  uint64_t size = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct IdResp {
  int32_t id = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

struct SemOpReq {
  int32_t id = 0;
  std::vector<SemBuf> sops;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

struct SemCtlReq {
  int32_t id = 0;
  int32_t semnum = 0;
  int32_t cmd = 0;
  int32_t val = 0;               // SETVAL
  std::vector<uint16_t> vals;    // SETALL
  uint32_t uid = 0, gid = 0;     // IPC_SET
  uint16_t mode = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct SemKernelResp {     // kSemCtlKernel and kMsgCtlKernel
  int32_t kid = -1;     // the kernel set's (queue's) id, -1: operate through the daemon
  uint64_t ns_ino = 0;  // st_ino of the daemon's /proc/self/ns/ipc: the kernel id means something only there
  int32_t daemon_pid = 0;  // a kernel GETPID of this pid: ask dipcd (the last operation came from another node)
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
using KernelIdResp = SemKernelResp;
struct SemCtlResp {
  int32_t ret = 0;              // GETVAL/GETPID/GETNCNT/GETZCNT value
  std::vector<uint16_t> vals;   // GETALL
  SemStat stat{};               // IPC_STAT
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

struct MsgSndReq {
  int32_t id = 0;
  int64_t mtype = 0;
  Bytes text;
  int32_t flg = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct MsgRcvReq {
  int32_t id = 0;
  uint64_t maxsize = 0;
  int64_t msgtyp = 0;
  int32_t flg = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct MsgRcvResp {
  int64_t mtype = 0;
  Bytes text;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

struct MsgCtlReq {
  int32_t id = 0;
  int32_t cmd = 0;
  uint32_t uid = 0, gid = 0;  // IPC_SET
  uint16_t mode = 0;
  uint64_t qbytes = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct MsgCtlResp {
  MsgStat stat{};
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

// ---- shared memory ----
// shmat is three steps, so that the process maps the segment before the daemon counts the attach:
//   kShmAt{id, flg}         the home checks ipc_perm (read, or read+write); the reply carries the node's view memfd
//                           (O_RDONLY for SHM_RDONLY) and the segment's size;
//   (the process maps it, creates a userfaultfd, registers the mapping MISSING|WP)
//   kShmAttached{id, addr, len, flg} + the userfaultfd: from now on dipcd resolves the mapping's faults; the home
//                           counts the attach (shm_nattch, shm_lpid, shm_atime).
// kShmDt{id, addr}: the process unmapped it. For a segment homed on this node it is a one-way frame (FrameKind::kOneWay,
// no answer): dipcd applies every such note already in a local socket before it answers any request or peer frame.
// A connection that closes (exit, kill -9, exec) detaches everything it
// attached, so a process uses one connection for all its attaches.
struct ShmAtReq {
  int32_t id = 0;
  int32_t flg = 0;  // SHM_RDONLY ...
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct ShmAtResp {
  uint64_t size = 0;    // shm_segsz
  uint64_t mapped = 0;  // bytes to map: size rounded up (dsm/coherence.h segment_geometry)
  uint64_t block = 0;   // the segment's coherence unit, chosen by its home (dsm/coherence.h)
  uint64_t huge_page = 0;  // SHM_HUGETLB: the size of the huge pages backing it on every node; 0: normal pages
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct ShmAttachReq {  // kShmAttached / kShmDt
  int32_t id = 0;
  uint64_t addr = 0;
  uint64_t len = 0;
  int32_t flg = 0;
  uint64_t view_ino = 0;  // kShmAttached: the inode of the view memfd mapped, when it was kept from an earlier attach
  // kShmAttached with a userfaultfd: a token (unique per connection, the program's choice) naming it, so that the
  // program may register its next attach of the segment on it (0: closed at the detach). kShmAttached without a
  // descriptor (a note on the channel, or its synchronous fallback): the kept userfaultfd the new range is registered
  // on. kShmDt: the program keeps its copy: dipcd keeps the attach dormant, its userfaultfd still watched.
  uint64_t utok = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct ShmDtResp {  // kShmDt's answer
  uint8_t removed = 0;  // the segment is marked for destruction (SHM_DEST) or gone: a kept view memfd is dropped
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct ShmStat {
  Perm perm;  // mode includes SHM_DEST (01000) and SHM_LOCKED (02000)
  uint64_t segsz = 0;
  int64_t atime = 0, dtime = 0, ctime = 0;
  int32_t cpid = 0, lpid = 0;
  uint64_t nattch = 0;
};
struct ShmCtlReq {
  int32_t id = 0;
  int32_t cmd = 0;  // IPC_STAT, IPC_SET, IPC_RMID, SHM_LOCK, SHM_UNLOCK
  uint32_t uid = 0, gid = 0;  // IPC_SET
  uint16_t mode = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct ShmCtlResp {
  ShmStat stat{};
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct ShmDestroyMsg {
  int32_t id = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

struct AdminEnableReq {
  bool enabled = true;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct AdminStatusResp {
  std::string text;  // human-readable `dipc status`
  uint32_t peers_total = 0, peers_up = 0;
  bool enabled = true;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

// One object in a listing (`dipc ipcs`). a/b: sem: nsems, 0; msg: qnum, cbytes; shm: segsz, nattch.
struct ObjEntry {
  ObjType type = ObjType::kSem;
  int32_t id = 0;
  int32_t key = 0;
  uint32_t uid = 0, gid = 0, cuid = 0, cgid = 0;
  uint16_t mode = 0;  // shm: includes SHM_DEST and SHM_LOCKED
  uint16_t home = 0;
  uint64_t a = 0, b = 0;
  bool operator==(const ObjEntry&) const = default;
};
inline constexpr uint32_t kMaxObjEntries = 1u << 20;
inline constexpr uint32_t kMaxNodes = 65536;
struct ObjListResp {  // kObjList / kAdminObjects
  std::vector<ObjEntry> entries;
  std::vector<uint16_t> unreachable;  // kAdminObjects: peers that did not answer (kObjList: always empty)
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

// ---- *_STAT and *_INFO over the kernel's objects and the cluster's ----
// The kernel numbers its objects' indices 0..IPCMNI-1; distributed objects take the indices from kStatIndexBase on:
// kStatIndexBase + slot * nodes + the home's rank among the configured nodes (sorted by id). An object keeps its
// index as long as it lives (a scan sees stable indices), and the indices stay dense while few slots are used.
inline constexpr int32_t kStatIndexBase = 32768;
inline constexpr int32_t stat_index(uint32_t slot, uint32_t rank, uint32_t nodes) {
  return kStatIndexBase + static_cast<int32_t>(slot * nodes + rank);
}
struct IpcInfoReq {
  ObjType type = ObjType::kSem;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct IpcInfoResp {
  int32_t max_index = -1;  // the highest index of a distributed object, -1 without any
  uint32_t count = 0;      // objects
  uint64_t a = 0, b = 0;   // sums of ObjEntry a, b: sem: nsems; msg: qnum, cbytes; shm: pages of segsz, nattch
  // Kernel sets (queues) that back distributed sets (queues) homed on the asking node, with their semaphores
  // (messages, bytes) and the daemon's IPC namespace: the preload hides them from the kernel's *_STAT scan and
  // *_INFO counts.
  uint64_t ns_ino = 0;
  std::vector<int32_t> hidden;
  uint64_t hidden_a = 0;  // sem: semaphores; msg: messages
  uint64_t hidden_b = 0;  // msg: bytes
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct IpcStatReq {
  ObjType type = ObjType::kSem;
  int32_t index = 0;  // kIpcStat: a *_STAT index; kStatSlot: the home's slot
  bool any = false;   // *_STAT_ANY: no read permission needed
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

// ---- daemon <-> daemon ----

// Prefix of every request forwarded to a home node.
struct HomeHeader {
  Creds creds;
  uint64_t token = 0;  // cluster-unique: (origin node << 48) | counter
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

struct KeyReq {  // kKeyAcquire / kKeyBind / kKeyRelease / kKeyUnbind
  ObjType type = ObjType::kSem;
  int32_t key = 0;
  int32_t flg = 0;  // acquire: the *get flags
  int32_t id = 0;   // bind / unbind
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
enum class KeyVerdict : uint8_t { kFound = 1, kCreate = 2 };
struct KeyResp {
  KeyVerdict verdict = KeyVerdict::kFound;
  int32_t id = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

struct OpenReq {  // kOpen: after kFound, the home checks ipcperms(flg) and semget's nsems / shmget's size
  ObjType type = ObjType::kSem;
  int32_t id = 0;
  int32_t nsems = 0;
  int32_t flg = 0;
  uint64_t size = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

struct ProcExitMsg {
  int32_t pid = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};
struct HomeCancelMsg {
  uint64_t token = 0;
  void encode(Encoder& e) const;
  bool decode(Decoder& d);
};

// Helpers: encode a body into fresh bytes; decode a whole body strictly.
template <typename T>
Bytes encode_body(const T& v) {
  Encoder e;
  v.encode(e);
  return e.take();
}
template <typename T>
bool decode_body(ByteView b, T& v) {
  Decoder d(b);
  return v.decode(d) && d.done();
}

}  // namespace dipc::ipc
