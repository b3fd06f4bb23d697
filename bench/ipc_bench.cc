// Distributed semaphores and message queues against their baselines, measured in the same run:
//   - raw TCP request/response round trip between the same two nodes (the floor for any remote call),
//   - dipc: semaphore ping-pong, message round trip and message streaming between two nodes,
//   - native kernel SysV: the same patterns between two processes of one node, for scale,
//   - dipc with both processes on the set's home node (issue 9: within 1.5x of the native ping-pong), and the
//     message round trip the same way (issue 9 item 4: measured to decide whether queues should be kernel-backed),
//   - shmget + shmat + shmdt of an existing 64 KiB segment homed on this node, dipc and native (issue 9: 3x).
// Run through bench/run.sh, which starts a simulated 2-node cluster, runs this binary with repetitions in random
// interleaved order (each repetition round runs every benchmark once, so dipc and its baseline alternate) and
// prints the median of the per-round ratios with their spread.
//
// Every benchmark runs a fixed number of iterations (DIPC_BENCH_ITERS, default 2000) so that one call of the
// function is one repetition; each iteration is timed on its own and the repetition reports p50_us, p99_us and
// p999_us as counters. With DIPC_BENCH_CDF=FILE each repetition also appends one JSON line
// {"name", "rep", "cdf_us": [101 percentiles]} that run.sh merges into the JSON for bench/plot.
//
// This binary runs on node 1 under libdipc.so; partners run on node 2 (started with `dipc-sim exec`) or, for the
// native baselines, are forked here. Partners report readiness on a pipe; every wait is bounded.
#include <arpa/inet.h>
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "bench/latency.h"
#include "dipc/dipc.h"

extern char** environ;

namespace {

constexpr int kMsgSize = 64;
struct Msg {
  long mtype;
  char text[kMsgSize];
};

std::string g_self;       // path of this binary
std::string g_sim;        // dipc-sim binary
std::string g_dir;        // cluster dir
std::string g_peer_addr;  // node 2's address
std::string g_peer = "node2";

[[noreturn]] void die(const char* what) {
  fprintf(stderr, "ipc_bench: %s: %s\n", what, strerror(errno));
  exit(1);
}

// Times each iteration of one repetition; at the end sets the percentile counters and appends the CDF line.
class Recorder {
 public:
  Recorder(benchmark::State& state, std::string name) : state_(state), name_(std::move(name)) {
    ns_.reserve(static_cast<size_t>(state.max_iterations));
  }
  void add(int64_t ns) { ns_.push_back(ns); }
  ~Recorder() {
    dipc_bench::Latency l = dipc_bench::latency_of(ns_);
    state_.counters["p50_us"] = l.p50;
    state_.counters["p99_us"] = l.p99;
    state_.counters["p999_us"] = l.p999;
    const char* path = getenv("DIPC_BENCH_CDF");
    if (!path || l.n == 0) return;
    int rep = reps_[name_]++;
    if (FILE* f = fopen(path, "a")) {
      fprintf(f, "{\"name\": \"%s\", \"rep\": %d, \"cdf_us\": [%s]}\n", name_.c_str(), rep,
              dipc_bench::cdf_csv(l).c_str());
      fclose(f);
    }
  }

 private:
  benchmark::State& state_;
  std::string name_;
  std::vector<int64_t> ns_;
  static inline std::map<std::string, int> reps_;
};

// ---- partners ----------------------------------------------------------------------------------------------

void ready() {
  if (write(3, "r", 1) != 1) die("ready");
  close(3);
}

int partner_tcp(int port) {
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  if (bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) || listen(ls, 1)) die("listen");
  ready();
  int s = accept(ls, nullptr, nullptr);
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char buf[kMsgSize];
  for (;;) {
    size_t got = 0;
    while (got < sizeof buf) {
      ssize_t n = read(s, buf + got, sizeof buf - got);
      if (n <= 0) return 0;
      got += static_cast<size_t>(n);
    }
    if (write(s, buf, sizeof buf) != static_cast<ssize_t>(sizeof buf)) return 0;
  }
}

