// dipcd's [cluster] sched and bind (daemon/sched.cc): what an operator configures is what the running daemon gets,
// the default takes real-time priority when the daemon may, and an impossible setting stops the start with a message
// that names it (never a daemon silently running with something else).
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <string>

#include "tests/harness/sim_cluster.h"
#include "tests/integration/output.h"

namespace dipc::test {
namespace {

pid_t daemon_pid(SimCluster& c, int node) {
  return static_cast<pid_t>(std::stol("0" + slurp(c.dir() + "/node" + std::to_string(node) + ".dipcd.pid")));
}

// Rewrites `key = "..."` in the cluster's configuration (dipc-sim start-daemon reads it).
void set_cluster_key(SimCluster& c, const std::string& key, const std::string& value) {
  std::string path = c.dir() + "/cluster.toml";
  std::string t = std::regex_replace(slurp(path), std::regex(key + " = \"[^\"]*\""), key + " = \"" + value + "\"");
  std::ofstream(path) << t;
}

TEST(DaemonSched, DefaultIsRealTimeWhenAllowedExplicitSettingsApplyAndAnImpossibleBindStopsTheStart) {
  SimCluster c({.nodes = 1});
  bool may_raise = geteuid() == 0;  // root holds CAP_SYS_NICE; without it "auto" keeps the normal policy
  pid_t pid = daemon_pid(c, 1);
  ASSERT_GT(pid, 0);
  sched_param p{};
  ASSERT_EQ(sched_getparam(pid, &p), 0);
  EXPECT_EQ(sched_getscheduler(pid), may_raise ? SCHED_FIFO : SCHED_OTHER);
  EXPECT_EQ(p.sched_priority, may_raise ? 10 : 0);

  ASSERT_TRUE(c.kill_daemon(1)) << c.last_error();
  set_cluster_key(c, "sched", "rr:7");
  set_cluster_key(c, "bind", "pu:0");
  if (!may_raise) {
    EXPECT_FALSE(c.start_daemon(1));
    EXPECT_NE(c.daemon_log(1).find("CAP_SYS_NICE"), std::string::npos) << c.daemon_log(1);
    return;
  }
  ASSERT_TRUE(c.start_daemon(1)) << c.last_error();
  pid = daemon_pid(c, 1);
  ASSERT_EQ(sched_getparam(pid, &p), 0);
  EXPECT_EQ(sched_getscheduler(pid), SCHED_RR);
  EXPECT_EQ(p.sched_priority, 7);
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(pid, sizeof set, &set), 0);
  EXPECT_EQ(CPU_COUNT(&set), 1);  // one PU (hwloc's logical PU 0)
  EXPECT_EQ(c.dipc(1, {"status"}).status, 0);

  ASSERT_TRUE(c.kill_daemon(1)) << c.last_error();
  set_cluster_key(c, "bind", "core:4095");
  EXPECT_FALSE(c.start_daemon(1));
  std::string log = c.daemon_log(1);
  EXPECT_NE(log.find("core:4095"), std::string::npos) << log;
  EXPECT_NE(log.find("numbered from 0"), std::string::npos) << log;
}

}  // namespace
}  // namespace dipc::test
