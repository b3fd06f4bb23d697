// Distributed shared memory (dipc shm) against its baselines, measured in the same run. Run through
// bench/run_shm.sh, which starts the simulated cluster(s), runs every part below and prints the summary table.
//
//   shm_bench stream  [--n ELEMS] [--passes N] [--native-only]
//       STREAM triad a[i] = b[i] + s*c[i] by 2 processes of this node, each on half of the index range, over a
//       native SysV segment and over a dipc segment (IPC_DIPC), passes interleaved; best-of-N GB/s and the ratio.
//   shm_bench uffd    [--iters N]
//       bare userfaultfd cost: a MISSING fault on a memfd-backed shared mapping, resolved with UFFDIO_COPY by a
//       thread of the same process and by another process (the shape of dipcd resolving a program's fault).
//   shm_bench tcp     [--iters N]            (needs DIPC_SIM, DIPC_SIM_DIR, DIPC_PEER_ADDR)
//       raw TCP 4 KiB request / 4 KiB response round trip between this node and node2.
//   shm_bench readmiss [--iters N]           (dipc; needs DIPC_SIM, DIPC_SIM_DIR)
//       node1 (this process) writes a word of a page, then a process on node2 reads it: the time of that read.
//       With --write, node2 stores into it instead: the time of that store (a write miss; key "writemiss").
//   shm_bench upgrade --readers R [--iters N]  (dipc; R+1 nodes)
//       a process on node2 stores into a page read-shared by R reader processes (node1, node3, ...) and itself:
//       the time of that store.
//   shm_bench seqread [--mib M] / tcpbulk [--mib M] [--fresh]   (dipc / raw TCP, --fresh: received into new memory)
//   shm_bench seqwrite [--mib M]   (dipc; 2 nodes): node2 writes every page of a fresh M MiB segment homed on node1
//   shm_bench memory [--mib M]   (dipc; 2 nodes): each dipcd's memory with an M MiB segment touched on both nodes
//       sequential first touch on node2 of M MiB written on node1, and the same bytes by one TCP stream.
//   shm_bench jacobi  --mode native|dipc [--n N] [--sweeps S] [--nodes node1,node2]
//       Jacobi relaxation on an N x N grid, two grids in one segment, rows split across the processes, one SysV
//       semaphore barrier per sweep. native: all processes on this node; dipc: one per listed node.
//
// Every part prints human-readable lines and machine-readable lines "@key value" that bench/run_shm.sh collects.
// Timings use clock_gettime(CLOCK_MONOTONIC) around the measured operation only; coordination (semaphores on a
// separate dipc semaphore set, pipes) is never inside a timed interval. Every wait is bounded.
// A dipc part whose segment id is not a dipc id (bit 30, DIPC_ID_BIT) reports "unavailable" and exits with 3: the
// preload did not make the segment distributed (without dipc shm the kernel reads IPC_DIPC as SHM_NORESERVE).
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/latency.h"
#include "dipc/dipc.h"

extern char** environ;

namespace {

constexpr size_t kPage = 4096;
constexpr int kWaitMs = 120000;  // bound on every wait for a partner (dipc faults may be slow, never infinite)
constexpr int kSemWaitS = 30;   // bound on one semaphore wait

std::string g_self, g_sim, g_dir, g_peer_addr;
std::string g_peer = "node2";

[[noreturn]] void die(const char* what) {
  fprintf(stderr, "shm_bench[%d]: %s: %s\n", getpid(), what, strerror(errno));
  exit(1);
}
[[noreturn]] void unavailable(const char* part, const char* why) {
  printf("%s: dipc unavailable: %s\n", part, why);
  printf("@%s_unavailable 1\n", part);
  fflush(stdout);
  exit(3);
}

using dipc_bench::now_ns;

bool is_dipc_id(int id) { return id >= 0 && (id & DIPC_ID_BIT) != 0; }

// Self-test of the orchestration (DIPC_SHM_BENCH_KERNEL_SHM=1, with `dipc-sim up --loopback`, where every node
// shares this machine's IPC namespace): the "dipc" segments are kernel segments, semaphores stay dipc. The
// figures then mean nothing; the run checks the protocols, placement and reporting before dipc shm exists.
bool kernel_shm_selftest() {
  const char* e = getenv("DIPC_SHM_BENCH_KERNEL_SHM");
  return e && *e == '1';
}
int dipc_shm_flag() { return kernel_shm_selftest() ? 0 : IPC_DIPC; }
bool dipc_shm_id_ok(int id) { return kernel_shm_selftest() ? id >= 0 : is_dipc_id(id); }

// A new dipc segment of `bytes` (SHM_HUGETLB with `flags`); the part is reported unavailable when shm is not
// distributed here.
int dipc_segment(const char* part, size_t bytes, int flags = 0) {
  int shmid = shmget(IPC_PRIVATE, bytes, dipc_shm_flag() | IPC_CREAT | 0600 | flags);
  if (shmid < 0) unavailable(part, strerror(errno));
  if (!dipc_shm_id_ok(shmid)) {
    shmctl(shmid, IPC_RMID, nullptr);
    unavailable(part, "shmget returned a kernel id (no dipc shm in the preload)");
  }
  return shmid;
}

// ---- statistics ----------------------------------------------------------------------------------------------

using Stats = dipc_bench::Latency;
Stats stats(std::vector<int64_t> ns) { return dipc_bench::latency_of(std::move(ns)); }
std::string stats_line(const Stats& s) {
  char b[200];
  snprintf(b, sizeof b, "p50 %.1f us  p99 %.1f us  p99.9 %.1f us  mean %.1f us  min %.1f us  (n=%zu)", s.p50, s.p99,
           s.p999, s.mean, s.min, s.n);
  return b;
}
// "@key_p50_us ..." lines for bench/run_shm.sh, the CDF as one comma-separated value.
std::string stats_keys(const char* key, const Stats& s) {
  char b[400];
  snprintf(b, sizeof b, "@%s_p50_us %.2f\n@%s_p99_us %.2f\n@%s_p999_us %.2f\n@%s_mean_us %.2f\n", key, s.p50, key,
           s.p99, key, s.p999, key, s.mean);
  return std::string(b) + "@" + key + "_cdf_us " + dipc_bench::cdf_csv(s) + "\n";
}
// The line a child reports its samples with, and its parser.
std::string stats_report(const Stats& s) {
  char b[200];
  snprintf(b, sizeof b, "stats %.3f %.3f %.3f %.3f %zu %.3f ", s.p50, s.p99, s.mean, s.min, s.n, s.p999);
  return b + dipc_bench::cdf_csv(s);
}
bool parse_stats(const std::string& l, Stats& s) {
  int used = 0;
  if (sscanf(l.c_str(), "stats %lf %lf %lf %lf %zu %lf %n", &s.p50, &s.p99, &s.mean, &s.min, &s.n, &s.p999, &used) !=
      6)
    return false;
  s.cdf.clear();
  for (const char* p = l.c_str() + used; *p;) {
    char* end = nullptr;
    s.cdf.push_back(strtod(p, &end));
    if (end == p) return false;
    p = *end == ',' ? end + 1 : end;
  }
  return true;
}

// ---- arguments -----------------------------------------------------------------------------------------------

struct Args {
  std::vector<std::string> v;
  std::string get(const char* name, const std::string& def) const {
    for (size_t i = 0; i + 1 < v.size(); ++i)
      if (v[i] == name) return v[i + 1];
    return def;
  }
  long num(const char* name, long def) const { return std::stol(get(name, std::to_string(def))); }
  bool has(const char* name) const { return std::find(v.begin(), v.end(), name) != v.end(); }
};

// ---- children: fd 3 = child -> parent (ready line, results), fd 4 = parent -> child (commands) -----------------

struct Child {
  pid_t pid = -1;
  int from = -1;  // parent reads the child's fd 3
  int to = -1;    // parent writes the child's fd 4
  std::string buf;
  std::string name;
};

// Starts `shm_bench ARGS...`: locally when node is empty (inherits this process's environment, LD_PRELOAD
// included), else on that node of the simulated cluster through `dipc-sim exec [--preload] NODE`.
Child spawn(const std::string& node, bool preload, const std::vector<std::string>& args) {
  int up[2], down[2];
  if (pipe2(up, O_CLOEXEC) || pipe2(down, O_CLOEXEC)) die("pipe");
  std::vector<std::string> argv;
  if (!node.empty()) {
    if (g_sim.empty() || g_dir.empty()) {
      fprintf(stderr, "shm_bench: a part placed on %s needs DIPC_SIM and DIPC_SIM_DIR (run bench/run_shm.sh)\n",
              node.c_str());
      exit(2);
    }
    argv = {g_sim, "exec", "--dir", g_dir};
    if (preload) argv.push_back("--preload");
    argv.insert(argv.end(), {node, "--"});
  }
  argv.push_back(g_self);
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (auto& s : argv) cargv.push_back(s.data());
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, up[1], 3);  // dup2 clears O_CLOEXEC on the new descriptor
  posix_spawn_file_actions_adddup2(&fa, down[0], 4);
  Child c;
  c.name = args.empty() ? "?" : args[0];
  if (!node.empty()) c.name += "@" + node;
  if (posix_spawn(&c.pid, cargv[0], &fa, nullptr, cargv.data(), environ)) die("posix_spawn");
  posix_spawn_file_actions_destroy(&fa);
  close(up[1]);
  close(down[0]);
  c.from = up[0];
  c.to = down[1];
  return c;
}

