// dipc-launch: runs a program's processes across the nodes of a dipc cluster.
//
//   dipc-launch [--sim DIR | --ssh | --slurm | --local] [--timeout S] [--no-preload]
//               [-H host,host] [-n N] PROG ARGS... [: [-H ...] [-n N] PROG2 ARGS...]...
//
// Ranks are numbered across the ':'-separated application contexts (MPMD); within one, processes go round-robin
// over its -H list (default: every node of the cluster; -n defaults to the number of hosts). Each process gets
// LD_PRELOAD=libdipc.so, DIPC_RANK, DIPC_SIZE, DIPC_APP and DIPC_NODE; its output lines are prefixed with
// [node:rank]. The exit status is the first failing rank's (128+signal for a signal), 124 after --timeout.
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace {

struct Context {
  std::vector<std::string> hosts;
  int n = 0;
  std::vector<std::string> argv;
};

struct Proc {
  int rank;
  std::string host;
  pid_t pid = -1;
  int out = -1, err = -1;
  std::string out_buf, err_buf;
  int status = -1;  // exit code, or 128+signal
};

[[noreturn]] void usage(const char* msg) {
  fprintf(stderr, "dipc-launch: %s\n", msg);
  fprintf(stderr,
          "usage: dipc-launch [--sim DIR|--ssh|--slurm|--local] [--timeout S] [--no-preload]\n"
          "                   [-H host,...] [-n N] PROG ARGS... [: [-H host,...] [-n N] PROG ARGS...]...\n");
  exit(2);
}

std::string exe_dir() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  buf[n] = 0;
  std::string s(buf);
  return s.substr(0, s.rfind('/'));
}

bool exists(const std::string& p) { return access(p.c_str(), F_OK) == 0; }

std::string find_lib() {
  if (const char* e = getenv("DIPC_LIB")) return e;
  for (const std::string& c : {exe_dir() + "/../lib/libdipc.so", std::string(DIPC_INSTALL_LIBDIR) + "/libdipc.so"})
    if (exists(c)) {
      char real[PATH_MAX];
      return realpath(c.c_str(), real) ? std::string(real) : c;
    }
  return "libdipc.so";
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string capture(const std::string& cmd) {
  std::string out;
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  pclose(f);
  return out;
}

volatile sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

void emit_lines(std::string& buf, const Proc& p, FILE* to, bool flush_all) {
  size_t pos;
  while ((pos = buf.find('\n')) != std::string::npos) {
    fprintf(to, "[%s:%d] %.*s\n", p.host.c_str(), p.rank, static_cast<int>(pos), buf.data());
    buf.erase(0, pos + 1);
  }
  if (flush_all && !buf.empty()) {
    fprintf(to, "[%s:%d] %s\n", p.host.c_str(), p.rank, buf.c_str());
    buf.clear();
  }
  fflush(to);
}

}  // namespace

