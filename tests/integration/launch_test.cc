// Integration test of dipc-launch's ssh back-end with a real sshd: node2 of a simulated cluster runs its own sshd
// (in node2's network, IPC and mount namespaces, so every session it starts lives on node2), and dipc-launch on
// node1 starts ranks there through `ssh` as given by $DIPC_SSH ("ssh -F <a config of this test>"). The ranks must
// get the preload and the daemon socket: an IPC_DIPC queue made by a rank started through ssh is hosted by node2's
// daemon, absent from both nodes' kernels, and usable from node1. A failing rank's exit status comes back.
//
// Every wait is bounded and waits on a condition (sshd saying it listens, process exit); none sleeps.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/harness/sim_cluster.h"
#include "tests/integration/output.h"

namespace dipc::test {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kSshd = "/usr/sbin/sshd";
constexpr int kSshPort = 2222;

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.close();
  std::filesystem::permissions(path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

// Node k's address from DIR/nodes ("NAME HOLDER SOCKET ADDRESS" per line).
std::string node_addr(const std::string& dir, int node) {
  std::istringstream is(slurp(dir + "/nodes"));
  std::string line;
  for (int k = 1; std::getline(is, line); ++k)
    if (k == node) {
      std::istringstream ls(line);
      std::string name, holder, sock, addr;
      ls >> name >> holder >> sock >> addr;
      return addr;
    }
  return "";
}

// Reads p's stderr until it contains text; false after timeout_s or when p closes its output without it.
bool wait_stderr(SimCluster::Proc& p, const std::string& text, int timeout_s) {
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  while (p.err_buf.find(text) == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0 || p.err_fd < 0) return false;
    pollfd pf{p.err_fd, POLLIN, 0};
    if (poll(&pf, 1, static_cast<int>(left)) <= 0) continue;
    char buf[4096];
    ssize_t n = read(p.err_fd, buf, sizeof buf);
    if (n > 0) {
      p.err_buf.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      close(p.err_fd);
      p.err_fd = -1;
    }
  }
  return true;
}

// A scratch directory for keys and configs, removed at the end.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/dipc-ssh-test.XXXXXX";
    if (mkdtemp(tmpl)) path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

TEST(LaunchSsh, RanksStartedThroughSshOnAnotherNodeGetThePreloadAndTheirExitStatusComesBack) {
  if (access(kSshd, X_OK) != 0) GTEST_SKIP() << kSshd << " is not installed (apt-get install openssh-server)";
  // sshd without PAM refuses a key login to an account whose password is locked ('!' in /etc/shadow).
  {
    std::ifstream shadow("/etc/shadow");
    std::string line;
    while (std::getline(shadow, line))
      if (line.rfind("root:!", 0) == 0) GTEST_SKIP() << "root's account is locked: sshd (UsePAM no) would refuse it";
  }
  SimCluster::Options opt;
  opt.nodes = 2;
  SimCluster c(opt);
  if (!c.namespaced()) GTEST_SKIP() << "needs root for network, IPC and mount namespaces";
  const std::string addr2 = node_addr(c.dir(), 2);
  ASSERT_FALSE(addr2.empty()) << slurp(c.dir() + "/nodes");

  // Keys and configs for an sshd of our own on node2:2222 and a client that trusts whatever answers there.
  TempDir tmp;
  ASSERT_FALSE(tmp.path.empty());
  const std::string d = tmp.path, host_key = d + "/host_ed25519", client_key = d + "/client_ed25519",
                    sshd_cfg = d + "/sshd_config", ssh_cfg = d + "/ssh_config";
  for (const auto& key : {host_key, client_key}) {
    auto r = c.run(1, {"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dipc-test", "-f", key}, 30, false);
    ASSERT_EQ(r.status, 0) << "ssh-keygen: " << r.out << r.err;
  }
  write_file(d + "/authorized_keys", slurp(client_key + ".pub"));
  write_file(sshd_cfg, "Port " + std::to_string(kSshPort) + "\nListenAddress " + addr2 + "\nHostKey " + host_key +
                           "\nAuthorizedKeysFile " + d + "/authorized_keys\nPermitRootLogin prohibit-password\n"
                           "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                           "StrictModes no\nUsePAM no\nPidFile " + d + "/sshd.pid\nPrintMotd no\nPrintLastLog no\n"
                           "LogLevel INFO\n");
  write_file(ssh_cfg, "Host *\n  IdentityFile " + client_key + "\n  IdentitiesOnly yes\n  Port " +
                          std::to_string(kSshPort) + "\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                          "  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 10\n");
  // sshd insists on its privilege separation directory (a service manager makes it; nothing has here).
  auto mk = c.run(2, {"mkdir", "-p", "-m", "0755", "/run/sshd"}, 10, false);
  ASSERT_EQ(mk.status, 0) << mk.err;

  // sshd in node2's namespaces, in the foreground, logging to stderr; it says when it listens.
  SimCluster::Proc sshd = c.spawn(2, {kSshd, "-D", "-e", "-f", sshd_cfg}, false);
  ASSERT_TRUE(wait_stderr(sshd, "Server listening on " + addr2 + " port " + std::to_string(kSshPort), 20))
      << "sshd did not start listening:\n" << sshd.err_buf;
  {  // The client setup works at all (a clearer failure than a launch that cannot log in).
    auto r = c.run(1, {"ssh", "-F", ssh_cfg, "-o", "BatchMode=yes", addr2, "true"}, 30, false);
    ASSERT_EQ(r.status, 0) << "ssh to node2 failed: " << r.out << r.err << "\nsshd:\n" << c.output(sshd) << sshd.err_buf;
  }

  const std::string launch = SimCluster::bin("dipc-launch"), ipcop = SimCluster::prog("ipcop");
  const std::vector<std::string> ssh_env = {"DIPC_SSH=ssh -F " + ssh_cfg};
  const std::string prefix = "[" + addr2 + ":0] ";
  const std::string key = "0x7e5a0001";

  // 1. A rank on node2 through ssh: dipc's environment reached it, and its IPC_DIPC queue went to node2's daemon.
  {
    auto r = c.run(1,
                   {launch, "--ssh", "--timeout", "60", "-H", addr2, "sh", "-c",
                    "echo \"env rank=$DIPC_RANK size=$DIPC_SIZE node=$DIPC_NODE sock=$DIPC_SOCKET\"; "
                    "case \"$LD_PRELOAD\" in *libdipc.so*) echo preload=yes;; *) echo preload=no;; esac; exec \"$0\" "
                    "\"$@\"",
                    ipcop, "msgget:" + key + ":creat+excl+dipc+0666", "msgsnd:@:9:via-ssh:0"},
                   90, false, ssh_env);
    ASSERT_EQ(r.status, 0) << r.out << r.err << "\nsshd:\n" << sshd.err_buf;
    EXPECT_NE(r.out.find(prefix + "env rank=0 size=1 node=" + addr2 + " sock=@dipc\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(prefix + "preload=yes\n"), std::string::npos) << r.out;
    std::string id = field(r.out, "msgget");
    EXPECT_TRUE(!id.empty() && id[0] != '-') << r.out << r.err;
    EXPECT_NE(r.out.find(prefix + "msgget=" + id + "\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(prefix + "msgsnd=0\n"), std::string::npos) << r.out;
    // Every stdout line carries the prefix.
    std::istringstream is(r.out);
    for (std::string line; std::getline(is, line);) EXPECT_EQ(line.rfind(prefix, 0), 0u) << line;
  }
  // Its home is node2's daemon (the socket and preload worked on node2), not node1's, and no kernel has it.
  const std::string key_text = "key " + key;
  {
    auto s2 = c.dipc(2, {"status"});
    ASSERT_EQ(s2.status, 0) << s2.err;
    EXPECT_NE(s2.out.find(key_text), std::string::npos) << s2.out;
    auto s1 = c.dipc(1, {"status"});
    EXPECT_EQ(s1.out.find(key_text), std::string::npos) << s1.out;
    for (int node : {1, 2}) {
      auto k = c.run(node, {ipcop, "msgget:" + key + ":0666"}, 30, false);
      EXPECT_EQ(field(k.out, "msgget"), "-1 ENOENT") << "node" << node << "'s kernel: " << k.out << k.err;
    }
  }
  // Cluster-wide: node1, under the preload, finds the queue and takes the message sent by the ssh-launched rank.
  {
    auto r = c.run(1, {ipcop, "msgget:" + key + ":dipc+0666", "msgrcv:@:0:100:nowait", "msgrm:@"}, 30);
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(field(r.out, "msgrcv"), "7 type=9 text=via-ssh") << r.out << r.err;
    EXPECT_EQ(field(r.out, "msgrm"), "0") << r.out << r.err;
  }

  // 2. Two ranks over ssh on the same host, each prefixed with its own rank.
  {
    auto r = c.run(1, {launch, "--ssh", "--timeout", "60", "-H", addr2, "-n", "2", ipcop, "print:hello"}, 90, false,
                   ssh_env);
    EXPECT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_NE(r.out.find(prefix + "hello\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("[" + addr2 + ":1] hello\n"), std::string::npos) << r.out;
  }

  // 3. A failing remote rank: its exit status is dipc-launch's, and the failure is reported.
  {
    auto r = c.run(1, {launch, "--ssh", "--timeout", "60", "-H", addr2, "sh", "-c", "echo bye; exit 7"}, 90, false,
                   ssh_env);
    EXPECT_EQ(r.status, 7) << r.out << r.err;
    EXPECT_NE(r.out.find(prefix + "bye\n"), std::string::npos) << r.out;
    EXPECT_NE(r.err.find("rank 0 on " + addr2 + " exited with status 7"), std::string::npos) << r.err;
  }

  // Stop sshd (its process group is SIGKILLed anyway if this does not finish).
  c.kill(sshd, SIGTERM);
  c.wait(sshd, 10);
}

}  // namespace
}  // namespace dipc::test