// Next line from the child, without the newline; false on EOF or after timeout_ms.
bool getline(Child& c, std::string& line, int timeout_ms = kWaitMs) {
  int64_t deadline = now_ns() + int64_t{timeout_ms} * 1000000;
  for (;;) {
    size_t nl = c.buf.find('\n');
    if (nl != std::string::npos) {
      line = c.buf.substr(0, nl);
      c.buf.erase(0, nl + 1);
      return true;
    }
    int left = static_cast<int>((deadline - now_ns()) / 1000000);
    if (left <= 0) return false;
    pollfd pf{c.from, POLLIN, 0};
    int r = poll(&pf, 1, left);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    char tmp[4096];
    ssize_t n = read(c.from, tmp, sizeof tmp);
    if (n <= 0) return false;
    c.buf.append(tmp, static_cast<size_t>(n));
  }
}

bool wait_ready(Child& c) {
  std::string l;
  if (getline(c, l) && l == "ready") return true;
  fprintf(stderr, "shm_bench: %s did not become ready%s%s\n", c.name.c_str(), l.empty() ? "" : ": ", l.c_str());
  return false;
}

void command(Child& c, char cmd) {
  if (write(c.to, &cmd, 1) != 1) die("command");
}

// Lets the child end by itself (EOF on its command pipe, its objects removed), bounded, then kills it.
void reap(Child& c, int timeout_ms = 5000) {
  if (c.to >= 0) close(c.to);
  c.to = -1;
  if (c.pid > 0) {
    for (int i = 0; i < timeout_ms / 10; ++i) {
      if (waitpid(c.pid, nullptr, WNOHANG) == c.pid) {
        c.pid = -1;
        break;
      }
      usleep(10000);
    }
    if (c.pid > 0) {
      kill(c.pid, SIGKILL);
      waitpid(c.pid, nullptr, 0);
      c.pid = -1;
    }
  }
  if (c.from >= 0) close(c.from);
  c.from = -1;
}

// Child side.
void say(const std::string& s) {
  std::string l = s + "\n";
  if (write(3, l.data(), l.size()) != static_cast<ssize_t>(l.size())) die("report");
}
char next_command() {
  char c;
  pollfd pf{4, POLLIN, 0};
  if (poll(&pf, 1, kWaitMs) != 1 || read(4, &c, 1) != 1) return 'q';
  return c;
}

// Bounded semop; dies on timeout (the partner is gone or dipc hangs), returns false when the set was removed.
bool sem(int semid, std::initializer_list<sembuf> ops) {
  std::vector<sembuf> v(ops);
  timespec to{kSemWaitS, 0};
  for (;;) {
    if (semtimedop(semid, v.data(), v.size(), &to) == 0) return true;
    if (errno == EINTR) continue;
    if (errno == EIDRM || errno == EINVAL) return false;
    if (errno == EAGAIN) {
      fprintf(stderr, "shm_bench[%d]: semaphore wait timed out after %d s\n", getpid(), kSemWaitS);
      return false;
    }
    die("semtimedop");
  }
}
bool sem_ops(int semid, std::vector<sembuf>& v) {
  timespec to{kSemWaitS, 0};
  for (;;) {
    if (semtimedop(semid, v.data(), v.size(), &to) == 0) return true;
    if (errno == EINTR) continue;
    if (errno == EIDRM || errno == EINVAL) return false;
    if (errno == EAGAIN) {
      fprintf(stderr, "shm_bench[%d]: semaphore wait timed out after %d s\n", getpid(), kSemWaitS);
      return false;
    }
    die("semtimedop");
  }
}

void* attach(int shmid) {
  void* p = shmat(shmid, nullptr, 0);
  if (p == reinterpret_cast<void*>(-1)) die("shmat");
  return p;
}

// ---- 1. STREAM triad --------------------------------------------------------------------------------------------

constexpr double kScalar = 3.0;

struct Triad {
  double* a;
  double* b;
  double* c;
};
Triad triad_arrays(void* base, size_t n) {
  auto* p = static_cast<double*>(base);
  return {p + kPage / sizeof(double), p + kPage / sizeof(double) + n, p + kPage / sizeof(double) + 2 * n};
}
size_t triad_bytes(size_t n) { return kPage + 3 * n * sizeof(double); }

__attribute__((noinline)) void triad(double* __restrict a, const double* __restrict b, const double* __restrict c,
                                     size_t lo, size_t hi) {
  for (size_t i = lo; i < hi; ++i) a[i] = b[i] + kScalar * c[i];
}

// Worker: shm_bench stream-worker SHMID N RANK NPROCS. Commands: i(nit) w(arm-up) t(imed) q(uit).
int stream_worker(int shmid, size_t n, int rank, int nprocs) {
  Triad t = triad_arrays(attach(shmid), n);
  size_t lo = n * static_cast<size_t>(rank) / static_cast<size_t>(nprocs);
  size_t hi = n * static_cast<size_t>(rank + 1) / static_cast<size_t>(nprocs);
  say("ready");
  for (;;) {
    char cmd = next_command();
    int64_t t0 = now_ns();
    if (cmd == 'i') {
      for (size_t i = lo; i < hi; ++i) {
        t.a[i] = 0.0;
        t.b[i] = 1.0 + static_cast<double>(i % 7);
        t.c[i] = 2.0;
      }
    } else if (cmd == 'w' || cmd == 't') {
      triad(t.a, t.b, t.c, lo, hi);
    } else {
      return 0;
    }
    int64_t t1 = now_ns();
    say("d " + std::to_string(t0) + " " + std::to_string(t1));
  }
}

struct StreamSet {
  const char* label = "";
  int shmid = -1;
  std::vector<Child> w;
  double best_gbps = 0;
  std::vector<double> pass_gbps;
  bool ok = false;
  std::string why;
};

