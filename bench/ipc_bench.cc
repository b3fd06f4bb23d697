// Distributed semaphores and message queues against their baselines, measured in the same run:
//   - raw TCP request/response round trip between the same two nodes (the floor for any remote call),
//   - dipc: semaphore ping-pong, message round trip and message streaming between two nodes,
//   - native kernel SysV: the same patterns between two processes of one node, for scale.
// Run through bench/run.sh, which starts a simulated 2-node cluster and prints the ratios.
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
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

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
  for (auto _ : state) {
    if (write(s, buf, sizeof buf) != static_cast<ssize_t>(sizeof buf)) die("write");
    size_t got = 0;
    while (got < sizeof buf) {
      ssize_t n = read(s, buf + got, sizeof buf - got);
      if (n <= 0) die("read");
      got += static_cast<size_t>(n);
    }
  }
  close(s);
  stop_partner(p);
}

void sem_pingpong(benchmark::State& state, bool remote) {
  int semid = semget(IPC_PRIVATE, 2, (remote ? IPC_DIPC : 0) | 0600);
  if (semid < 0) die("semget");
  Partner p = start_partner(remote, "sem", semid);
  for (auto _ : state) {
    sembuf v{0, 1, 0}, w{1, -1, 0};
    if (semop(semid, &v, 1) < 0 || semop(semid, &w, 1) < 0) die("semop");
  }
  semctl(semid, 0, IPC_RMID);
  stop_partner(p);
}
void BM_DipcSemPingPong(benchmark::State& s) { sem_pingpong(s, true); }
void BM_NativeSemPingPong(benchmark::State& s) { sem_pingpong(s, false); }

void msg_roundtrip(benchmark::State& state, bool remote) {
  int msqid = msgget(IPC_PRIVATE, (remote ? IPC_DIPC : 0) | 0600);
  if (msqid < 0) die("msgget");
  Partner p = start_partner(remote, "msgpong", msqid);
  Msg m{1, {}};
  for (auto _ : state) {
    m.mtype = 1;
    if (msgsnd(msqid, &m, kMsgSize, 0) < 0 || msgrcv(msqid, &m, kMsgSize, 2, 0) < 0) die("msg");
  }
  msgctl(msqid, IPC_RMID, nullptr);
  stop_partner(p);
}
void BM_DipcMsgRoundTrip(benchmark::State& s) { msg_roundtrip(s, true); }
void BM_NativeMsgRoundTrip(benchmark::State& s) { msg_roundtrip(s, false); }

void msg_stream(benchmark::State& state, bool remote) {
  int msqid = msgget(IPC_PRIVATE, (remote ? IPC_DIPC : 0) | 0600);
  if (msqid < 0) die("msgget");
  Partner p = start_partner(remote, "msgsink", msqid);
  const int batch = 256;
  Msg m{1, {}};
  for (auto _ : state) {
    for (int i = 0; i < batch; ++i) {
      m.mtype = 1;
      if (msgsnd(msqid, &m, kMsgSize, 0) < 0) die("msgsnd");
    }
    m.mtype = 2;
    if (msgsnd(msqid, &m, kMsgSize, 0) < 0 || msgrcv(msqid, &m, kMsgSize, 3, 0) < 0) die("msg ack");
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.SetBytesProcessed(state.iterations() * batch * kMsgSize);
  msgctl(msqid, IPC_RMID, nullptr);
  stop_partner(p);
}
void BM_DipcMsgStream(benchmark::State& s) { msg_stream(s, true); }
void BM_NativeMsgStream(benchmark::State& s) { msg_stream(s, false); }

BENCHMARK(BM_RawTcpRoundTrip)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_DipcSemPingPong)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_DipcMsgRoundTrip)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_DipcMsgStream)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_NativeSemPingPong)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_NativeMsgRoundTrip)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_NativeMsgStream)->UseRealTime()->MinTime(1.0);

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
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
