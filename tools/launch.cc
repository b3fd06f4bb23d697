// dipc-launch: runs a program's processes across the nodes of a dipc cluster.
//
//   dipc-launch [--sim DIR | --ssh | --slurm | --local] [--timeout SECS] [--no-preload]
//               [-H host,host,...] [-n N] PROG ARGS... [: [-H ...] [-n N] PROG2 ARGS...]...
//
// Ranks are numbered across the ':'-separated application contexts (MPMD); within one, processes go round-robin
// over its -H list (default: every node of the cluster; -n defaults to the number of hosts in -H). Each process gets
// LD_PRELOAD=libdipc.so (unless --no-preload), DIPC_RANK, DIPC_SIZE, DIPC_APP (context index) and DIPC_NODE, plus
// DIPC_SOCKET from the back-end where it has one. Every output line is prefixed with [node:rank] (stderr lines go to
// our stderr). On success nothing extra is printed; otherwise each failed rank is reported and the exit status is that
// of the first rank to fail (128+signal for a signal), 124 after --timeout. SIGINT/SIGTERM are forwarded to all ranks.
//
// Back-ends: --sim DIR (or $DIPC_SIM_DIR): `dipc-sim exec --dir DIR NODE -- ...`; Slurm (when $SLURM_JOB_ID is set):
// `srun --nodes=1 --ntasks=1 -w HOST --export=ALL,...`; --ssh (the default when -H is given otherwise):
// `ssh -o BatchMode=yes HOST 'cd CWD && exec env ... PROG ARGS'` ($DIPC_SSH, split on spaces, replaces "ssh":
// DIPC_SSH="ssh -F CONFIG"); --local (the default without -H): here.
#include <elf.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace {

constexpr int kGraceMs = 3000;        // SIGTERM -> SIGKILL after a timeout
constexpr int kSignalGraceMs = 5000;  // forwarded SIGINT/SIGTERM -> SIGKILL
constexpr int kDrainMs = 2000;        // output still open after every rank exited (a grandchild holds the pipe)
constexpr size_t kMaxLine = 1 << 20;  // a "line" longer than this is printed in pieces

struct Context {
  std::vector<std::string> hosts;
  int n = 0;
  std::vector<std::string> argv;
};

struct Stream {
  int fd = -1;
  std::string buf;
};

struct Proc {
  int rank = 0;
  size_t app = 0;
  std::string host;
  pid_t pid = -1;
  int pidfd = -1;
  Stream out, err;
  bool done = false;
  int status = 0;  // exit code, or 128+signal
  int signal = 0;
};

[[noreturn]] void fail(const std::string& msg, int code = 2) {
  fprintf(stderr, "dipc-launch: %s\n", msg.c_str());
  exit(code);
}

int64_t now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

std::string exe_dir() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  buf[n] = 0;
  std::string s(buf);
  return s.substr(0, s.rfind('/'));
}

bool is_file(const std::string& p) { return access(p.c_str(), F_OK) == 0; }

std::string real(const std::string& p) {
  char buf[PATH_MAX];
  return realpath(p.c_str(), buf) ? std::string(buf) : p;
}

// A statically linked ELF executable (no program interpreter): no LD_PRELOAD library reaches it. Searched in PATH
// as execvp would. False for anything else, or what cannot be read.
bool is_static_elf(const std::string& prog) {
  std::string path = prog;
  if (prog.find('/') == std::string::npos) {
    const char* p = getenv("PATH");
    std::string dirs = p ? p : "/usr/bin:/bin";
    for (size_t b = 0; b <= dirs.size();) {
      size_t e = dirs.find(':', b);
      if (e == std::string::npos) e = dirs.size();
      std::string cand = dirs.substr(b, e - b) + "/" + prog;
      if (access(cand.c_str(), X_OK) == 0) {
        path = cand;
        break;
      }
      b = e + 1;
    }
  }
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) return false;
  Elf64_Ehdr eh{};
  bool elf = fread(&eh, sizeof eh, 1, f) == 1 && memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0 &&
             eh.e_ident[EI_CLASS] == ELFCLASS64 && eh.e_phentsize == sizeof(Elf64_Phdr);
  bool interp = false;
  for (int i = 0; elf && i < eh.e_phnum; ++i) {
    Elf64_Phdr ph{};
    if (fseek(f, static_cast<long>(eh.e_phoff + static_cast<uint64_t>(i) * sizeof ph), SEEK_SET) != 0 ||
        fread(&ph, sizeof ph, 1, f) != 1) {
      elf = false;
      break;
    }
    if (ph.p_type == PT_INTERP) interp = true;
  }
  fclose(f);
  return elf && !interp;
}