// Sends cmd to every worker of the set, returns the wall interval (first start .. last end) in ns, or -1.
int64_t stream_step(StreamSet& s, char cmd) {
  for (auto& c : s.w) command(c, cmd);
  int64_t first = INT64_MAX, last = 0;
  for (auto& c : s.w) {
    std::string l;
    long long a = 0, b = 0;
    if (!getline(c, l) || sscanf(l.c_str(), "d %lld %lld", &a, &b) != 2) return -1;
    first = std::min<int64_t>(first, a);
    last = std::max<int64_t>(last, b);
  }
  return last - first;
}

bool stream_setup(StreamSet& s, bool dipc, size_t n, int nprocs) {
  int flags = dipc ? dipc_shm_flag() : 0;
  s.shmid = shmget(IPC_PRIVATE, triad_bytes(n), flags | IPC_CREAT | 0600);
  if (s.shmid < 0) {
    s.why = std::string("shmget: ") + strerror(errno);
    return false;
  }
  if (dipc && !dipc_shm_id_ok(s.shmid)) {
    s.why = "shmget returned a kernel id (no dipc shm in the preload, or not running under libdipc.so)";
    shmctl(s.shmid, IPC_RMID, nullptr);
    s.shmid = -1;
    return false;
  }
  for (int r = 0; r < nprocs; ++r) {
    s.w.push_back(spawn("", false,
                        {"stream-worker", std::to_string(s.shmid), std::to_string(n), std::to_string(r),
                         std::to_string(nprocs)}));
    if (!wait_ready(s.w.back())) {
      s.why = "worker did not start";
      return false;
    }
  }
  if (stream_step(s, 'i') < 0 || stream_step(s, 'w') < 0) {
    s.why = "init / warm-up pass failed";
    return false;
  }
  return true;
}

int run_stream(const Args& args) {
  size_t n = static_cast<size_t>(args.num("--n", 8L << 20));
  int passes = static_cast<int>(args.num("--passes", 10));
  int nprocs = static_cast<int>(args.num("--procs", 2));
  bool native_only = args.has("--native-only");
  double bytes = 3.0 * static_cast<double>(n) * sizeof(double);  // STREAM's count for triad: 2 reads + 1 write
  printf("STREAM triad: %d processes on this node, 3 arrays x %zu doubles (%.0f MiB each), best of %d passes\n",
         nprocs, n, static_cast<double>(n) * 8 / 1048576, passes);
  StreamSet sets[2];
  sets[0].label = "native";
  sets[1].label = "dipc";
  sets[0].ok = stream_setup(sets[0], false, n, nprocs);
  if (!native_only) sets[1].ok = stream_setup(sets[1], true, n, nprocs);
  else sets[1].why = "skipped (--native-only)";
  for (int p = 0; p < passes; ++p) {
    for (auto& s : sets) {  // interleaved: native pass, dipc pass, ...
      if (!s.ok) continue;
      int64_t ns = stream_step(s, 't');
      if (ns <= 0) {
        s.ok = false;
        s.why = "timed pass failed";
        continue;
      }
      s.best_gbps = std::max(s.best_gbps, bytes / static_cast<double>(ns));
      s.pass_gbps.push_back(bytes / static_cast<double>(ns));
    }
  }
  // Check the result through another attachment (for dipc: the coherence of the workers' writes).
  for (auto& s : sets) {
    if (!s.ok) continue;
    void* base = shmat(s.shmid, nullptr, 0);
    if (base == reinterpret_cast<void*>(-1)) {
      s.ok = false;
      s.why = std::string("shmat for the check: ") + strerror(errno);
      continue;
    }
    Triad t = triad_arrays(base, n);
    for (size_t i = 0; i < n; i += n / 64 + 1) {
      double want = 1.0 + static_cast<double>(i % 7) + kScalar * 2.0;
      if (t.a[i] != want) {
        s.ok = false;
        s.why = "wrong result at a[" + std::to_string(i) + "]";
        break;
      }
    }
    shmdt(base);
  }
  for (auto& s : sets) {
    for (auto& c : s.w) {
      command(c, 'q');
      reap(c);
    }
    if (s.shmid >= 0) shmctl(s.shmid, IPC_RMID, nullptr);
  }
  for (auto& s : sets) {
    if (s.ok) {
      printf("STREAM triad %-6s: %7.2f GB/s\n", s.label, s.best_gbps);
      printf("@stream_%s_gbps %.3f\n", s.label, s.best_gbps);
    } else {
      printf("STREAM triad %-6s: unavailable: %s\n", s.label, s.why.c_str());
      printf("@stream_%s_unavailable 1\n", s.label);
    }
  }
  if (sets[0].ok && sets[1].ok) {
    printf("STREAM triad dipc/native: %.3f (target >= 0.97)\n", sets[1].best_gbps / sets[0].best_gbps);
    printf("@stream_ratio %.4f\n", sets[1].best_gbps / sets[0].best_gbps);
    // Back-to-back pairs see the same machine state: the median of the per-pair ratios resists a noisy host.
    std::vector<double> r;
    for (size_t i = 0; i < std::min(sets[0].pass_gbps.size(), sets[1].pass_gbps.size()); ++i)
      r.push_back(sets[1].pass_gbps[i] / sets[0].pass_gbps[i]);
    if (!r.empty()) {
      printf("@stream_pair_ratios ");
      for (size_t i = 0; i < r.size(); ++i) printf("%s%.4f", i ? "," : "", r[i]);
      printf("\n");
    }
    std::sort(r.begin(), r.end());
    if (!r.empty()) {
      printf("STREAM triad dipc/native, median of %zu back-to-back pass pairs: %.3f\n", r.size(), r[r.size() / 2]);
      printf("@stream_ratio_paired %.4f\n", r[r.size() / 2]);
    }
  }
  return sets[0].ok ? 0 : 1;
}

// ---- 2a. bare userfaultfd fault-and-resolve -------------------------------------------------------------------

struct Uffd {
  int fd = -1;
  char* area = nullptr;
  size_t pages = 0;
};
alignas(4096) char g_src_page[kPage];

int uffd_open() {
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
  if (fd < 0) fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC));
  if (fd < 0) die("userfaultfd (needs root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1)");
  uffdio_api api{};
  api.api = UFFD_API;
  if (ioctl(fd, UFFDIO_API, &api)) die("UFFDIO_API");
  return fd;
}

