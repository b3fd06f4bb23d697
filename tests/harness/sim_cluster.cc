#include "tests/harness/sim_cluster.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <utility>

#ifndef DIPC_BUILD_BIN_DIR
#error "DIPC_BUILD_BIN_DIR must be defined (the build tree's bin/ directory)"
#endif
#ifndef DIPC_TEST_PROGS_DIR
#define DIPC_TEST_PROGS_DIR DIPC_BUILD_BIN_DIR
#endif

extern char** environ;

namespace dipc::test {

namespace {

constexpr int kDrainMs = 2000;  // output pipes still open after the process exited (a grandchild holds them)

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

int pidfd_open(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

// Reads what is available on p's pipes, waiting at most wait_ms for something to happen (also for pidfd, if given,
// to become readable: the process exited). Returns false when both pipes are closed.
bool pump(SimCluster::Proc& p, int wait_ms, int pidfd = -1) {
  pollfd fds[3];
  nfds_t n = 0;
  if (p.out_fd >= 0) fds[n++] = {p.out_fd, POLLIN, 0};
  if (p.err_fd >= 0) fds[n++] = {p.err_fd, POLLIN, 0};
  const nfds_t npipes = n;
  if (pidfd >= 0) fds[n++] = {pidfd, POLLIN, 0};
  if (n == 0) {
    if (wait_ms > 0) poll(nullptr, 0, wait_ms);  // nothing to watch (no pidfd): the poll interval
    return false;
  }
  int r = poll(fds, n, wait_ms);
  if (r <= 0) return npipes > 0;
  for (nfds_t i = 0; i < npipes; ++i) {
    if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    char buf[65536];
    ssize_t got = read(fds[i].fd, buf, sizeof buf);
    if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    bool is_out = fds[i].fd == p.out_fd;
    if (got > 0) {
      (is_out ? p.out_buf : p.err_buf).append(buf, static_cast<size_t>(got));
    } else {
      close(fds[i].fd);
      (is_out ? p.out_fd : p.err_fd) = -1;
    }
  }
  return p.out_fd >= 0 || p.err_fd >= 0;
}

// Starts argv (argv[0] a path) in its own process group with stdout/stderr on pipes and stdin from /dev/null.
SimCluster::Proc start(std::vector<std::string> argv) {
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC)) throw std::runtime_error("pipe: " + std::string(strerror(errno)));
  if (pipe2(err, O_CLOEXEC)) {
    close(out[0]);
    close(out[1]);
    throw std::runtime_error("pipe: " + std::string(strerror(errno)));
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, dfl;
  sigemptyset(&none);
  sigemptyset(&dfl);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGUSR1, SIGUSR2, SIGALRM}) sigaddset(&dfl, s);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &dfl);
  posix_spawnattr_setpgroup(&attr, 0);  // its own group: a timeout kills everything it started
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> c;
  for (auto& s : argv) c.push_back(s.data());
  c.push_back(nullptr);
  SimCluster::Proc p;
  int rc = posix_spawn(&p.pid, c[0], &fa, &attr, c.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  close(out[1]);
  close(err[1]);
  if (rc) {
    close(out[0]);
    close(err[0]);
    p.pid = -1;
    throw std::runtime_error("cannot start " + argv[0] + ": " + strerror(rc));
  }
  p.out_fd = out[0];
  p.err_fd = err[0];
  return p;
}

int decode(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1; }

// Waits for p (bounded), collecting its output; SIGKILLs its group on timeout (status 124).
SimCluster::Result finish(SimCluster::Proc& p, int timeout_s) {
  SimCluster::Result r;
  if (p.pid <= 0) throw std::logic_error("SimCluster::wait on a process that is not running");
  const int64_t deadline = now_ms() + int64_t{timeout_s} * 1000;
  int pidfd = pidfd_open(p.pid);
  bool timed_out = false, exited = false;
  int st = 0;
  int64_t drain_until = -1;
  for (;;) {
    if (!exited) {
      pid_t w = waitpid(p.pid, &st, WNOHANG);
      if (w == p.pid || (w < 0 && errno == ECHILD)) {
        exited = true;
        drain_until = now_ms() + kDrainMs;
      }
    }
    int64_t now = now_ms();
    bool pipes_open = p.out_fd >= 0 || p.err_fd >= 0;
    if (exited && (!pipes_open || now >= drain_until)) break;
    if (!exited && !timed_out && now >= deadline) {
      timed_out = true;
      if (::kill(-p.pid, SIGKILL) != 0) ::kill(p.pid, SIGKILL);
    }
    if (!exited && timed_out && now >= deadline + 10000) {  // unkillable (D state?): give up, leave it unreaped
      fprintf(stderr, "SimCluster: pid %d does not die after SIGKILL\n", static_cast<int>(p.pid));
      break;
    }
    int64_t until = exited ? drain_until : timed_out ? now + 100 : deadline;
    int wait_ms = static_cast<int>(std::clamp<int64_t>(until - now, 0, 100));
    if (pidfd < 0) wait_ms = std::min(wait_ms, 10);  // no pidfd: the exit is noticed by polling waitpid
    pump(p, wait_ms, exited ? -1 : pidfd);
  }
  if (pidfd >= 0) close(pidfd);
  if (p.out_fd >= 0) close(p.out_fd);
  if (p.err_fd >= 0) close(p.err_fd);
  p.out_fd = p.err_fd = -1;
  r.status = timed_out ? 124 : decode(st);
  r.out = std::move(p.out_buf);
  r.err = std::move(p.err_buf);
  p.out_buf.clear();
  p.err_buf.clear();
  p.pid = -1;
  return r;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& a : v) s += (s.empty() ? "" : " ") + a;
  return s;
}

}  // namespace

