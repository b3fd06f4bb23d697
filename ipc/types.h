// Cluster-wide SysV object vocabulary shared by the semantics (sem_set, msg_queue), the protocol and the service.
#pragma once

#include <cerrno>
#include <cstdint>
#include <vector>

namespace dipc::ipc {

// Who is calling, as the caller's node learned it from the kernel (SO_PEERCRED + /proc/<pid>/status), never from
// the client itself. uid/gid are the effective ids, as the kernel's ipcperms() uses.
struct Creds {
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::vector<uint32_t> groups;  // supplementary groups
  int32_t pid = 0;               // pid on the caller's node
  uint16_t node = 0;             // the caller's node
  // Effective capabilities of the calling process (CapEff in /proc/<pid>/status), as the kernel checks them.
  bool cap_ipc_owner = false;   // bypasses mode checks
  bool cap_sys_admin = false;   // IPC_SET/IPC_RMID on objects one does not own
  bool cap_sys_resource = false;  // raise msg_qbytes above msgmnb
  bool cap_ipc_lock = false;      // SHM_LOCK / SHM_UNLOCK on segments one does not own
  bool in_group(uint32_t g) const {
    if (g == gid) return true;
    for (uint32_t x : groups)
      if (x == g) return true;
    return false;
  }
};

// A process anywhere in the cluster: SEM_UNDO lists and pids are kept per ProcKey.
struct ProcKey {
  uint16_t node = 0;
  int32_t pid = 0;
  bool operator==(const ProcKey&) const = default;
  bool operator<(const ProcKey& o) const { return node != o.node ? node < o.node : pid < o.pid; }
};

// struct ipc_perm, cluster-wide.
struct Perm {
  int32_t key = 0;
  uint32_t uid = 0, gid = 0, cuid = 0, cgid = 0;
  uint16_t mode = 0;  // low 9 bits are permissions
  uint16_t seq = 0;
};

// The kernel's ipcperms(): flag is the requested access (0444 read, 0222 write/alter, 0666, or 0 for none).
// Returns 0 or EACCES.
inline int ipc_check(const Perm& p, const Creds& c, int flag) {
  int granted = p.mode;
  int requested = (flag >> 6) | (flag >> 3) | flag;
  if (c.uid == p.cuid || c.uid == p.uid)
    granted >>= 6;
  else if (c.in_group(p.cgid) || c.in_group(p.gid))
    granted >>= 3;
  if ((requested & ~granted & 0007) && !c.cap_ipc_owner) return EACCES;
  return 0;
}

// IPC_SET and IPC_RMID: the caller must be the owner or creator, or hold CAP_SYS_ADMIN. Returns 0 or EPERM.
inline int ipc_owner_check(const Perm& p, const Creds& c) {
  if (c.uid == p.cuid || c.uid == p.uid || c.cap_sys_admin) return 0;
  return EPERM;
}

// Kernel limits of the home node, read from /proc/sys/kernel/{sem,msgmax,msgmnb,msgmni,shmmax,shmall,shmmni}.
struct Limits {
  int semmsl = 32000, semmns = 1024000000, semopm = 500, semmni = 32000;
  int semvmx = 32767, semaem = 32767;
  int msgmax = 8192, msgmnb = 16384, msgmni = 32000;
  uint64_t shmmax = UINT64_MAX >> 8, shmall = UINT64_MAX >> 8;  // shmall in pages
  int shmmni = 4096;
  static Limits read_proc();
};

// shmget with SHM_HUGETLB, as newseg() + hugetlb_file_setup() check it at the home: EINVAL for a huge page size
// the node lacks, EPERM without CAP_IPC_LOCK or membership of vm.hugetlb_shm_group, ENOMEM when the node has too
// few free huge pages to reserve (unless SHM_NORESERVE, which is also IPC_DIPC's bit). Returns 0 or the errno.
int hugetlb_shm_check(const Creds& c, uint64_t size, int shmflg);
// The size in bytes of the huge pages shmget(SHM_HUGETLB) asks for: the SHM_HUGE_SHIFT bits, else the node's
// default huge page size; 0 when the node has none of that size.
uint64_t hugetlb_page_bytes(int shmflg);

// The home's limits are read when they are checked, as the kernel reads its namespace's sysctls, so a limit
// lowered at run time applies to the next create. The files stay open; a refresh is one pread per file asked for
// (a few microseconds): the limits every semop and msgsnd checks (semopm, msgmax) are re-read at most every
// kPerOpMaxAgeNs instead.
class LimitFiles {
 public:
  enum Which : unsigned { kSem = 1, kMsgMax = 2, kMsgMnb = 4, kMsgMni = 8, kShm = 16, kAll = 31 };
  LimitFiles();
  ~LimitFiles();
  LimitFiles(const LimitFiles&) = delete;
  LimitFiles& operator=(const LimitFiles&) = delete;
  static constexpr int64_t kPerOpMaxAgeNs = 50'000'000;
  // Updates the limits named by `which` in `l`, unless they were read less than max_age_ns ago; a file that cannot
  // be read leaves its value as it is.
  void refresh(Limits& l, unsigned which, int64_t max_age_ns = 0);

 private:
  enum { kFSem, kFMsgMax, kFMsgMnb, kFMsgMni, kFShmMax, kFShmAll, kFShmMni, kFiles };
  int fds_[kFiles];
  int64_t read_at_[5] = {};  // CLOCK_MONOTONIC ns of the last read, per Which bit
};

}  // namespace dipc::ipc