Uffd uffd_area(size_t pages) {
  Uffd u;
  u.pages = pages;
  u.fd = uffd_open();
  int mfd = memfd_create("shm_bench-uffd", MFD_CLOEXEC);
  if (mfd < 0 || ftruncate(mfd, static_cast<off_t>(pages * kPage))) die("memfd");
  void* p = mmap(nullptr, pages * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  if (p == MAP_FAILED) die("mmap");
  close(mfd);
  u.area = static_cast<char*>(p);
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<uintptr_t>(p);
  reg.range.len = pages * kPage;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl(u.fd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER (shmem MISSING faults)");
  return u;
}

// Resolves faults with UFFDIO_COPY until the last page (the stop sentinel) has been resolved.
void uffd_resolve_loop(const Uffd* u) {
  uintptr_t stop = reinterpret_cast<uintptr_t>(u->area) + (u->pages - 1) * kPage;
  for (;;) {
    uffd_msg m;
    ssize_t n = read(u->fd, &m, sizeof m);
    if (n < 0 && errno == EINTR) continue;
    if (n != sizeof m) die("read uffd");
    if (m.event != UFFD_EVENT_PAGEFAULT) continue;
    uintptr_t addr = m.arg.pagefault.address & ~(uintptr_t{kPage} - 1);
    uffdio_copy c{};
    c.dst = addr;
    c.src = reinterpret_cast<uintptr_t>(g_src_page);
    c.len = kPage;
    if (ioctl(u->fd, UFFDIO_COPY, &c) && errno != EEXIST) die("UFFDIO_COPY");
    if (addr == stop) return;
  }
}

std::vector<int64_t> uffd_faults(Uffd& u, size_t warm) {
  std::vector<int64_t> v;
  for (size_t i = 0; i + 1 < u.pages; ++i) {
    volatile long* w = reinterpret_cast<volatile long*>(u.area + i * kPage);
    int64_t t0 = now_ns();
    long x = *w;
    int64_t t1 = now_ns();
    if (x != 0x5a5a5a5a5a5a5a5aL) {
      fprintf(stderr, "shm_bench: uffd page %zu has the wrong content\n", i);
      exit(1);
    }
    if (i >= warm) v.push_back(t1 - t0);
  }
  (void)*reinterpret_cast<volatile long*>(u.area + (u.pages - 1) * kPage);  // stop sentinel
  return v;
}

int run_uffd(const Args& args) {
  size_t iters = static_cast<size_t>(args.num("--iters", 2000));
  size_t warm = 100;
  memset(g_src_page, 0x5a, sizeof g_src_page);
  printf("userfaultfd MISSING fault on a memfd shared mapping, resolved with UFFDIO_COPY (4 KiB), %zu faults\n",
         iters);
  {
    Uffd u = uffd_area(iters + warm + 1);
    pthread_t th;
    if (pthread_create(
            &th, nullptr, [](void* a) -> void* { uffd_resolve_loop(static_cast<Uffd*>(a)); return nullptr; }, &u))
      die("pthread_create");
    Stats s = stats(uffd_faults(u, warm));
    pthread_join(th, nullptr);
    printf("uffd fault+resolve, resolver thread           : %s\n", stats_line(s).c_str());
    printf("%s", stats_keys("uffd_thread", s).c_str());
    munmap(u.area, u.pages * kPage);
    close(u.fd);
  }
  // Resolver process, as dipcd resolves a program's faults: unpinned (the figure used for the ratios; the same
  // scheduling as the dipc parts), then both on one CPU and on two CPUs, which show the spread a VM's cross-CPU
  // wake-up adds.
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed)) die("sched_getaffinity");
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  struct Placement {
    const char* key;
    const char* label;
    int me, resolver;  // CPUs, -1: unpinned
  };
  std::vector<Placement> places = {{"uffd_proc", "resolver process          ", -1, -1}};
  places.push_back({"uffd_proc_samecpu", "resolver process, same CPU", cpus[0], cpus[0]});
  if (cpus.size() > 1) places.push_back({"uffd_proc_othercpu", "resolver process, 2 CPUs  ", cpus[0], cpus[1]});
  auto pin = [](int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set)) die("sched_setaffinity");
  };
  for (const Placement& pl : places) {
    Uffd u = uffd_area(iters + warm + 1);
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
      if (pl.resolver >= 0) pin(pl.resolver);
      uffd_resolve_loop(&u);
      _exit(0);
    }
    if (pl.me >= 0) pin(pl.me);
    Stats s = stats(uffd_faults(u, warm));
    waitpid(pid, nullptr, 0);
    if (sched_setaffinity(0, sizeof allowed, &allowed)) die("sched_setaffinity");
    printf("uffd fault+resolve, %s: %s\n", pl.label, stats_line(s).c_str());
    printf("%s", stats_keys(pl.key, s).c_str());
    munmap(u.area, u.pages * kPage);
    close(u.fd);
  }
  return 0;
}

// ---- 2b. raw TCP 4 KiB round trip ------------------------------------------------------------------------------

constexpr size_t kTcpMsg = 4096;

bool full_io(int fd, char* buf, size_t len, bool rd) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = rd ? read(fd, buf + done, len - done) : write(fd, buf + done, len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Listens on port, says "ready", accepts one connection (bounded wait); -1 on timeout.
int accept_one(int port) {
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  if (bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) || listen(ls, 1)) die("listen");
  say("ready");
  pollfd pf{ls, POLLIN, 0};
  if (poll(&pf, 1, kWaitMs) != 1) return -1;
  return accept(ls, nullptr, nullptr);
}

// Connects to port on the peer node (DIPC_PEER_ADDR).
int connect_peer(int port) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, g_peer_addr.c_str(), &a.sin_addr);
  if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a)) die("connect");
  return s;
}

int tcp_echo(int port) {
  int s = accept_one(port);
  if (s < 0) return 1;
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::vector<char> buf(kTcpMsg);
  while (full_io(s, buf.data(), kTcpMsg, true) && full_io(s, buf.data(), kTcpMsg, false)) {
  }
  return 0;
}

int run_tcp(const Args& args) {
  size_t iters = static_cast<size_t>(args.num("--iters", 2000));
  if (g_peer_addr.empty()) {
    fprintf(stderr, "shm_bench tcp: needs DIPC_PEER_ADDR\n");
    return 2;
  }
  int port = 18000 + (getpid() % 1000);
  Child p = spawn(g_peer, false, {"tcp-echo", std::to_string(port)});
  if (!wait_ready(p)) return 1;
  int s = connect_peer(port);
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::vector<char> buf(kTcpMsg, 1);
  std::vector<int64_t> v;
  for (size_t i = 0; i < iters + 100; ++i) {
    int64_t t0 = now_ns();
    if (!full_io(s, buf.data(), kTcpMsg, false) || !full_io(s, buf.data(), kTcpMsg, true)) die("tcp round trip");
    int64_t t1 = now_ns();
    if (i >= 100) v.push_back(t1 - t0);
  }
  close(s);
  reap(p);
  Stats st = stats(v);
  printf("raw TCP 4 KiB request/response, this node <-> %s: %s\n", g_peer.c_str(), stats_line(st).c_str());
  printf("%s", stats_keys(args.get("--key", "tcp4k").c_str(), st).c_str());
  return 0;
}

// ---- 2c. remote read miss ----------------------------------------------------------------------------------------
// Segment: 2 pages, the word is at the start of page 1. Semaphores (a separate dipc set): 0 = reader may read,
// 1 = writer may write. Only the reader's load is timed.

// With `write`, node2's access is a store instead of a load (a write miss: node1 holds the only, writable, copy), and
// node1 checks before its next store that it reads node2's value.
int readmiss_reader(int shmid, int semid, size_t iters, size_t warm, bool write) {
  auto* page = static_cast<char*>(attach(shmid)) + kPage;
  volatile long* w = reinterpret_cast<volatile long*>(page);
  say("ready");
  std::vector<int64_t> v;
  for (size_t i = 0; i < iters + warm; ++i) {
    if (!sem(semid, {{0, -1, 0}})) die("readmiss: semaphores removed");
    int64_t t0 = now_ns();
    long x = static_cast<long>(i + 1);
    if (write)
      *w = -x;
    else
      x = *w;
    int64_t t1 = now_ns();
    if (x != static_cast<long>(i + 1)) {
      fprintf(stderr, "shm_bench readmiss: read %ld, expected %zu (not coherent)\n", x, i + 1);
      say("error incoherent");
      return 1;
    }
    if (i >= warm) v.push_back(t1 - t0);
    if (!sem(semid, {{1, 1, 0}})) die("readmiss: semaphores removed");
  }
  say(stats_report(stats(v)));
  return 0;
}

