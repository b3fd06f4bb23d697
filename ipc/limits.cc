#include <fcntl.h>
#include <unistd.h>

#include <sys/shm.h>

#include <time.h>

#include <cstdio>
#include <string>
#include <fstream>

#include "ipc/types.h"

namespace dipc::ipc {

// The sysctls the kernel's ipc namespace uses; a missing or malformed file keeps the default. SEMVMX and SEMAEM
// are compile-time constants in Linux (32767), not sysctls.
Limits Limits::read_proc() {
  Limits l;
  {
    std::ifstream f("/proc/sys/kernel/sem");  // "semmsl semmns semopm semmni"
    int msl, mns, opm, mni;
    if (f >> msl >> mns >> opm >> mni) {
      l.semmsl = msl;
      l.semmns = mns;
      l.semopm = opm;
      l.semmni = mni;
    }
  }
  auto one = [](const char* path, int& out) {
    std::ifstream f(path);
    int v;
    if (f >> v) out = v;
  };
  one("/proc/sys/kernel/msgmax", l.msgmax);
  one("/proc/sys/kernel/msgmnb", l.msgmnb);
  one("/proc/sys/kernel/msgmni", l.msgmni);
  one("/proc/sys/kernel/shmmni", l.shmmni);
  auto one64 = [](const char* path, uint64_t& out) {
    std::ifstream f(path);
    uint64_t v;
    if (f >> v) out = v;
  };
  one64("/proc/sys/kernel/shmmax", l.shmmax);
  one64("/proc/sys/kernel/shmall", l.shmall);
  return l;
}

namespace {
constexpr const char* kLimitPaths[] = {"/proc/sys/kernel/sem",    "/proc/sys/kernel/msgmax", "/proc/sys/kernel/msgmnb",
                                       "/proc/sys/kernel/msgmni", "/proc/sys/kernel/shmmax", "/proc/sys/kernel/shmall",
                                       "/proc/sys/kernel/shmmni"};

// The file's whole text (a sysctl is re-generated at every read from offset 0), or false.
bool read_text(int fd, char* buf, size_t size) {
  if (fd < 0) return false;
  ssize_t n = pread(fd, buf, size - 1, 0);
  if (n <= 0) return false;
  buf[n] = '\0';
  return true;
}

template <typename T>
void read_one(int fd, T& out) {
  char buf[64];
  unsigned long long v;
  if (read_text(fd, buf, sizeof buf) && sscanf(buf, "%llu", &v) == 1) out = static_cast<T>(v);
}
}  // namespace

uint64_t hugetlb_page_bytes(int shmflg) {
  uint64_t kb = 0;  // the default huge page size, or the one asked for (log2 of the size in bits 26..31)
  int log = (shmflg >> 26) & 0x3f;  // SHM_HUGE_SHIFT, SHM_HUGE_MASK (<linux/shm.h>)
  if (log) {
    kb = log >= 12 && log < 41 ? (uint64_t{1} << log) >> 10 : 0;
  } else {
    std::ifstream f("/proc/meminfo");  // "Hugepagesize:       2048 kB"
    std::string line;
    while (std::getline(f, line))
      if (line.rfind("Hugepagesize:", 0) == 0) kb = std::stoull(line.substr(13));
  }
  return kb << 10;
}

int hugetlb_shm_check(const Creds& c, uint64_t size, int shmflg) {
  auto number = [](const std::string& path, uint64_t& out) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    read_one(fd, out);
    if (fd >= 0) close(fd);
    return fd >= 0;
  };
  uint64_t kb = hugetlb_page_bytes(shmflg) >> 10;
  std::string dir = "/sys/kernel/mm/hugepages/hugepages-" + std::to_string(kb) + "kB/";
  uint64_t free_pages = 0, resv = 0;
  if (kb == 0 || !number(dir + "free_hugepages", free_pages)) return EINVAL;
  (void)number(dir + "resv_hugepages", resv);
  uint64_t group = 0;
  (void)number("/proc/sys/vm/hugetlb_shm_group", group);
  if (!c.cap_ipc_lock && !c.in_group(static_cast<uint32_t>(group))) return EPERM;
  uint64_t bytes = kb << 10;
  uint64_t needed = (size + bytes - 1) / bytes;
  if (!(shmflg & SHM_NORESERVE) && needed > (free_pages > resv ? free_pages - resv : 0)) return ENOMEM;
  return 0;
}

LimitFiles::LimitFiles() {
  for (int i = 0; i < kFiles; ++i) fds_[i] = open(kLimitPaths[i], O_RDONLY | O_CLOEXEC);
}

LimitFiles::~LimitFiles() {
  for (int fd : fds_)
    if (fd >= 0) close(fd);
}

void LimitFiles::refresh(Limits& l, unsigned which, int64_t max_age_ns) {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t now = int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
  for (unsigned bit = 0; bit < 5; ++bit) {
    if (!(which & (1u << bit))) continue;
    if (max_age_ns > 0 && read_at_[bit] && now - read_at_[bit] < max_age_ns)
      which &= ~(1u << bit);
    else
      read_at_[bit] = now;
  }
  if (which & kSem) {
    char buf[128];
    int msl, mns, opm, mni;
    if (read_text(fds_[kFSem], buf, sizeof buf) && sscanf(buf, "%d %d %d %d", &msl, &mns, &opm, &mni) == 4) {
      l.semmsl = msl;
      l.semmns = mns;
      l.semopm = opm;
      l.semmni = mni;
    }
  }
  if (which & kMsgMax) read_one(fds_[kFMsgMax], l.msgmax);
  if (which & kMsgMnb) read_one(fds_[kFMsgMnb], l.msgmnb);
  if (which & kMsgMni) read_one(fds_[kFMsgMni], l.msgmni);
  if (which & kShm) {
    read_one(fds_[kFShmMax], l.shmmax);
    read_one(fds_[kFShmAll], l.shmall);
    read_one(fds_[kFShmMni], l.shmmni);
  }
}

}  // namespace dipc::ipc