// $DIPC_LIB (an explicit override), then <bin>/../lib/libdipc.so, then <bin>/../lib/<multiarch>/libdipc.so.
std::optional<std::string> find_lib() {
  if (const char* e = getenv("DIPC_LIB"); e && *e) return std::string(e);
  std::string lib = exe_dir() + "/../lib";
  if (is_file(lib + "/libdipc.so")) return real(lib + "/libdipc.so");
  glob_t g{};
  std::optional<std::string> found;
  if (glob((lib + "/*/libdipc.so").c_str(), 0, nullptr, &g) == 0 && g.gl_pathc > 0) found = real(g.gl_pathv[0]);
  globfree(&g);
  return found;
}

// dipc-sim next to us, else on PATH.
std::string find_sim() {
  std::string s = exe_dir() + "/dipc-sim";
  return access(s.c_str(), X_OK) == 0 ? s : "dipc-sim";
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

// Runs argv and returns its stdout (for scontrol); nullopt when it cannot run or fails.
std::optional<std::string> capture(std::vector<std::string> argv) {
  int p[2];
  if (pipe2(p, O_CLOEXEC)) return std::nullopt;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, p[1], 1);
  std::vector<char*> c;
  for (auto& s : argv) c.push_back(s.data());
  c.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawnp(&pid, c[0], &fa, nullptr, c.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(p[1]);
  std::string out;
  if (rc == 0) {
    char buf[4096];
    ssize_t n;
    while ((n = read(p[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
      if (n > 0) out.append(buf, static_cast<size_t>(n));
  }
  close(p[0]);
  if (rc) return std::nullopt;
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st)) return std::nullopt;
  return out;
}

void write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // our output is gone (EPIPE): drop it, the ranks still run to the end
    off += static_cast<size_t>(n);
  }
}

// Prints the complete lines of s (all of it at EOF) with the prefix, in one write: lines never interleave.
void emit(Stream& s, const std::string& prefix, int to, bool eof) {
  std::string chunk;
  size_t start = 0, nl;
  while ((nl = s.buf.find('\n', start)) != std::string::npos) {
    chunk += prefix;
    chunk.append(s.buf, start, nl + 1 - start);
    start = nl + 1;
  }
  s.buf.erase(0, start);
  if (!s.buf.empty() && (eof || s.buf.size() > kMaxLine)) {
    chunk += prefix + s.buf + "\n";
    s.buf.clear();
  }
  if (!chunk.empty()) write_all(to, chunk);
}

volatile sig_atomic_t g_signal = 0;        // the last signal received
volatile sig_atomic_t g_signal_count = 0;  // how many
int g_sigpipe[2] = {-1, -1};
void on_signal(int sig) {
  g_signal = sig;
  g_signal_count = g_signal_count + 1;
  int saved = errno;
  char c = static_cast<char>(sig);
  [[maybe_unused]] ssize_t r = write(g_sigpipe[1], &c, 1);
  errno = saved;
}

const char* usage_text =
    "usage: dipc-launch [--sim DIR | --ssh | --slurm | --local] [--timeout SECS] [--no-preload]\n"
    "                   [-H host,...] [-n N] PROG ARGS... [: [-H host,...] [-n N] PROG ARGS...]...\n";

// Parses one application context's "[-H hosts] [-n N] PROG ARGS..." with CLI11; the program and its arguments are
// whatever follows the first non-option.
void parse_context(CLI::App& app, std::vector<std::string> args, Context& c) {
  std::string hosts;
  app.add_option("-H,--host", hosts, "comma-separated hosts (nodes); default: all nodes of the cluster");
  app.add_option("-n,--np", c.n, "number of processes; default: the number of hosts")->check(CLI::Range(1, 1 << 20));
  app.prefix_command();
  std::reverse(args.begin(), args.end());  // CLI11 parses a reversed vector
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    exit(app.exit(e) ? 2 : 0);
  }
  if (!hosts.empty()) c.hosts = split(hosts, ',');
  c.argv = app.remaining();
  if (!c.argv.empty() && c.argv[0] == "--") c.argv.erase(c.argv.begin());
  if (c.argv.empty()) fail(std::string("an application context has no program\n") + usage_text);
}

}  // namespace