int run_readmiss(const Args& args) {
  size_t iters = static_cast<size_t>(args.num("--iters", 2000));
  size_t warm = 50;
  std::string reader_node = args.get("--reader", g_peer);
  bool write = args.has("--write");
  const char* key = write ? "writemiss" : "readmiss";
  int shmid = dipc_segment(key, 2 * kPage);
  int semid = semget(IPC_PRIVATE, 2, IPC_DIPC | IPC_CREAT | 0600);
  if (semid < 0 || !is_dipc_id(semid)) die("dipc semget");
  volatile long* w = reinterpret_cast<volatile long*>(static_cast<char*>(attach(shmid)) + kPage);
  *w = 0;
  Child r = spawn(reader_node, true,
                  {"readmiss-reader", std::to_string(shmid), std::to_string(semid), std::to_string(iters),
                   std::to_string(warm), write ? "1" : "0"});
  int rc = 1;
  bool coherent = true;
  if (wait_ready(r)) {
    for (size_t i = 0; i < iters + warm; ++i) {
      if (write && i > 0 && *w != -static_cast<long>(i)) {  // node2's store of the previous round
        printf("writemiss: read %ld on this node, expected %ld (not coherent)\n", *w, -static_cast<long>(i));
        coherent = false;
      }
      *w = static_cast<long>(i + 1);  // node1 holds the latest copy; the reader's copy is invalidated
      if (!sem(semid, {{0, 1, 0}}) || !sem(semid, {{1, -1, 0}})) break;
    }
    std::string l;
    Stats s;
    if (getline(r, l) && parse_stats(l, s) && coherent) {
      printf("dipc remote %s miss (page written on this node, %s on %s): %s\n", write ? "write" : "read",
             write ? "written" : "read", reader_node.c_str(), stats_line(s).c_str());
      printf("%s", stats_keys(key, s).c_str());
      rc = 0;
    } else {
      printf("%s: failed: %s\n", key, l.c_str());
    }
  }
  semctl(semid, 0, IPC_RMID);
  shmctl(shmid, IPC_RMID, nullptr);
  reap(r);
  return rc;
}

// ---- 2d. write upgrade -----------------------------------------------------------------------------------------
// Semaphores: 0 = readers done (writer waits -R), 1..R = reader k may read again. The writer (node2) reads the
// word untimed (so it holds a read copy), then its store is timed: the upgrade invalidates the R readers' copies.

int upgrade_writer(int shmid, int semid, int readers, size_t iters, size_t warm) {
  volatile long* w = reinterpret_cast<volatile long*>(static_cast<char*>(attach(shmid)) + kPage);
  say("ready");
  std::vector<int64_t> v;
  std::vector<sembuf> go;
  for (int k = 1; k <= readers; ++k) go.push_back({static_cast<unsigned short>(k), 1, 0});
  for (size_t i = 0; i < iters + warm; ++i) {
    if (!sem(semid, {{0, static_cast<short>(-readers), 0}})) die("upgrade: semaphores removed");
    long x = *w;  // untimed: this node now holds a read copy too
    if (x != static_cast<long>(i)) {
      fprintf(stderr, "shm_bench upgrade writer: read %ld, expected %zu\n", x, i);
      say("error incoherent");
      return 1;
    }
    int64_t t0 = now_ns();
    *w = static_cast<long>(i + 1);
    int64_t t1 = now_ns();
    if (i >= warm) v.push_back(t1 - t0);
    if (!sem_ops(semid, go)) die("upgrade: semaphores removed");
  }
  if (!sem(semid, {{0, static_cast<short>(-readers), 0}})) die("upgrade: semaphores removed");
  say(stats_report(stats(v)));
  return 0;
}

int upgrade_reader(int shmid, int semid, int k, size_t rounds) {
  volatile long* w = reinterpret_cast<volatile long*>(static_cast<char*>(attach(shmid)) + kPage);
  say("ready");
  for (size_t j = 0;; ++j) {
    long x = *w;  // a read miss after each store of the writer
    if (x != static_cast<long>(j)) {
      fprintf(stderr, "shm_bench upgrade reader %d: read %ld, expected %zu\n", k, x, j);
      say("error incoherent");
      return 1;
    }
    if (!sem(semid, {{0, 1, 0}})) return 1;
    if (j == rounds) break;
    if (!sem(semid, {{static_cast<unsigned short>(k), -1, 0}})) return 1;
  }
  say("done");
  return 0;
}

int run_upgrade(const Args& args) {
  size_t iters = static_cast<size_t>(args.num("--iters", 2000));
  size_t warm = 50;
  int readers = static_cast<int>(args.num("--readers", 1));
  std::string writer_node = args.get("--writer", "node2");
  std::vector<std::string> reader_nodes = {"node1"};
  for (int k = 2; k <= readers; ++k) reader_nodes.push_back("node" + std::to_string(k + 1));
  std::string key = "upgrade" + std::to_string(readers);
  int shmid = dipc_segment(key.c_str(), 2 * kPage);
  int semid = semget(IPC_PRIVATE, readers + 1, IPC_DIPC | IPC_CREAT | 0600);
  if (semid < 0 || !is_dipc_id(semid)) die("dipc semget");
  std::vector<Child> rs;
  bool ok = true;
  for (int k = 1; k <= readers && ok; ++k) {
    rs.push_back(spawn(reader_nodes[static_cast<size_t>(k - 1)], true,
                       {"upgrade-reader", std::to_string(shmid), std::to_string(semid), std::to_string(k),
                        std::to_string(iters + warm)}));
    ok = wait_ready(rs.back());
  }
  Child w;
  if (ok) {
    w = spawn(writer_node, true,
              {"upgrade-writer", std::to_string(shmid), std::to_string(semid), std::to_string(readers),
               std::to_string(iters), std::to_string(warm)});
    ok = wait_ready(w);
  }
  int rc = 1;
  if (ok) {
    std::string l;
    Stats s;
    if (getline(w, l) && parse_stats(l, s)) {
      std::string where;
      for (auto& nd : reader_nodes) {
        if (!where.empty()) where += ',';
        where += nd;
      }
      printf("dipc write upgrade on %s, page read-shared by %d reader node(s) (%s): %s\n", writer_node.c_str(),
             readers, where.c_str(), stats_line(s).c_str());
      printf("%s", stats_keys(key.c_str(), s).c_str());
      rc = 0;
    } else {
      printf("upgrade (%d readers): failed: %s\n", readers, l.c_str());
    }
  }
  semctl(semid, 0, IPC_RMID);
  shmctl(shmid, IPC_RMID, nullptr);
  reap(w);
  for (auto& r : rs) reap(r);
  return rc;
}

// ---- 2e. sequential first touch and its raw TCP baseline -------------------------------------------------------
// seqread: node1 (the home) writes every page of a MIB-MiB segment; a process on node2 then reads one word of every
// page in order, timed: the bandwidth of first touch from another node (each page a read miss, or less with
// read-ahead). tcpbulk: the same number of bytes sent node1 -> node2 over one TCP connection, timed until node2's
// one-byte acknowledgement.

int seqread_reader(int shmid, size_t pages) {
  volatile long* p = static_cast<volatile long*>(attach(shmid));
  say("ready");
  if (next_command() != 'g') return 1;
  int64_t t0 = now_ns();
  for (size_t i = 0; i < pages; ++i)
    if (p[i * (kPage / sizeof(long))] != static_cast<long>(i + 1)) {
      say("error incoherent page " + std::to_string(i));
      return 1;
    }
  say("ns " + std::to_string(now_ns() - t0));
  return 0;
}

