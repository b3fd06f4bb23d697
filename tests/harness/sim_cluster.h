// A simulated dipc cluster for integration tests: `dipc-sim up` in a fresh directory, processes started on chosen
// nodes under libdipc.so, `dipc-sim down` at the end. Every wait is bounded.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace dipc::test {

class SimCluster {
 public:
  struct Options {
    int nodes = 3;
    bool loopback = false;
    std::string policy = "flag";
  };
  explicit SimCluster(Options o);  // throws std::runtime_error with the logs when the cluster does not come up
  SimCluster(const SimCluster&) = delete;
  SimCluster& operator=(const SimCluster&) = delete;
  ~SimCluster();

  bool namespaced() const { return namespaced_; }
  const std::string& dir() const { return dir_; }

  struct Result {
    int status = -1;  // exit code, 128+signal, or 124 on timeout
    std::string out, err;
  };
  struct Proc {
    pid_t pid = -1;
    int out = -1, err = -1;
    std::string out_buf, err_buf;
  };
  // Runs argv on node k (1-based). preload=false runs it without libdipc.so.
  Result run(int node, const std::vector<std::string>& argv, int timeout_s = 30, bool preload = true);
  Proc spawn(int node, const std::vector<std::string>& argv, bool preload = true);
  // Reads the process's stdout until `text` appears; false after timeout_s.
  bool wait_output(Proc& p, const std::string& text, int timeout_s = 20);
  Result wait(Proc& p, int timeout_s = 30);
  void kill(const Proc& p, int sig);

  void kill_daemon(int node);
  void start_daemon(int node);
  std::string daemon_log(int node) const;
  // A test program built from tests/progs.
  static std::string prog(const std::string& name);
  static std::string bin(const std::string& name);

 private:
  std::vector<std::string> node_argv(int node, const std::vector<std::string>& argv, bool preload) const;
  std::string dir_;
  bool namespaced_ = false;
};

}  // namespace dipc::test