// --- Proc -------------------------------------------------------------------------------------------------------

SimCluster::Proc::Proc(Proc&& o) noexcept
    : pid(std::exchange(o.pid, -1)),
      out_fd(std::exchange(o.out_fd, -1)),
      err_fd(std::exchange(o.err_fd, -1)),
      out_buf(std::move(o.out_buf)),
      err_buf(std::move(o.err_buf)) {}

SimCluster::Proc& SimCluster::Proc::operator=(Proc&& o) noexcept {
  if (this != &o) {
    this->~Proc();
    pid = std::exchange(o.pid, -1);
    out_fd = std::exchange(o.out_fd, -1);
    err_fd = std::exchange(o.err_fd, -1);
    out_buf = std::move(o.out_buf);
    err_buf = std::move(o.err_buf);
  }
  return *this;
}

SimCluster::Proc::~Proc() {
  if (pid > 0) {  // never waited for: kill it and everything it started, reap it (bounded)
    if (::kill(-pid, SIGKILL) != 0) ::kill(pid, SIGKILL);
    int fd = pidfd_open(pid);
    if (fd >= 0) {
      pollfd pf{fd, POLLIN, 0};
      poll(&pf, 1, 5000);
      close(fd);
    }
    int st;
    waitpid(pid, &st, WNOHANG);
    pid = -1;
  }
  if (out_fd >= 0) close(out_fd);
  if (err_fd >= 0) close(err_fd);
  out_fd = err_fd = -1;
}

// --- SimCluster -------------------------------------------------------------------------------------------------

std::string SimCluster::bin(const std::string& name) { return std::string(DIPC_BUILD_BIN_DIR) + "/" + name; }
std::string SimCluster::prog(const std::string& name) { return std::string(DIPC_TEST_PROGS_DIR) + "/" + name; }

SimCluster::SimCluster(Options o) : nodes_(o.nodes) {
  char tmpl[] = "/tmp/dipc-test.XXXXXX";
  if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp: " + std::string(strerror(errno)));
  top_ = tmpl;
  dir_ = top_ + "/cluster";
  // DIPC_SIM_LOG_LEVEL=debug: every test's daemons log at that level (to debug a failing test; their logs are in
  // the failure output of tests that print daemon_log()).
  if (const char* l = getenv("DIPC_SIM_LOG_LEVEL"); l && *l && o.log_level == "info") o.log_level = l;
  std::vector<std::string> argv = {bin("dipc-sim"), "up",       "-n",       std::to_string(o.nodes), "--dir",
                                   dir_,            "--policy", o.policy,   "--log-level",           o.log_level};
  if (o.loopback) argv.push_back("--loopback");
  std::string transport = o.transport;
  if (const char* t = getenv("DIPC_SIM_TRANSPORT"); transport.empty() && t && *t) transport = t;
  if (!transport.empty()) {
    argv.push_back("--transport");
    argv.push_back(transport);
  }
  argv.insert(argv.end(), o.up_args.begin(), o.up_args.end());
  std::istringstream envs(o.extra_env);
  for (std::string e; envs >> e;) {
    argv.push_back("--env");
    argv.push_back(e);
  }
  Result r;
  try {
    Proc p = start(argv);
    r = finish(p, o.up_timeout_s);
  } catch (...) {
    std::filesystem::remove_all(top_);
    throw;
  }
  if (r.status != 0) {
    // dipc-sim cleans up after a failed start (and prints the logs' tails); make sure anyway.
    Proc d = start({bin("dipc-sim"), "down", "--dir", dir_});
    finish(d, 60);
    std::filesystem::remove_all(top_);
    throw std::runtime_error("dipc-sim up failed (status " + std::to_string(r.status) + "): " + join(argv) + "\n" +
                             r.out + r.err);
  }
  namespaced_ = slurp(dir_ + "/mode").rfind("ns", 0) == 0;
}