// A dipc segment of `pages` pages created and attached here, every page written with its index + 1 (what the
// readers of seqread and memory check).
struct Filled {
  int shmid;
  volatile long* p;
};
Filled filled_dipc_segment(const char* part, size_t pages, int flags = 0) {
  int shmid = dipc_segment(part, pages * kPage, flags);
  volatile long* p = static_cast<volatile long*>(attach(shmid));
  for (size_t i = 0; i < pages; ++i) p[i * (kPage / sizeof(long))] = static_cast<long>(i + 1);
  return {shmid, p};
}

// --huge: the segment is SHM_HUGETLB (backed by huge pages on both nodes, 2 MiB blocks): key seqread_huge_*.
int run_seqread(const Args& args) {
  size_t mib = static_cast<size_t>(args.num("--mib", 64));
  size_t pages = mib * 1048576 / kPage;
  const bool huge = args.has("--huge");
  const char* part = huge ? "seqread_huge" : "seqread";
  auto [shmid, p] = filled_dipc_segment(part, pages, huge ? SHM_HUGETLB : 0);
  Child r = spawn(g_peer, true, {"seqread-reader", std::to_string(shmid), std::to_string(pages)});
  int rc = 1;
  std::string l;
  long long ns = 0;
  if (wait_ready(r)) {
    command(r, 'g');
    if (getline(r, l) && sscanf(l.c_str(), "ns %lld", &ns) == 1 && ns > 0) {
      double mibps = static_cast<double>(mib) / (static_cast<double>(ns) / 1e9);
      printf("dipc sequential first touch of %zu MiB%s on %s (written on this node): %.1f MiB/s, %.1f us/4 KiB\n", mib,
             huge ? " (SHM_HUGETLB)" : "", g_peer.c_str(), mibps,
             static_cast<double>(ns) / 1e3 / static_cast<double>(pages));
      printf("@%s_dipc_mibps %.2f\n", part, mibps);
      rc = 0;
    } else {
      printf("seqread: failed: %s\n", l.c_str());
    }
  }
  shmdt(const_cast<long*>(p));
  shmctl(shmid, IPC_RMID, nullptr);
  reap(r);
  return rc;
}

// seqwrite: node1 (the home) creates a fresh MIB-MiB segment and touches none of it; a process on node2 writes one
// word of every page in order, timed (each page a write miss, or less with write-ahead), then node1 checks every
// word (untimed): the bandwidth of a sequential writer on a node that is not the home.
int seqwrite_writer(int shmid, size_t pages) {
  volatile long* p = static_cast<volatile long*>(attach(shmid));
  say("ready");
  if (next_command() != 'g') return 1;
  int64_t t0 = now_ns();
  for (size_t i = 0; i < pages; ++i) p[i * (kPage / sizeof(long))] = static_cast<long>(i + 1);
  say("ns " + std::to_string(now_ns() - t0));
  return 0;
}

int run_seqwrite(const Args& args) {
  size_t mib = static_cast<size_t>(args.num("--mib", 64));
  size_t pages = mib * 1048576 / kPage;
  int shmid = dipc_segment("seqwrite", pages * kPage);
  Child w = spawn(g_peer, true, {"seqwrite-writer", std::to_string(shmid), std::to_string(pages)});
  int rc = 1;
  std::string l;
  long long ns = 0;
  if (wait_ready(w)) {
    command(w, 'g');
    if (getline(w, l) && sscanf(l.c_str(), "ns %lld", &ns) == 1 && ns > 0) {
      volatile long* p = static_cast<volatile long*>(attach(shmid));
      size_t bad = 0;
      for (size_t i = 0; i < pages; ++i) bad += p[i * (kPage / sizeof(long))] != static_cast<long>(i + 1);
      shmdt(const_cast<long*>(p));
      double mibps = static_cast<double>(mib) / (static_cast<double>(ns) / 1e9);
      if (bad) {
        printf("seqwrite: failed: %zu of %zu pages read back wrong on this node\n", bad, pages);
      } else {
        printf("dipc sequential write of %zu MiB on %s (a fresh segment homed on this node): %.1f MiB/s, %.1f us/4 KiB\n",
               mib, g_peer.c_str(), mibps, static_cast<double>(ns) / 1e3 / static_cast<double>(pages));
        printf("@seqwrite_dipc_mibps %.2f\n", mibps);
        rc = 0;
      }
    } else {
      printf("seqwrite: failed: %s\n", l.c_str());
    }
  }
  shmctl(shmid, IPC_RMID, nullptr);
  reap(w);
  return rc;
}

// ---- 2f. memory of a touched segment -----------------------------------------------------------------------------
// memory: node1 (the home) writes every page of a MIB-MiB segment, a process on node2 reads every page; while both
// still have it attached, each node's dipcd is measured: VmRSS and RssShmem from /proc/PID/status, and the bytes
// allocated in its view and frames memfds (st_blocks of /proc/PID/fd/N). The daemons' pids come from the cluster
// directory (DIPC_SIM_DIR/nodeK.dipcd.pid).

int memory_reader(int shmid, size_t pages) {
  volatile long* p = static_cast<volatile long*>(attach(shmid));
  for (size_t i = 0; i < pages; ++i)
    if (p[i * (kPage / sizeof(long))] != static_cast<long>(i + 1)) {
      say("error incoherent page " + std::to_string(i));
      return 1;
    }
  say("ready");
  next_command();  // stays attached until the parent has measured (or gives up)
  return 0;
}

struct DaemonMemory {
  double rss_mib = -1, shmem_mib = -1, view_mib = 0, frames_mib = 0;
};

DaemonMemory daemon_memory(int node) {
  DaemonMemory m;
  FILE* f = fopen((g_dir + "/node" + std::to_string(node) + ".dipcd.pid").c_str(), "r");
  long pid = 0;
  if (!f) return m;
  if (fscanf(f, "%ld", &pid) != 1) pid = 0;
  fclose(f);
  if (pid <= 0) return m;
  std::string proc = "/proc/" + std::to_string(pid);
  if (FILE* st = fopen((proc + "/status").c_str(), "r")) {
    char line[256];
    long kb = 0;
    while (fgets(line, sizeof line, st)) {
      if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) m.rss_mib = static_cast<double>(kb) / 1024;
      if (sscanf(line, "RssShmem: %ld kB", &kb) == 1) m.shmem_mib = static_cast<double>(kb) / 1024;
    }
    fclose(st);
  }
  if (DIR* d = opendir((proc + "/fd").c_str())) {
    while (dirent* e = readdir(d)) {
      std::string fd = proc + "/fd/" + e->d_name;
      char target[256];
      ssize_t n = readlink(fd.c_str(), target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = 0;
      struct stat sb;
      if (stat(fd.c_str(), &sb) != 0) continue;
      double mib = static_cast<double>(sb.st_blocks) * 512 / 1048576;
      if (strstr(target, "dipc-shm-view")) m.view_mib += mib;
      if (strstr(target, "dipc-shm-frames")) m.frames_mib += mib;
    }
    closedir(d);
  }
  return m;
}

// Shmem of the whole machine (/proc/meminfo, MiB): every node's memfds, since the nodes share one kernel.
double machine_shmem_mib() {
  double mib = -1;
  if (FILE* f = fopen("/proc/meminfo", "r")) {
    char line[256];
    long kb = 0;
    while (fgets(line, sizeof line, f))
      if (sscanf(line, "Shmem: %ld kB", &kb) == 1) mib = static_cast<double>(kb) / 1024;
    fclose(f);
  }
  return mib;
}

