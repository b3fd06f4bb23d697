#include "tests/harness/sim_cluster.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace dipc::test {

namespace {
int64_t now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Drains readable output of p into its buffers; waits at most wait_ms. Returns false when both pipes are closed.
bool pump(SimCluster::Proc& p, int wait_ms) {
  pollfd fds[2];
  int n = 0;
  if (p.out >= 0) fds[n++] = {p.out, POLLIN, 0};
  if (p.err >= 0) fds[n++] = {p.err, POLLIN, 0};
  if (n == 0) return false;
  if (poll(fds, static_cast<nfds_t>(n), wait_ms) <= 0) return true;
  for (int i = 0; i < n; ++i) {
    if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    char buf[8192];
    ssize_t r = read(fds[i].fd, buf, sizeof buf);
    bool is_out = fds[i].fd == p.out;
    if (r > 0) {
      (is_out ? p.out_buf : p.err_buf).append(buf, static_cast<size_t>(r));
    } else {
      close(fds[i].fd);
      (is_out ? p.out : p.err) = -1;
    }
  }
  return true;
}

int run_cmd(const std::vector<std::string>& argv, std::string* output = nullptr) {
  std::string cmd;
  for (const auto& a : argv) {
    std::string q = "'";
    for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    cmd += q + "' ";
  }
  cmd += " 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return -1;
  char buf[4096];
  size_t n;
  std::string out;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  int st = pclose(f);
  if (output) *output = out;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
}  // namespace

std::string SimCluster::bin(const std::string& name) { return std::string(DIPC_BUILD_BIN_DIR) + "/" + name; }
std::string SimCluster::prog(const std::string& name) { return std::string(DIPC_TEST_PROGS_DIR) + "/" + name; }

SimCluster::SimCluster(Options o) {
  char tmpl[] = "/tmp/dipc-test.XXXXXX";
  if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  dir_ = std::string(tmpl) + "/c";
  std::vector<std::string> argv = {bin("dipc-sim"), "up", "-n", std::to_string(o.nodes), "--dir", dir_,
                                   "--policy", o.policy, "--log-level", "info"};
  if (o.loopback) argv.push_back("--loopback");
  std::string out;
  if (run_cmd(argv, &out) != 0) {
    std::string msg = "dipc-sim up failed:\n" + out;
    throw std::runtime_error(msg);
  }
  namespaced_ = slurp(dir_ + "/mode").rfind("ns", 0) == 0;
}

SimCluster::~SimCluster() {
  run_cmd({bin("dipc-sim"), "down", "--dir", dir_});
  rmdir(dir_.substr(0, dir_.rfind('/')).c_str());
}

std::vector<std::string> SimCluster::node_argv(int node, const std::vector<std::string>& argv, bool preload) const {
  std::vector<std::string> a = {bin("dipc-sim"), "exec", "--dir", dir_};
  if (preload) a.push_back("--preload");
  a.push_back("node" + std::to_string(node));
  a.push_back("--");
  a.insert(a.end(), argv.begin(), argv.end());
  return a;
}

SimCluster::Proc SimCluster::spawn(int node, const std::vector<std::string>& argv, bool preload) {
  auto a = node_argv(node, argv, preload);
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) throw std::runtime_error("pipe");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);  // its own group: kill() reaches the whole process
  posix_spawnattr_setpgroup(&attr, 0);
  std::vector<char*> c;
  for (auto& s : a) c.push_back(s.data());
  c.push_back(nullptr);
  Proc p;
  int rc = posix_spawn(&p.pid, c[0], &fa, &attr, c.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  close(out[1]);
  close(err[1]);
  if (rc) throw std::runtime_error("posix_spawn: " + std::string(strerror(rc)));
  p.out = out[0];
  p.err = err[0];
  return p;
}

bool SimCluster::wait_output(Proc& p, const std::string& text, int timeout_s) {
  int64_t deadline = now_ms() + timeout_s * 1000;
  while (p.out_buf.find(text) == std::string::npos) {
    int64_t left = deadline - now_ms();
    if (left <= 0 || !pump(p, static_cast<int>(std::min<int64_t>(left, 200)))) {
      return p.out_buf.find(text) != std::string::npos;
    }
  }
  return true;
}

SimCluster::Result SimCluster::wait(Proc& p, int timeout_s) {
  int64_t deadline = now_ms() + timeout_s * 1000;
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, p.pid, 0));
  bool timed_out = false;
  for (;;) {
    // Output first (a full pipe would block the child), then the exit, both bounded by the deadline.
    if (!pump(p, 50)) {
      pollfd pf{pidfd, POLLIN, 0};
      poll(&pf, 1, 200);
    }
    pollfd pf{pidfd, POLLIN, 0};
    if (poll(&pf, 1, 0) == 1) break;
    if (!timed_out && now_ms() > deadline) {
      timed_out = true;
      ::kill(-p.pid, SIGKILL);
      ::kill(p.pid, SIGKILL);
    }
  }
  while (pump(p, 50) && now_ms() < deadline + 5000) {
  }
  close(pidfd);
  int st = 0;
  waitpid(p.pid, &st, 0);
  Result r;
  r.status = timed_out ? 124 : (WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  if (p.out >= 0) close(p.out);
  if (p.err >= 0) close(p.err);
  p.out = p.err = -1;
  r.out = p.out_buf;
  r.err = p.err_buf;
  p.pid = -1;
  return r;
}

void SimCluster::kill(const Proc& p, int sig) {
  // The target is the program at the end of the dipc-sim/nsenter/env exec chain: the same pid.
  ::kill(p.pid, sig);
}

SimCluster::Result SimCluster::run(int node, const std::vector<std::string>& argv, int timeout_s, bool preload) {
  Proc p = spawn(node, argv, preload);
  return wait(p, timeout_s);
}

void SimCluster::kill_daemon(int node) { run_cmd({bin("dipc-sim"), "kill-daemon", "--dir", dir_, "node" + std::to_string(node)}); }
void SimCluster::start_daemon(int node) {
  run_cmd({bin("dipc-sim"), "start-daemon", "--dir", dir_, "node" + std::to_string(node)});
}
std::string SimCluster::daemon_log(int node) const { return slurp(dir_ + "/node" + std::to_string(node) + ".log"); }

}  // namespace dipc::test