int main(int argc, char** argv) {
  // Split the command line at ':' into application contexts; the first one also carries the global options.
  std::vector<std::vector<std::string>> segs(1);
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == ":")
      segs.emplace_back();
    else
      segs.back().push_back(argv[i]);
  }

  std::string sim_dir;
  bool ssh = false, slurm = false, local = false, no_preload = false, seccomp = false;
  double timeout_s = 0;
  std::vector<Context> ctxs(segs.size());
  {
    CLI::App app{"dipc-launch: run a program's processes across the nodes of a dipc cluster (MPMD with ':')", "dipc-launch"};
    app.add_option("--sim", sim_dir, "place processes on the simulated cluster in DIR (default $DIPC_SIM_DIR)");
    app.add_flag("--ssh", ssh, "start processes with ssh -o BatchMode=yes HOST ($DIPC_SSH replaces ssh)");
    app.add_flag("--slurm", slurm, "start processes with srun -w HOST (default when $SLURM_JOB_ID is set)");
    app.add_flag("--local", local, "run every process on this machine");
    app.add_option("--timeout", timeout_s, "kill everything after SECS seconds and exit 124")
        ->check(CLI::NonNegativeNumber);
    app.add_flag("--no-preload", no_preload, "do not set LD_PRELOAD=libdipc.so");
    app.add_flag("--seccomp", seccomp,
                 "also intercept raw SysV system calls (DIPC_SECCOMP=1: a seccomp filter; README, Raw system calls)");
    app.footer(std::string(usage_text) +
        "\nEach process gets DIPC_RANK, DIPC_SIZE, DIPC_APP, DIPC_NODE and LD_PRELOAD=libdipc.so ($DIPC_LIB, else found\n"
        "next to dipc-launch); its output lines are prefixed [node:rank]. Exit status: the first failing rank's\n"
        "(128+signal), 124 after --timeout.");
    parse_context(app, segs[0], ctxs[0]);
    for (size_t i = 1; i < segs.size(); ++i) {
      CLI::App sub{"application context", "dipc-launch ... :"};
      parse_context(sub, segs[i], ctxs[i]);
    }
  }
  if (static_cast<int>(ssh) + slurm + local + !sim_dir.empty() > 1) fail("choose one of --sim, --ssh, --slurm, --local");
  if (seccomp && no_preload) fail("--seccomp needs the preload (it installs the filter)");

  // The back-end.
  enum class Backend { kSim, kSsh, kSlurm, kLocal } backend;
  bool any_hosts = std::any_of(ctxs.begin(), ctxs.end(), [](const Context& c) { return !c.hosts.empty(); });
  if (!sim_dir.empty()) backend = Backend::kSim;
  else if (ssh) backend = Backend::kSsh;
  else if (slurm) backend = Backend::kSlurm;
  else if (local) backend = Backend::kLocal;
  else if (const char* d = getenv("DIPC_SIM_DIR"); d && *d) {
    backend = Backend::kSim;
    sim_dir = d;
  } else if (getenv("SLURM_JOB_ID")) backend = Backend::kSlurm;
  else backend = any_hosts ? Backend::kSsh : Backend::kLocal;

  // All hosts of the cluster: the default -H.
  std::vector<std::string> all_hosts;
  if (backend == Backend::kSim) {
    std::ifstream f(sim_dir + "/nodes");
    std::string line;
    while (std::getline(f, line)) {
      std::istringstream ls(line);
      std::string name;
      if (ls >> name) all_hosts.push_back(name);
    }
    if (all_hosts.empty()) fail("no simulated cluster in " + sim_dir + " (dipc-sim up --dir " + sim_dir + ")");
  } else if (backend == Backend::kSlurm) {
    if (!any_hosts || std::any_of(ctxs.begin(), ctxs.end(), [](const Context& c) { return c.hosts.empty(); })) {
      const char* nl = getenv("SLURM_JOB_NODELIST");
      if (!nl) fail("SLURM_JOB_NODELIST is not set; give -H");
      auto out = capture({"scontrol", "show", "hostnames", nl});
      if (!out) fail("scontrol show hostnames failed; give -H");
      all_hosts = split(*out, '\n');
    }
  } else if (backend == Backend::kLocal) {
    char h[HOST_NAME_MAX + 1] = "localhost";
    gethostname(h, sizeof h);
    h[HOST_NAME_MAX] = 0;
    all_hosts = {split(h, '.').empty() ? std::string("localhost") : split(h, '.')[0]};
  }

  // Placement: ranks in order across contexts, round-robin over each context's hosts.
  struct Slot {
    size_t app;
    std::string host;
  };
  std::vector<Slot> slots;
  for (size_t ci = 0; ci < ctxs.size(); ++ci) {
    Context& c = ctxs[ci];
    if (c.hosts.empty()) c.hosts = all_hosts;
    if (c.hosts.empty()) fail("no hosts for application context " + std::to_string(ci) +
                                  ": give -H (with -H elsewhere the default back-end is ssh; --local runs here)");
    if (backend == Backend::kSim)  // node numbers become names; unknown nodes are an error before anything starts
      for (auto& h : c.hosts) {
        if (!h.empty() && std::all_of(h.begin(), h.end(), ::isdigit)) {
          size_t k = std::stoul(h);
          if (k >= 1 && k <= all_hosts.size()) h = all_hosts[k - 1];
        }
        if (std::find(all_hosts.begin(), all_hosts.end(), h) == all_hosts.end())
          fail("no node '" + h + "' in the simulated cluster " + sim_dir);
      }
    if (c.n == 0) c.n = static_cast<int>(c.hosts.size());
    for (int r = 0; r < c.n; ++r) slots.push_back({ci, c.hosts[static_cast<size_t>(r) % c.hosts.size()]});
  }
  const int size = static_cast<int>(slots.size());

  std::string lib;
  if (!no_preload) {
    auto l = find_lib();
    if (!l) fail("cannot find libdipc.so next to " + exe_dir() + " (set DIPC_LIB, or --no-preload)");
    lib = *l;
    if (const char* old = getenv("LD_PRELOAD"); old && *old) lib += std::string(":") + old;
  }
  const std::string sim = find_sim();
  char cwd_buf[PATH_MAX];
  const std::string cwd = getcwd(cwd_buf, sizeof cwd_buf) ? cwd_buf : "/";

  // Signals: forwarded to the ranks; the handler only records and wakes the poll loop.
  if (pipe2(g_sigpipe, O_CLOEXEC | O_NONBLOCK)) fail("pipe: " + std::string(strerror(errno)), 1);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Rank 0 reads our stdin when it is not a terminal (a rank in its own process group must not read the tty).
  const bool stdin_to_rank0 = !isatty(0);

  std::vector<Proc> procs(static_cast<size_t>(size));
  std::vector<int> fail_order;  // ranks in the order they failed
  for (int rank = 0; rank < size; ++rank) {
    Proc& p = procs[static_cast<size_t>(rank)];
    p.rank = rank;
    p.app = slots[static_cast<size_t>(rank)].app;
    p.host = slots[static_cast<size_t>(rank)].host;
    auto prog = ctxs[p.app].argv;
    // --seccomp and a static binary: dipc-exec carries its SysV system calls (README, Raw system calls); a dynamic
    // one gets the preload's own filter (DIPC_SECCOMP=1), which must not be set for dipc-exec (its trap would win).
    bool static_prog = seccomp && !prog.empty() && is_static_elf(prog[0]);
    if (static_prog) prog.insert(prog.begin(), exe_dir() + "/dipc-exec");
    std::vector<std::string> env = {"DIPC_RANK=" + std::to_string(rank), "DIPC_SIZE=" + std::to_string(size),
                                    "DIPC_APP=" + std::to_string(p.app), "DIPC_NODE=" + p.host};
    if (!lib.empty()) env.push_back("LD_PRELOAD=" + lib);
    if (seccomp && !static_prog) env.push_back("DIPC_SECCOMP=1");
    std::vector<std::string> cmd;
    switch (backend) {
      case Backend::kSim:  // dipc-sim sets DIPC_SOCKET for the node
        cmd = {sim, "exec", "--dir", sim_dir, p.host, "--", "env"};
        cmd.insert(cmd.end(), env.begin(), env.end());
        cmd.insert(cmd.end(), prog.begin(), prog.end());
        break;
      case Backend::kSsh: {
        if (const char* s = getenv("DIPC_SOCKET")) env.push_back(std::string("DIPC_SOCKET=") + s);
        std::string remote = "cd " + shell_quote(cwd) + " && exec env";
        for (auto& e : env) remote += " " + shell_quote(e);
        for (auto& a : prog) remote += " " + shell_quote(a);
        // $DIPC_SSH replaces "ssh" (a command line split on spaces), as OpenMPI's plm_rsh_agent: "ssh -F CONFIG".
        const char* agent = getenv("DIPC_SSH");
        cmd = split(agent && *agent ? agent : "ssh", ' ');
        if (cmd.empty()) cmd = {"ssh"};
        cmd.insert(cmd.end(), {"-o", "BatchMode=yes", p.host, remote});
        break;
      }
      case Backend::kSlurm: {  // --export=ALL carries DIPC_SOCKET if set
        std::string exp = "--export=ALL";
        for (auto& e : env) exp += "," + e;
        cmd = {"srun", "--nodes=1", "--ntasks=1", "-w", p.host, exp};
        cmd.insert(cmd.end(), prog.begin(), prog.end());
        break;
      }
      case Backend::kLocal:
        cmd = {"env"};
        cmd.insert(cmd.end(), env.begin(), env.end());
        cmd.insert(cmd.end(), prog.begin(), prog.end());
        break;
    }
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) fail("pipe: " + std::string(strerror(errno)), 1);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (!(rank == 0 && stdin_to_rank0)) posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, dfl;
    sigemptyset(&none);
    sigemptyset(&dfl);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) sigaddset(&dfl, s);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setpgroup(&attr, 0);  // its own group: signals reach the rank and whatever it started
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    std::vector<char*> c;
    for (auto& s : cmd) c.push_back(s.data());
    c.push_back(nullptr);
    int rc = posix_spawnp(&p.pid, c[0], &fa, &attr, c.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(out[1]);
    close(err[1]);
    if (rc) {
      fprintf(stderr, "dipc-launch: cannot start %s for rank %d: %s\n", c[0], rank, strerror(rc));
      close(out[0]);
      close(err[0]);
      p.pid = -1;
      p.done = true;
      p.status = 127;
      fail_order.push_back(rank);
      continue;
    }
    p.out.fd = out[0];
    p.err.fd = err[0];
    p.pidfd = static_cast<int>(syscall(SYS_pidfd_open, p.pid, 0));  // -1 on old kernels: we poll waitpid instead
  }

  const int64_t deadline = timeout_s > 0 ? now_ms() + static_cast<int64_t>(timeout_s * 1000) : -1;
  int64_t kill_at = -1, drain_until = -1;
  bool timed_out = false;
  int forwarded = 0;  // the signal forwarded to the ranks
  sig_atomic_t handled_signals = 0;
  auto signal_all = [&](int sig) {
    for (auto& p : procs)
      if (p.pid > 0 && !p.done) {
        if (kill(-p.pid, sig) != 0) kill(p.pid, sig);
      }
  };
  auto reap = [&](Proc& p) {
    int st;
    pid_t r;
    while ((r = waitpid(p.pid, &st, WNOHANG)) < 0 && errno == EINTR) {
    }
    if (r != p.pid) return;
    p.done = true;
    if (WIFSIGNALED(st)) {
      p.signal = WTERMSIG(st);
      p.status = 128 + p.signal;
    } else {
      p.status = WEXITSTATUS(st);
    }
    if (p.status != 0) fail_order.push_back(p.rank);
    if (p.pidfd >= 0) close(p.pidfd);
    p.pidfd = -1;
  };

  for (;;) {
    for (auto& p : procs)
      if (!p.done) reap(p);
    bool running = std::any_of(procs.begin(), procs.end(), [](const Proc& p) { return !p.done; });
    bool open = std::any_of(procs.begin(), procs.end(), [](const Proc& p) { return p.out.fd >= 0 || p.err.fd >= 0; });
    if (!running && !open) break;
    int64_t now = now_ms();
    if (!running && drain_until < 0) drain_until = now + kDrainMs;
    if (drain_until >= 0 && now >= drain_until) break;  // a grandchild keeps the pipe open: stop reading

    if (g_signal_count > handled_signals) {
      if (handled_signals == 0) {
        forwarded = g_signal;
        signal_all(forwarded);
        if (kill_at < 0 || kill_at > now + kSignalGraceMs) kill_at = now + kSignalGraceMs;
      } else {  // a second signal: no more patience
        signal_all(SIGKILL);
      }
      handled_signals = g_signal_count;
    }
    if (deadline >= 0 && now >= deadline && !timed_out) {
      timed_out = true;
      fprintf(stderr, "dipc-launch: timeout after %g s; stopping all ranks\n", timeout_s);
      signal_all(SIGTERM);
      kill_at = now + kGraceMs;
    }
    if (kill_at >= 0 && now >= kill_at) {
      signal_all(SIGKILL);
      kill_at = -1;
    }

    std::vector<pollfd> fds;
    struct Who {
      Proc* p;
      Stream* s;
      bool is_err;
      bool is_pidfd;
    };
    std::vector<Who> who;
    fds.push_back({g_sigpipe[0], POLLIN, 0});
    who.push_back({nullptr, nullptr, false, false});
    bool need_tick = false;
    for (auto& p : procs) {
      if (p.out.fd >= 0) {
        fds.push_back({p.out.fd, POLLIN, 0});
        who.push_back({&p, &p.out, false, false});
      }
      if (p.err.fd >= 0) {
        fds.push_back({p.err.fd, POLLIN, 0});
        who.push_back({&p, &p.err, true, false});
      }
      if (!p.done) {
        if (p.pidfd >= 0) {
          fds.push_back({p.pidfd, POLLIN, 0});
          who.push_back({&p, nullptr, false, true});
        } else {
          need_tick = true;
        }
      }
    }
    int64_t wake = -1;
    for (int64_t t : {deadline >= 0 && !timed_out ? deadline : -1, kill_at, drain_until})
      if (t >= 0 && (wake < 0 || t < wake)) wake = t;
    int wait_ms = wake < 0 ? -1 : static_cast<int>(std::max<int64_t>(0, wake - now));
    if (need_tick && (wait_ms < 0 || wait_ms > 100)) wait_ms = 100;  // no pidfd: poll waitpid
    int r = poll(fds.data(), fds.size(), wait_ms);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail("poll: " + std::string(strerror(errno)), 1);
    }
    for (size_t k = 0; k < fds.size(); ++k) {
      if (!fds[k].revents) continue;
      const Who& w = who[k];
      if (!w.p) {  // the signal pipe
        char b[64];
        while (read(g_sigpipe[0], b, sizeof b) > 0) {
        }
        continue;
      }
      if (w.is_pidfd) continue;  // reaped at the top of the loop
      char buf[65536];
      ssize_t n = read(w.s->fd, buf, sizeof buf);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      std::string prefix = "[" + w.p->host + ":" + std::to_string(w.p->rank) + "] ";
      if (n > 0) {
        w.s->buf.append(buf, static_cast<size_t>(n));
        emit(*w.s, prefix, w.is_err ? 2 : 1, false);
      } else {
        emit(*w.s, prefix, w.is_err ? 2 : 1, true);
        close(w.s->fd);
        w.s->fd = -1;
      }
    }
  }
  for (auto& p : procs) {  // output left by a drain cut short
    std::string prefix = "[" + p.host + ":" + std::to_string(p.rank) + "] ";
    for (auto [s, to] : {std::pair{&p.out, 1}, std::pair{&p.err, 2}}) {
      emit(*s, prefix, to, true);
      if (s->fd >= 0) close(s->fd);
    }
  }

  int exit_code = 0;
  for (int rank : fail_order) {
    const Proc& p = procs[static_cast<size_t>(rank)];
    if (p.signal)
      fprintf(stderr, "dipc-launch: rank %d on %s was killed by signal %d (SIG%s)\n", p.rank, p.host.c_str(), p.signal,
              sigabbrev_np(p.signal) ? sigabbrev_np(p.signal) : "?");
    else
      fprintf(stderr, "dipc-launch: rank %d on %s exited with status %d\n", p.rank, p.host.c_str(), p.status);
    if (!exit_code) exit_code = p.status;
  }
  if (timed_out) return 124;
  if (forwarded && !exit_code) return 128 + forwarded;
  return exit_code;
}