int partner_sem(int semid) {
  ready();
  for (;;) {
    sembuf p{0, -1, 0}, v{1, 1, 0};
    if (semop(semid, &p, 1) < 0 || semop(semid, &v, 1) < 0) return 0;  // EIDRM/EINVAL: done
  }
}

int partner_msg_pong(int msqid) {
  ready();
  Msg m;
  for (;;) {
    if (msgrcv(msqid, &m, kMsgSize, 1, 0) < 0) return 0;
    m.mtype = 2;
    if (msgsnd(msqid, &m, kMsgSize, 0) < 0) return 0;
  }
}

int partner_msg_sink(int msqid) {
  ready();
  Msg m;
  for (;;) {
    if (msgrcv(msqid, &m, kMsgSize, -2, 0) < 0) return 0;
    if (m.mtype == 2) {  // end of a batch: acknowledge
      m.mtype = 3;
      if (msgsnd(msqid, &m, kMsgSize, 0) < 0) return 0;
    }
  }
}

// ---- starting partners -----------------------------------------------------------------------------------

struct Partner {
  pid_t pid = -1;
};

// Starts `ipc_bench --partner MODE ARG` on node 2 (remote) or as a local child (native), waits until it is ready.
Partner start_partner(bool remote, const char* mode, int arg) {
  int fds[2];
  if (pipe(fds)) die("pipe");
  std::string a = std::to_string(arg);
  std::vector<std::string> argv;
  if (remote) argv = {g_sim, "exec", "--dir", g_dir, "--preload", g_peer, "--"};
  argv.insert(argv.end(), {g_self, "--partner", mode, a});
  std::vector<char*> cargv;
  for (auto& s : argv) cargv.push_back(s.data());
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  // Close the read end first: when pipe() returned fd 3 as the read end, closing it after the dup2 would close the
  // partner's readiness fd.
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 3);
  Partner p;
  if (posix_spawn(&p.pid, cargv[0], &fa, nullptr, cargv.data(), environ)) die("posix_spawn");
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  pollfd pf{fds[0], POLLIN, 0};
  char c;
  if (poll(&pf, 1, 30000) != 1 || read(fds[0], &c, 1) != 1) {
    fprintf(stderr, "ipc_bench: partner %s did not start\n", mode);
    exit(1);
  }
  close(fds[0]);
  return p;
}

void stop_partner(Partner& p) {
  if (p.pid <= 0) return;
  // Partners exit when their object is removed or their socket closes; bound the wait, then kill.
  for (int i = 0; i < 200; ++i) {
    if (waitpid(p.pid, nullptr, WNOHANG) == p.pid) return;
    usleep(10000);
  }
  kill(p.pid, SIGKILL);
  waitpid(p.pid, nullptr, 0);
}

// ---- benchmarks ----------------------------------------------------------------------------------------

void BM_RawTcpRoundTrip(benchmark::State& state) {
  int port = 17000 + (getpid() % 1000);
  Partner p = start_partner(true, "tcp", port);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, g_peer_addr.c_str(), &a.sin_addr);
  if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a)) die("connect");
  char buf[kMsgSize] = {};
  {
    Recorder rec(state, "BM_RawTcpRoundTrip");
    for (auto _ : state) {
      int64_t t0 = dipc_bench::now_ns();
      if (write(s, buf, sizeof buf) != static_cast<ssize_t>(sizeof buf)) die("write");
      size_t got = 0;
      while (got < sizeof buf) {
        ssize_t n = read(s, buf + got, sizeof buf - got);
        if (n <= 0) die("read");
        got += static_cast<size_t>(n);
      }
      rec.add(dipc_bench::now_ns() - t0);
    }
  }
  close(s);
  stop_partner(p);
}