int run_memory(const Args& args) {
  size_t mib = static_cast<size_t>(args.num("--mib", 1024));
  size_t pages = mib * 1048576 / kPage;
  if (g_dir.empty()) unavailable("memory", "needs DIPC_SIM_DIR (run bench/run_shm.sh or bench/memory.sh)");
  double shmem0 = machine_shmem_mib();
  int64_t t0 = now_ns();
  auto [shmid, p] = filled_dipc_segment("memory", pages);
  int64_t t1 = now_ns();
  Child r = spawn(g_peer, true, {"memory-reader", std::to_string(shmid), std::to_string(pages)});
  int rc = 1;
  if (wait_ready(r)) {
    int64_t t2 = now_ns();
    double wrote = static_cast<double>(mib) / (static_cast<double>(t1 - t0) / 1e9);
    double read = static_cast<double>(mib) / (static_cast<double>(t2 - t1) / 1e9);
    printf("first touch: written on node1 (the home) at %.1f MiB/s, read on %s at %.1f MiB/s (with its start)\n",
           wrote, g_peer.c_str(), read);
    printf("@memory_home_write_mibps %.2f\n@memory_remote_read_mibps %.2f\n", wrote, read);
    double shmem = machine_shmem_mib();
    printf("Shmem of the machine (/proc/meminfo, both nodes): +%.1f MiB (%.2fx the segment)\n", shmem - shmem0,
           (shmem - shmem0) / static_cast<double>(mib));
    printf("@memory_machine_shmem_mib %.1f\n", shmem - shmem0);
    printf("memory of a %zu MiB segment written on node1 and read on %s (MiB):\n", mib, g_peer.c_str());
    for (int node = 1; node <= 2; ++node) {
      DaemonMemory m = daemon_memory(node);
      printf("  node%d dipcd: VmRSS %.1f  RssShmem %.1f  view memfd %.1f  frames memfd %.1f  (view+frames %.2fx "
             "the segment)\n",
             node, m.rss_mib, m.shmem_mib, m.view_mib, m.frames_mib,
             (m.view_mib + m.frames_mib) / static_cast<double>(mib));
      printf("@memory_node%d_rss_mib %.1f\n@memory_node%d_shmem_mib %.1f\n@memory_node%d_view_mib %.1f\n"
             "@memory_node%d_frames_mib %.1f\n",
             node, m.rss_mib, node, m.shmem_mib, node, m.view_mib, node, m.frames_mib);
    }
    printf("@memory_touched_mib %zu\n", mib);
    rc = 0;
  }
  shmdt(const_cast<long*>(p));
  shmctl(shmid, IPC_RMID, nullptr);
  reap(r);
  return rc;
}

// fresh: the bytes land in a new shared memfd mapping of their size, as a first touch must put them in memory the
// segment did not have (on a VM, the first touch of a page can cost more than the copy into it); else in one reused
// 64 KiB buffer (the classic bulk transfer).
int tcp_bulk_sink(int port, size_t bytes, bool fresh) {
  int s = accept_one(port);
  if (s < 0) return 1;
  std::vector<char> buf(1 << 16);
  char* dst = nullptr;
  if (fresh) {
    int fd = memfd_create("tcpbulk-fresh", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0) return 1;
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return 1;
    dst = static_cast<char*>(m);
  }
  for (size_t got = 0; got < bytes;) {
    char* at = fresh ? dst + got : buf.data();
    ssize_t n = read(s, at, std::min(fresh ? bytes : buf.size(), bytes - got));
    if (n <= 0) return 1;
    got += static_cast<size_t>(n);
  }
  if (fresh) munmap(dst, bytes);
  return full_io(s, buf.data(), 1, false) ? 0 : 1;
}

int run_tcpbulk(const Args& args) {
  size_t mib = static_cast<size_t>(args.num("--mib", 64));
  size_t bytes = mib * 1048576;
  int port = 19000 + (getpid() % 1000);
  const bool fresh = args.has("--fresh");
  Child p = spawn(g_peer, false, {"tcp-bulk-sink", std::to_string(port), std::to_string(bytes), fresh ? "1" : "0"});
  if (!wait_ready(p)) return 1;
  int s = connect_peer(port);
  std::vector<char> buf(1 << 16, 7);
  int64_t t0 = now_ns();
  for (size_t sent = 0; sent < bytes;) {
    size_t len = std::min(buf.size(), bytes - sent);
    if (!full_io(s, buf.data(), len, false)) die("tcp bulk send");
    sent += len;
  }
  if (!full_io(s, buf.data(), 1, true)) die("tcp bulk ack");
  int64_t ns = now_ns() - t0;
  close(s);
  reap(p);
  double mibps = static_cast<double>(mib) / (static_cast<double>(ns) / 1e9);
  printf("raw TCP bulk transfer of %zu MiB, this node -> %s%s: %.1f MiB/s\n", mib, g_peer.c_str(),
         fresh ? " (into fresh memory)" : "", mibps);
  printf("@%s %.2f\n", fresh ? "tcpbulk_fresh_mibps" : "tcpbulk_mibps", mibps);
  return 0;
}

// ---- 3. Jacobi ---------------------------------------------------------------------------------------------------
// Segment: grid 0 then grid 1, N x N doubles each, row-major. Boundary: top row 1.0, other edges 0. Interior rows
// 1..N-2 split evenly across P ranks; each rank first-touches its own rows. Barrier (semaphores: 0 = arrivals,
// 1/2 = gate by sweep parity): rank 0 waits for P-1 arrivals, then opens the gate of that parity P-1 times; the
// parity keeps a fast rank from taking a token of the previous barrier.

struct Barrier {
  int semid, nprocs, rank;
  int64_t count = 0;
  bool wait() {
    unsigned short gate = static_cast<unsigned short>(1 + (count++ & 1));
    if (nprocs == 1) return true;
    if (rank == 0) return sem(semid, {{0, static_cast<short>(-(nprocs - 1)), 0}}) &&
                          sem(semid, {{gate, static_cast<short>(nprocs - 1), 0}});
    return sem(semid, {{0, 1, 0}}) && sem(semid, {{gate, -1, 0}});
  }
};

int jacobi_rank(int shmid, int semid, int n, int rank, int nprocs, int sweeps, int warm) {
  auto* g0 = static_cast<double*>(attach(shmid));
  double* g[2] = {g0, g0 + static_cast<size_t>(n) * static_cast<size_t>(n)};
  int interior = n - 2;
  int lo = 1 + interior * rank / nprocs, hi = 1 + interior * (rank + 1) / nprocs;
  auto at = [n](double* grid, int i, int j) -> double& {
    return grid[static_cast<size_t>(i) * static_cast<size_t>(n) + static_cast<size_t>(j)];
  };
  int init_lo = rank == 0 ? 0 : lo, init_hi = rank == nprocs - 1 ? n : hi;
  for (double* grid : g)
    for (int i = init_lo; i < init_hi; ++i)
      for (int j = 0; j < n; ++j) at(grid, i, j) = i == 0 ? 1.0 : 0.0;
  say("ready");
  Barrier bar{semid, nprocs, rank};
  if (!bar.wait()) die("barrier");
  int64_t t0 = 0;
  int total = warm + sweeps;
  for (int s = 0; s < total; ++s) {
    if (s == warm) t0 = now_ns();
    double* src = g[s & 1];
    double* dst = g[(s + 1) & 1];
    for (int i = lo; i < hi; ++i)
      for (int j = 1; j < n - 1; ++j)
        at(dst, i, j) = 0.25 * (at(src, i - 1, j) + at(src, i + 1, j) + at(src, i, j - 1) + at(src, i, j + 1));
    if (!bar.wait()) die("barrier");
  }
  int64_t t1 = now_ns();
  double sum = 0;
  for (int i = lo; i < hi; ++i)
    for (int j = 0; j < n; ++j) sum += at(g[total & 1], i, j) * static_cast<double>(1 + (i * 31 + j) % 17);
  char b[200];
  snprintf(b, sizeof b, "result %.17g %lld", sum, static_cast<long long>(t1 - t0));
  say(b);
  return 0;
}