int main(int argc, char** argv) {
  std::string backend, sim_dir;
  double timeout_s = 0;
  bool preload = true;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--sim" && i + 1 < argc) {
      backend = "sim";
      sim_dir = argv[++i];
    } else if (a == "--ssh" || a == "--slurm" || a == "--local") {
      backend = a.substr(2);
    } else if (a == "--timeout" && i + 1 < argc) {
      timeout_s = atof(argv[++i]);
    } else if (a == "--no-preload") {
      preload = false;
    } else if (a == "-h" || a == "--help") {
      usage("help");
    } else {
      break;
    }
  }
  std::vector<Context> ctxs(1);
  for (; i < argc; ++i) {
    std::string a = argv[i];
    Context& c = ctxs.back();
    if (a == ":") {
      if (c.argv.empty()) usage("an application context has no program");
      ctxs.emplace_back();
    } else if (c.argv.empty() && a == "-H" && i + 1 < argc) {
      c.hosts = split(argv[++i], ',');
    } else if (c.argv.empty() && a == "-n" && i + 1 < argc) {
      c.n = atoi(argv[++i]);
      if (c.n < 1) usage("-n must be at least 1");
    } else {
      c.argv.push_back(a);
    }
  }
  if (ctxs.back().argv.empty()) usage("no program given");

  if (backend.empty()) {
    if (const char* d = getenv("DIPC_SIM_DIR")) {
      backend = "sim";
      sim_dir = d;
    } else if (getenv("SLURM_JOB_ID")) {
      backend = "slurm";
    } else {
      bool any_hosts = false;
      for (auto& c : ctxs) any_hosts |= !c.hosts.empty();
      backend = any_hosts ? "ssh" : "local";
    }
  }
  std::vector<std::string> all_hosts;
  if (backend == "sim") {
    std::ifstream f(sim_dir + "/nodes");
    int n = 0;
    if (!(f >> n) || n < 1) usage(("no simulated cluster in " + sim_dir).c_str());
    for (int k = 1; k <= n; ++k) all_hosts.push_back("node" + std::to_string(k));
  } else if (backend == "slurm") {
    const char* nl = getenv("SLURM_JOB_NODELIST");
    all_hosts = split(capture("scontrol show hostnames " + shell_quote(nl ? nl : "")), '\n');
  } else {
    all_hosts = {"localhost"};
  }

  // Placement.
  std::vector<Proc> procs;
  std::vector<std::pair<size_t, std::string>> placement;  // context, host
  for (size_t ci = 0; ci < ctxs.size(); ++ci) {
    Context& c = ctxs[ci];
    if (c.hosts.empty()) c.hosts = all_hosts;
    if (c.hosts.empty()) usage("no hosts to run on");
    if (c.n == 0) c.n = static_cast<int>(c.hosts.size());
    for (int r = 0; r < c.n; ++r) placement.emplace_back(ci, c.hosts[static_cast<size_t>(r) % c.hosts.size()]);
  }
  std::string lib = find_lib();
  std::string sim = exe_dir() + "/dipc-sim";
  char cwd[PATH_MAX];
  if (!getcwd(cwd, sizeof cwd)) strcpy(cwd, "/");

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  int size = static_cast<int>(placement.size());
  for (int rank = 0; rank < size; ++rank) {
    auto [ci, host] = placement[static_cast<size_t>(rank)];
    std::vector<std::string> env = {"DIPC_RANK=" + std::to_string(rank), "DIPC_SIZE=" + std::to_string(size),
                                    "DIPC_APP=" + std::to_string(ci), "DIPC_NODE=" + host};
    if (preload) env.push_back("LD_PRELOAD=" + lib);
    std::vector<std::string> cmd;
    if (backend == "sim") {
      cmd = {sim, "exec", "--dir", sim_dir, host, "--", "env"};
      cmd.insert(cmd.end(), env.begin(), env.end());
      cmd.insert(cmd.end(), ctxs[ci].argv.begin(), ctxs[ci].argv.end());
    } else if (backend == "ssh") {
      std::string remote = "cd " + shell_quote(cwd) + " && env";
      for (auto& e : env) remote += " " + shell_quote(e);
      for (auto& a : ctxs[ci].argv) remote += " " + shell_quote(a);
      cmd = {"ssh", "-o", "BatchMode=yes", host, remote};
    } else if (backend == "slurm") {
      std::string exp = "--export=ALL";
      for (auto& e : env) exp += "," + e;
      cmd = {"srun", "--nodes=1", "--ntasks=1", "-w", host, exp};
      cmd.insert(cmd.end(), ctxs[ci].argv.begin(), ctxs[ci].argv.end());
    } else {
      cmd = {"env"};
      cmd.insert(cmd.end(), env.begin(), env.end());
      cmd.insert(cmd.end(), ctxs[ci].argv.begin(), ctxs[ci].argv.end());
    }
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
      perror("dipc-launch: pipe");
      return 1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    std::vector<char*> cargv;
    for (auto& s : cmd) cargv.push_back(s.data());
    cargv.push_back(nullptr);
    Proc p;
    p.rank = rank;
    p.host = host;
    int rc = posix_spawnp(&p.pid, cargv[0], &fa, nullptr, cargv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(err[1]);
    if (rc) {
      fprintf(stderr, "dipc-launch: cannot start %s: %s\n", cargv[0], strerror(rc));
      close(out[0]);
      close(err[0]);
      p.status = 127;
    } else {
      p.out = out[0];
      p.err = err[0];
    }
    procs.push_back(std::move(p));
  }

  int64_t deadline_ms = -1;
  auto now_ms = [] {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
  };
  if (timeout_s > 0) deadline_ms = now_ms() + static_cast<int64_t>(timeout_s * 1000);
  bool timed_out = false;
  int64_t kill_at = -1;
  auto signal_all = [&](int sig) {
    for (auto& p : procs)
      if (p.pid > 0 && p.status < 0) kill(p.pid, sig);
  };

  for (;;) {
    std::vector<pollfd> fds;
    std::vector<std::pair<Proc*, bool>> who;
    for (auto& p : procs) {
      if (p.out >= 0) {
        fds.push_back({p.out, POLLIN, 0});
        who.emplace_back(&p, false);
      }
      if (p.err >= 0) {
        fds.push_back({p.err, POLLIN, 0});
        who.emplace_back(&p, true);
      }
    }
    bool running = false;
    for (auto& p : procs) {
      if (p.pid > 0 && p.status < 0) {
        int st;
        if (waitpid(p.pid, &st, WNOHANG) == p.pid)
          p.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        else
          running = true;
      }
    }
    if (fds.empty() && !running) break;
    if (g_signal && kill_at < 0) {
      signal_all(g_signal);
      kill_at = now_ms() + 3000;
    }
    if (deadline_ms >= 0 && now_ms() >= deadline_ms && kill_at < 0) {
      timed_out = true;
      fprintf(stderr, "dipc-launch: timeout after %.0f s; stopping all ranks\n", timeout_s);
      signal_all(SIGTERM);
      kill_at = now_ms() + 3000;
    }
    if (kill_at >= 0 && now_ms() >= kill_at) signal_all(SIGKILL);
    int r = poll(fds.data(), fds.size(), fds.empty() ? 20 : 100);
    if (r < 0 && errno != EINTR) break;
    for (size_t k = 0; k < fds.size(); ++k) {
      if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      auto [p, is_err] = who[k];
      char buf[8192];
      ssize_t n = read(fds[k].fd, buf, sizeof buf);
      std::string& b = is_err ? p->err_buf : p->out_buf;
      if (n > 0) {
        b.append(buf, static_cast<size_t>(n));
        emit_lines(b, *p, is_err ? stderr : stdout, false);
      } else {
        emit_lines(b, *p, is_err ? stderr : stdout, true);
        close(fds[k].fd);
        (is_err ? p->err : p->out) = -1;
      }
    }
  }
  int exit_code = 0;
  for (auto& p : procs) {
    if (p.status == 0) continue;
    if (p.status > 128)
      fprintf(stderr, "dipc-launch: rank %d on %s was killed by signal %d\n", p.rank, p.host.c_str(), p.status - 128);
    else
      fprintf(stderr, "dipc-launch: rank %d on %s exited with status %d\n", p.rank, p.host.c_str(), p.status);
    if (!exit_code) exit_code = p.status;
  }
  if (timed_out) return 124;
  if (g_signal) return 128 + g_signal;
  return exit_code;
}