// dipc: a distributed set (homed on node 1, this node); remote: the partner runs on node 2, else it is a child here.
void sem_pingpong(benchmark::State& state, const char* name, bool dipc, bool remote) {
  int semid = semget(IPC_PRIVATE, 2, (dipc ? IPC_DIPC : 0) | 0600);
  if (semid < 0) die("semget");
  Partner p = start_partner(remote, "sem", semid);
  {
    Recorder rec(state, name);
    for (auto _ : state) {
      int64_t t0 = dipc_bench::now_ns();
      sembuf v{0, 1, 0}, w{1, -1, 0};
      if (semop(semid, &v, 1) < 0 || semop(semid, &w, 1) < 0) die("semop");
      rec.add(dipc_bench::now_ns() - t0);
    }
  }
  semctl(semid, 0, IPC_RMID);
  stop_partner(p);
}
void BM_DipcSemPingPong(benchmark::State& s) { sem_pingpong(s, "BM_DipcSemPingPong", true, true); }
void BM_NativeSemPingPong(benchmark::State& s) { sem_pingpong(s, "BM_NativeSemPingPong", false, false); }
void BM_DipcHomeSemPingPong(benchmark::State& s) { sem_pingpong(s, "BM_DipcHomeSemPingPong", true, false); }

// dipc: a distributed queue (homed on node 1, this node); remote: the partner runs on node 2, else it is a child here.
void msg_roundtrip(benchmark::State& state, const char* name, bool dipc, bool remote) {
  int msqid = msgget(IPC_PRIVATE, (dipc ? IPC_DIPC : 0) | 0600);
  if (msqid < 0) die("msgget");
  Partner p = start_partner(remote, "msgpong", msqid);
  Msg m{1, {}};
  {
    Recorder rec(state, name);
    for (auto _ : state) {
      int64_t t0 = dipc_bench::now_ns();
      m.mtype = 1;
      if (msgsnd(msqid, &m, kMsgSize, 0) < 0 || msgrcv(msqid, &m, kMsgSize, 2, 0) < 0) die("msg");
      rec.add(dipc_bench::now_ns() - t0);
    }
  }
  msgctl(msqid, IPC_RMID, nullptr);
  stop_partner(p);
}
void BM_DipcMsgRoundTrip(benchmark::State& s) { msg_roundtrip(s, "BM_DipcMsgRoundTrip", true, true); }
void BM_NativeMsgRoundTrip(benchmark::State& s) { msg_roundtrip(s, "BM_NativeMsgRoundTrip", false, false); }
void BM_DipcHomeMsgRoundTrip(benchmark::State& s) { msg_roundtrip(s, "BM_DipcHomeMsgRoundTrip", true, false); }

