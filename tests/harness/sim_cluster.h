// A simulated dipc cluster for integration tests: `dipc-sim up` into a fresh directory under /tmp, processes started
// on chosen nodes (under libdipc.so unless told otherwise), `dipc-sim down` at the end. Every wait is bounded.
//
//   dipc::test::SimCluster c({.nodes = 3});
//   auto r = c.run(1, {SimCluster::prog("ipcop"), "semget:0:1:creat+dipc+0666"});   // r.status, r.out, r.err
//   auto p = c.spawn(2, {SimCluster::prog("ipcop"), "hold"}, {"FOO=1"});
//   c.wait_output(p, "held");  c.kill(p, SIGKILL);  c.wait(p, 10);
//
// Programs run with DIPC_SOCKET, DIPC_NODE, DIPC_NODE_ADDR and DIPC_SIM_DIR set for their node. As root the nodes
// are separate network + IPC + mount namespaces (namespaced() == true); otherwise they share this machine.
#pragma once

#include <sys/types.h>

#include <concepts>
#include <string>
#include <vector>

namespace dipc::test {

class SimCluster {
 public:
  struct Options {
    int nodes = 3;
    bool loopback = false;        // force the loopback fallback even as root
    std::string policy = "flag";  // flag | all
    std::string extra_env = {};   // "VAR=VALUE VAR2=VALUE2": extra environment for the daemons (kept on restart)
    std::string log_level = "info";
    int up_timeout_s = 120;       // bound on `dipc-sim up`
    std::vector<std::string> up_args = {};  // more `dipc-sim up` arguments: {"--dsm-block", "65536"}
    // tcp | verbs | auto; empty: $DIPC_SIM_TRANSPORT, else tcp (the `verbs` ctest label runs suites with verbs)
    std::string transport = {};
  };
  explicit SimCluster(Options o);  // throws std::runtime_error with dipc-sim's output (log tails) on failure
  SimCluster(const SimCluster&) = delete;
  SimCluster& operator=(const SimCluster&) = delete;
  ~SimCluster();  // dipc-sim down (kills whatever still runs on the nodes), removes the directory

  bool namespaced() const { return namespaced_; }
  const std::string& dir() const { return dir_; }
  int nodes() const { return nodes_; }

  struct Result {
    int status = -1;  // exit code, 128+signal, or 124 when the timeout killed it
    std::string out, err;
  };

  // A background process. Move-only; if it is still running when destroyed, its process group is SIGKILLed and
  // reaped. pid is the program's own pid (dipc-sim exec execs all the way down) and leads its own process group.
  struct Proc {
    pid_t pid = -1;
    int out_fd = -1, err_fd = -1;
    std::string out_buf, err_buf;  // what has been read so far
    Proc() = default;
    Proc(Proc&& o) noexcept;
    Proc& operator=(Proc&& o) noexcept;
    Proc(const Proc&) = delete;
    Proc& operator=(const Proc&) = delete;
    ~Proc();
  };

  // Runs argv on node k (1-based) under the preload with extra env ("VAR=VALUE"), bounded by timeout_s: on timeout
  // the process group is killed and status is 124.
  Result run(int node, std::vector<std::string> argv, int timeout_s = 30, std::vector<std::string> env = {});
  // The same with the preload switched off or on explicitly: run(1, {"dipc", "status"}, 10, false).
  template <std::same_as<bool> B>
  Result run(int node, std::vector<std::string> argv, int timeout_s, B preload, std::vector<std::string> env = {}) {
    return run_impl(node, std::move(argv), timeout_s, preload, std::move(env));
  }

  // Starts argv on node k in the background (its own process group) with stdout/stderr on pipes.
  Proc spawn(int node, std::vector<std::string> argv, std::vector<std::string> env = {});
  template <std::same_as<bool> B>
  Proc spawn(int node, std::vector<std::string> argv, B preload, std::vector<std::string> env = {}) {
    return spawn_impl(node, std::move(argv), preload, std::move(env));
  }

  // Waits (bounded) for p to exit while collecting its output; kills its group on timeout (status 124).
  Result wait(Proc& p, int timeout_s = 30);
  // Reads p's stdout until it contains text; false after timeout_s or at EOF without it.
  bool wait_output(Proc& p, const std::string& text, int timeout_s = 20);
  // Collects whatever p has written so far without blocking; returns its stdout so far.
  const std::string& output(Proc& p);
  // Sends sig to the program (only the program, not its process group).
  void kill(const Proc& p, int sig);
  // Sends sig to the program's whole process group.
  void kill_group(const Proc& p, int sig);

  // dipc-sim kill-daemon / start-daemon. start_daemon waits (bounded) until the daemon answers and all its peers are
  // connected; false (with the log tail in last_error()) otherwise.
  bool kill_daemon(int node);
  bool start_daemon(int node);
  std::string daemon_log(int node) const;
  // The pid of node k's running dipcd (dipc-sim's nodeK.dipcd.pid); -1 when there is none.
  pid_t daemon_pid(int node) const;
  // The cluster's configuration (cluster.toml), and a node's own one: from its next daemon start on, node k reads
  // `toml` instead (dipc-sim's DIR/nodeK.toml), e.g. with another address for one peer.
  std::string config() const;
  void set_node_config(int node, const std::string& toml);
  const std::string& last_error() const { return last_error_; }

  // Paths in the build tree: a binary of bin/ (dipcd, dipc, dipc-launch, dipc-sim, ...) or a test program.
  static std::string bin(const std::string& name);
  static std::string prog(const std::string& name);
  // Runs the `dipc` tool on a node without the preload: status(1) == dipc status on node1.
  Result dipc(int node, std::vector<std::string> args, int timeout_s = 15);

 private:
  Result run_impl(int node, std::vector<std::string> argv, int timeout_s, bool preload, std::vector<std::string> env);
  Proc spawn_impl(int node, std::vector<std::string> argv, bool preload, std::vector<std::string> env);
  std::vector<std::string> node_argv(int node, const std::vector<std::string>& argv, bool preload,
                                     const std::vector<std::string>& env) const;
  std::string top_;  // the mkdtemp directory
  std::string dir_;  // the cluster directory inside it
  int nodes_ = 0;
  bool namespaced_ = false;
  std::string last_error_;
};

}  // namespace dipc::test
