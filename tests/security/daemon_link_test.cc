// A hostile network peer between two real dipcd's (ctest label `security`): node2 reaches node3 through
// tamper_relay, a man in the middle on node2 (node2's own configuration names the relay as node3's address;
// SimCluster::set_node_config). The relay flips bytes in the frame that carries a program's msgsnd. Under
// link_security "mac" that frame drops only its connection: the call is not applied (altered or not), both daemons
// stay up, node2 redials and the next call is served. Under "none" the same alteration is applied: that control
// shows the relay really tampers. Real daemons, real processes, bounded waits.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "tests/harness/sim_cluster.h"
#include "tests/integration/output.h"

namespace dipc::test {
namespace {

// The value of `key = ...` in the [[node]] table named `node` of a cluster.toml written by dipc-sim; npos-safe.
struct Entry {
  size_t pos = std::string::npos, len = 0;  // the value's bytes in the text
  std::string value;
};
Entry node_value(const std::string& toml, const std::string& node, const std::string& key) {
  Entry e;
  size_t at = toml.find("name = \"" + node + "\"");
  if (at == std::string::npos) return e;
  size_t k = toml.find("\n" + key + " = ", at);
  if (k == std::string::npos) return e;
  k += key.size() + 4;
  size_t end = toml.find('\n', k);
  e.pos = k;
  e.len = end - k;
  e.value = toml.substr(k, e.len);
  if (e.value.size() >= 2 && e.value.front() == '"') e.value = e.value.substr(1, e.value.size() - 2);
  return e;
}

class DaemonLinkTamper : public ::testing::TestWithParam<std::string> {};

TEST_P(DaemonLinkTamper, AFlippedByteInAForwardedCallDropsOnlyThatConnection) {
  const bool sealed = GetParam() != "none";
  SimCluster c(SimCluster::Options{.nodes = 3, .up_args = {"--link-security", GetParam()}});

  // The relay runs on node2 (node2 dials node3: the lower id dials) and forwards to node3's real address.
  std::string toml = c.config();
  Entry addr = node_value(toml, "node3", "address"), port = node_value(toml, "node3", "port");
  ASSERT_NE(addr.pos, std::string::npos) << toml;
  ASSERT_NE(port.pos, std::string::npos) << toml;
  auto relay = c.spawn(2, {SimCluster::prog("tamper_relay"), addr.value, port.value, "uid=1000", "uid=0000"}, false);
  ASSERT_TRUE(c.wait_output(relay, "relay=")) << c.output(relay);
  std::string relay_port = field(c.output(relay), "relay");
  // Node2 alone is told node3 lives at the relay (port first: replacing it keeps the address's offsets valid).
  std::string mine = toml;
  mine.replace(port.pos, port.len, relay_port);
  mine.replace(addr.pos, addr.len, "\"127.0.0.1\"");
  c.set_node_config(2, mine);
  ASSERT_TRUE(c.kill_daemon(2)) << c.last_error();
  ASSERT_TRUE(c.start_daemon(2)) << c.last_error() << c.output(relay);
  ASSERT_TRUE(c.wait_output(relay, "conn=1")) << "node2 does not reach node3 through the relay";
  pid_t d2 = c.daemon_pid(2), d3 = c.daemon_pid(3);

  // A queue homed on node3; node2's program sends to it, through the relay.
  auto r = c.run(3, {SimCluster::prog("ipcop"), "msgget:0:creat+dipc+0666"});
  std::string q = field(r.out, "msgget");
  ASSERT_TRUE(!q.empty() && q[0] != '-') << r.out << r.err;
  r = c.run(2, {SimCluster::prog("ipcop"), "msgsnd:" + q + ":1:grant-uid=1000:nowait"}, 60);
  ASSERT_EQ(r.status, 0) << r.err;
  std::string sent = field(r.out, "msgsnd");
  ASSERT_TRUE(c.wait_output(relay, "tampered=")) << "the relay never saw the call: " << c.output(relay);
  r = c.run(3, {SimCluster::prog("ipcop"), "msgrcv:" + q + ":0:100:nowait"});
  std::string got = field(r.out, "msgrcv");

  if (!sealed) {
    // No integrity: the altered call is applied as if node2's program had sent it.
    EXPECT_EQ(sent, "0");
    EXPECT_EQ(got, "14 type=1 text=grant-uid=0000") << r.out << r.err;
    return;
  }
  // The altered frame was never applied; the caller learnt its call did not go through.
  EXPECT_EQ(sent, "-1 EIO") << "the program was not told its call was lost";
  EXPECT_EQ(got, "-1 ENOMSG") << "a call on a connection that was tampered with was applied";
  EXPECT_NE(c.daemon_log(3).find("failed authentication"), std::string::npos) << c.daemon_log(3);
  // Only that connection dropped: both daemons run, node2 redials through the relay, calls are served again.
  EXPECT_EQ(::kill(d2, 0), 0) << "node2's dipcd died";
  EXPECT_EQ(::kill(d3, 0), 0) << "node3's dipcd died";
  ASSERT_TRUE(c.wait_output(relay, "conn=2", 30)) << "node2 did not redial: " << c.output(relay);
  r = c.run(2, {SimCluster::prog("ipcop"), "msgsnd:" + q + ":1:grant-uid=1000:0"}, 60);
  EXPECT_EQ(field(r.out, "msgsnd"), "0") << r.out << r.err;
  r = c.run(3, {SimCluster::prog("ipcop"), "msgrcv:" + q + ":0:100:nowait", "msgrcv:" + q + ":0:100:nowait"});
  EXPECT_EQ(fields(r.out, "msgrcv"), (std::vector<std::string>{"14 type=1 text=grant-uid=1000", "-1 ENOMSG"}))
      << r.out << r.err;
  EXPECT_EQ(c.daemon_pid(2), d2);
  EXPECT_EQ(c.daemon_pid(3), d3);
}

INSTANTIATE_TEST_SUITE_P(LinkSecurity, DaemonLinkTamper, ::testing::Values("mac", "none"),
                         [](const auto& p) { return p.param; });

}  // namespace
}  // namespace dipc::test