void msg_stream(benchmark::State& state, bool remote) {
  const char* name = remote ? "BM_DipcMsgStream" : "BM_NativeMsgStream";
  int msqid = msgget(IPC_PRIVATE, (remote ? IPC_DIPC : 0) | 0600);
  if (msqid < 0) die("msgget");
  Partner p = start_partner(remote, "msgsink", msqid);
  const int batch = 256;
  Msg m{1, {}};
  {
    Recorder rec(state, name);  // one sample = one batch of 256 messages and its acknowledgement
    for (auto _ : state) {
      int64_t t0 = dipc_bench::now_ns();
      for (int i = 0; i < batch; ++i) {
        m.mtype = 1;
        if (msgsnd(msqid, &m, kMsgSize, 0) < 0) die("msgsnd");
      }
      m.mtype = 2;
      if (msgsnd(msqid, &m, kMsgSize, 0) < 0 || msgrcv(msqid, &m, kMsgSize, 3, 0) < 0) die("msg ack");
      rec.add(dipc_bench::now_ns() - t0);
    }
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.SetBytesProcessed(state.iterations() * batch * kMsgSize);
  msgctl(msqid, IPC_RMID, nullptr);
  stop_partner(p);
}
void BM_DipcMsgStream(benchmark::State& s) { msg_stream(s, true); }
void BM_NativeMsgStream(benchmark::State& s) { msg_stream(s, false); }

// shmget of the existing key, shmat, shmdt: what a program that attaches a segment for a while pays each time.
void shm_attach(benchmark::State& state, const char* name, bool dipc) {
  key_t key = 0x5b000000 | (getpid() & 0xffff);
  constexpr size_t kSize = 64 << 10;
  int shmid = shmget(key, kSize, IPC_CREAT | IPC_EXCL | (dipc ? IPC_DIPC : 0) | 0600);
  if (shmid < 0) die("shmget");
  {
    Recorder rec(state, name);
    for (auto _ : state) {
      int64_t t0 = dipc_bench::now_ns();
      int id = shmget(key, kSize, dipc ? IPC_DIPC : 0);
      if (id < 0) die("shmget (existing)");
      void* p = shmat(id, nullptr, 0);
      if (p == reinterpret_cast<void*>(-1)) die("shmat");
      if (shmdt(p) < 0) die("shmdt");
      rec.add(dipc_bench::now_ns() - t0);
    }
  }
  shmctl(shmid, IPC_RMID, nullptr);
}
void BM_DipcShmAttach(benchmark::State& s) { shm_attach(s, "BM_DipcShmAttach", true); }
void BM_NativeShmAttach(benchmark::State& s) { shm_attach(s, "BM_NativeShmAttach", false); }

// Fixed iteration counts: one function call is one repetition (no probing runs), so the CDF lines count reps.
void register_all() {
  const char* e = getenv("DIPC_BENCH_ITERS");
  benchmark::IterationCount iters = e ? atol(e) : 2000;
  if (iters < 10) iters = 10;
  benchmark::IterationCount batches = std::max<benchmark::IterationCount>(iters / 20, 10);
  benchmark::RegisterBenchmark("BM_RawTcpRoundTrip", BM_RawTcpRoundTrip)->UseRealTime()->Iterations(iters);
  benchmark::RegisterBenchmark("BM_DipcSemPingPong", BM_DipcSemPingPong)->UseRealTime()->Iterations(iters);
  benchmark::RegisterBenchmark("BM_DipcMsgRoundTrip", BM_DipcMsgRoundTrip)->UseRealTime()->Iterations(iters);
  benchmark::RegisterBenchmark("BM_DipcMsgStream", BM_DipcMsgStream)->UseRealTime()->Iterations(batches);
  benchmark::RegisterBenchmark("BM_NativeSemPingPong", BM_NativeSemPingPong)->UseRealTime()->Iterations(iters);
  benchmark::RegisterBenchmark("BM_DipcHomeSemPingPong", BM_DipcHomeSemPingPong)->UseRealTime()->Iterations(iters);
  benchmark::RegisterBenchmark("BM_DipcShmAttach", BM_DipcShmAttach)->UseRealTime()->Iterations(batches);
  benchmark::RegisterBenchmark("BM_NativeShmAttach", BM_NativeShmAttach)->UseRealTime()->Iterations(batches);
  benchmark::RegisterBenchmark("BM_NativeMsgRoundTrip", BM_NativeMsgRoundTrip)->UseRealTime()->Iterations(iters);
  benchmark::RegisterBenchmark("BM_DipcHomeMsgRoundTrip", BM_DipcHomeMsgRoundTrip)->UseRealTime()->Iterations(iters);
  benchmark::RegisterBenchmark("BM_NativeMsgStream", BM_NativeMsgStream)->UseRealTime()->Iterations(batches);
}

}  // namespace

int main(int argc, char** argv) {
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) die("readlink");
  self[n] = 0;
  g_self = self;
  if (argc == 4 && strcmp(argv[1], "--partner") == 0) {
    int arg = atoi(argv[3]);
    std::string mode = argv[2];
    if (mode == "tcp") return partner_tcp(arg);
    if (mode == "sem") return partner_sem(arg);
    if (mode == "msgpong") return partner_msg_pong(arg);
    if (mode == "msgsink") return partner_msg_sink(arg);
    return 2;
  }
  const char* sim = getenv("DIPC_SIM");
  const char* dir = getenv("DIPC_SIM_DIR");
  const char* peer = getenv("DIPC_PEER_ADDR");
  if (!sim || !dir || !peer) {
    fprintf(stderr, "ipc_bench: run it through bench/run.sh (needs DIPC_SIM, DIPC_SIM_DIR, DIPC_PEER_ADDR)\n");
    return 2;
  }
  g_sim = sim;
  g_dir = dir;
  g_peer_addr = peer;
  if (const char* p = getenv("DIPC_PEER")) g_peer = p;
  register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