int run_jacobi(const Args& args) {
  std::string mode = args.get("--mode", "native");
  bool dipc = mode == "dipc";
  int n = static_cast<int>(args.num("--n", 1024));
  int sweeps = static_cast<int>(args.num("--sweeps", 100));
  int warm = 3;
  std::vector<std::string> nodes;
  std::string list = args.get("--nodes", dipc ? "node1,node2" : ",");
  for (size_t pos = 0;;) {  // comma-separated; empty names mean "this node, locally spawned"
    size_t c = list.find(',', pos);
    nodes.push_back(list.substr(pos, c == std::string::npos ? std::string::npos : c - pos));
    if (c == std::string::npos) break;
    pos = c + 1;
  }
  int nprocs = static_cast<int>(nodes.size());
  std::string key = "jacobi_" + mode + std::to_string(nprocs);
  int flags = dipc ? IPC_DIPC : 0;
  size_t bytes = 2 * static_cast<size_t>(n) * static_cast<size_t>(n) * sizeof(double);
  int shmid = shmget(IPC_PRIVATE, bytes, (dipc ? dipc_shm_flag() : 0) | IPC_CREAT | 0600);
  if (shmid < 0) die("shmget");
  if (dipc && !dipc_shm_id_ok(shmid)) {
    shmctl(shmid, IPC_RMID, nullptr);
    unavailable(key.c_str(), "shmget returned a kernel id (no dipc shm in the preload)");
  }
  int semid = semget(IPC_PRIVATE, 3, flags | IPC_CREAT | 0600);
  if (semid < 0 || (dipc && !is_dipc_id(semid))) die("semget");
  std::vector<Child> ranks;
  bool ok = true;
  for (int r = 0; r < nprocs && ok; ++r) {
    ranks.push_back(spawn(nodes[static_cast<size_t>(r)], dipc,
                          {"jacobi-rank", std::to_string(shmid), std::to_string(semid), std::to_string(n),
                           std::to_string(r), std::to_string(nprocs), std::to_string(sweeps), std::to_string(warm)}));
    ok = wait_ready(ranks.back());
  }
  double sum = 0;
  long long ns0 = 0;
  for (int r = 0; r < nprocs && ok; ++r) {
    std::string l;
    double part = 0;
    long long ns = 0;
    if (!getline(ranks[static_cast<size_t>(r)], l) || sscanf(l.c_str(), "result %lf %lld", &part, &ns) != 2) {
      printf("%s: rank %d failed: %s\n", key.c_str(), r, l.c_str());
      ok = false;
      break;
    }
    sum += part;
    if (r == 0) ns0 = ns;
  }
  semctl(semid, 0, IPC_RMID);
  shmctl(shmid, IPC_RMID, nullptr);
  for (auto& c : ranks) reap(c);
  if (!ok) return 1;
  std::string where;
  for (auto& nd : nodes) {
    if (!where.empty()) where += ',';
    where += nd.empty() ? "local" : nd.c_str();
  }
  double per = static_cast<double>(ns0) / sweeps / 1e3;
  printf("Jacobi %dx%d %-6s: %d processes (%s), %d sweeps, %.1f us/sweep, checksum %.17g\n", n, n, mode.c_str(),
         nprocs, where.c_str(), sweeps, per, sum);
  printf("@%s_us_per_sweep %.2f\n@%s_sweeps %d\n@%s_checksum %.17g\n", key.c_str(), per, key.c_str(), sweeps,
         key.c_str(), sum);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  char self[4096];
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len <= 0) die("readlink");
  self[len] = 0;
  g_self = self;
  if (const char* e = getenv("DIPC_SIM")) g_sim = e;
  if (const char* e = getenv("DIPC_SIM_DIR")) g_dir = e;
  if (const char* e = getenv("DIPC_PEER_ADDR")) g_peer_addr = e;
  if (const char* e = getenv("DIPC_PEER")) g_peer = e;
  if (argc < 2) {
    fprintf(stderr, "usage: shm_bench stream|uffd|tcp|readmiss|upgrade|jacobi [options] (see bench/run_shm.sh)\n");
    return 2;
  }
  std::string cmd = argv[1];
  auto arg = [&](int i) { return i < argc ? std::stol(argv[i]) : 0L; };
  // Children (spawned by the parts below).
  if (cmd == "stream-worker")
    return stream_worker(static_cast<int>(arg(2)), static_cast<size_t>(arg(3)), static_cast<int>(arg(4)),
                         static_cast<int>(arg(5)));
  if (cmd == "tcp-echo") return tcp_echo(static_cast<int>(arg(2)));
  if (cmd == "tcp-bulk-sink")
    return tcp_bulk_sink(static_cast<int>(arg(2)), static_cast<size_t>(arg(3)), argc > 4 && arg(4) != 0);
  if (cmd == "seqread-reader") return seqread_reader(static_cast<int>(arg(2)), static_cast<size_t>(arg(3)));
  if (cmd == "seqwrite-writer") return seqwrite_writer(static_cast<int>(arg(2)), static_cast<size_t>(arg(3)));
  if (cmd == "memory-reader") return memory_reader(static_cast<int>(arg(2)), static_cast<size_t>(arg(3)));
  if (cmd == "readmiss-reader")
    return readmiss_reader(static_cast<int>(arg(2)), static_cast<int>(arg(3)), static_cast<size_t>(arg(4)),
                           static_cast<size_t>(arg(5)), arg(6) != 0);
  if (cmd == "upgrade-writer")
    return upgrade_writer(static_cast<int>(arg(2)), static_cast<int>(arg(3)), static_cast<int>(arg(4)),
                          static_cast<size_t>(arg(5)), static_cast<size_t>(arg(6)));
  if (cmd == "upgrade-reader")
    return upgrade_reader(static_cast<int>(arg(2)), static_cast<int>(arg(3)), static_cast<int>(arg(4)),
                          static_cast<size_t>(arg(5)));
  if (cmd == "jacobi-rank")
    return jacobi_rank(static_cast<int>(arg(2)), static_cast<int>(arg(3)), static_cast<int>(arg(4)),
                       static_cast<int>(arg(5)), static_cast<int>(arg(6)), static_cast<int>(arg(7)),
                       static_cast<int>(arg(8)));
  Args args{std::vector<std::string>(argv + 2, argv + argc)};
  if (kernel_shm_selftest())
    printf("SELFTEST (DIPC_SHM_BENCH_KERNEL_SHM=1): \"dipc\" segments are kernel segments; not dipc figures\n");
  if (cmd == "stream") return run_stream(args);
  if (cmd == "uffd") return run_uffd(args);
  if (cmd == "tcp") return run_tcp(args);
  if (cmd == "tcpbulk") return run_tcpbulk(args);
  if (cmd == "seqread") return run_seqread(args);
  if (cmd == "seqwrite") return run_seqwrite(args);
  if (cmd == "memory") return run_memory(args);
  if (cmd == "readmiss") return run_readmiss(args);
  if (cmd == "upgrade") return run_upgrade(args);
  if (cmd == "jacobi") return run_jacobi(args);
  fprintf(stderr, "shm_bench: unknown part '%s'\n", cmd.c_str());
  return 2;
}