SimCluster::~SimCluster() {
  try {
    Proc p = start({bin("dipc-sim"), "down", "--dir", dir_});
    Result r = finish(p, 60);
    if (r.status != 0) fprintf(stderr, "SimCluster: dipc-sim down failed (%d):\n%s%s", r.status, r.out.c_str(), r.err.c_str());
  } catch (const std::exception& e) {
    fprintf(stderr, "SimCluster: dipc-sim down: %s\n", e.what());
  }
  std::error_code ec;
  std::filesystem::remove_all(top_, ec);
}

std::vector<std::string> SimCluster::node_argv(int node, const std::vector<std::string>& argv, bool preload,
                                               const std::vector<std::string>& env) const {
  if (node < 1 || node > nodes_) throw std::out_of_range("SimCluster: no node " + std::to_string(node));
  if (argv.empty()) throw std::invalid_argument("SimCluster: empty argv");
  std::vector<std::string> a = {bin("dipc-sim"), "exec", "--dir", dir_};
  if (preload) a.push_back("--preload");
  a.push_back("node" + std::to_string(node));
  a.push_back("--");
  if (!env.empty()) {
    a.push_back("env");
    for (const auto& e : env) {
      if (e.find('=') == std::string::npos) throw std::invalid_argument("SimCluster: env entry without '=': " + e);
      a.push_back(e);
    }
  }
  a.insert(a.end(), argv.begin(), argv.end());
  return a;
}

SimCluster::Proc SimCluster::spawn(int node, std::vector<std::string> argv, std::vector<std::string> env) {
  return spawn_impl(node, std::move(argv), true, std::move(env));
}
SimCluster::Proc SimCluster::spawn_impl(int node, std::vector<std::string> argv, bool preload,
                                        std::vector<std::string> env) {
  return start(node_argv(node, argv, preload, env));
}

SimCluster::Result SimCluster::run(int node, std::vector<std::string> argv, int timeout_s,
                                   std::vector<std::string> env) {
  return run_impl(node, std::move(argv), timeout_s, true, std::move(env));
}
SimCluster::Result SimCluster::run_impl(int node, std::vector<std::string> argv, int timeout_s, bool preload,
                                        std::vector<std::string> env) {
  Proc p = spawn_impl(node, std::move(argv), preload, std::move(env));
  return finish(p, timeout_s);
}

SimCluster::Result SimCluster::wait(Proc& p, int timeout_s) { return finish(p, timeout_s); }

bool SimCluster::wait_output(Proc& p, const std::string& text, int timeout_s) {
  const int64_t deadline = now_ms() + int64_t{timeout_s} * 1000;
  for (;;) {
    if (p.out_buf.find(text) != std::string::npos) return true;
    int64_t left = deadline - now_ms();
    if (left <= 0) return false;
    if (!pump(p, static_cast<int>(std::min<int64_t>(left, 200)))) return p.out_buf.find(text) != std::string::npos;
  }
}

const std::string& SimCluster::output(Proc& p) {
  while ((p.out_fd >= 0 || p.err_fd >= 0)) {
    size_t before = p.out_buf.size() + p.err_buf.size();
    bool open = pump(p, 0);
    if (!open || p.out_buf.size() + p.err_buf.size() == before) break;
  }
  return p.out_buf;
}

void SimCluster::kill(const Proc& p, int sig) {
  // The program is at the end of the dipc-sim/nsenter/env exec chain: p.pid is its own pid.
  if (p.pid > 0) ::kill(p.pid, sig);
}
void SimCluster::kill_group(const Proc& p, int sig) {
  if (p.pid > 0) ::kill(-p.pid, sig);
}

bool SimCluster::kill_daemon(int node) {
  Proc p = start({bin("dipc-sim"), "kill-daemon", "--dir", dir_, "node" + std::to_string(node)});
  Result r = finish(p, 30);
  last_error_ = r.out + r.err;
  return r.status == 0;
}

bool SimCluster::start_daemon(int node) {
  Proc p = start({bin("dipc-sim"), "start-daemon", "--dir", dir_, "node" + std::to_string(node)});
  Result r = finish(p, 60);
  last_error_ = r.out + r.err;
  return r.status == 0;
}

std::string SimCluster::daemon_log(int node) const { return slurp(dir_ + "/node" + std::to_string(node) + ".log"); }

SimCluster::Result SimCluster::dipc(int node, std::vector<std::string> args, int timeout_s) {
  args.insert(args.begin(), bin("dipc"));
  return run_impl(node, std::move(args), timeout_s, false, {});
}

}  // namespace dipc::test
