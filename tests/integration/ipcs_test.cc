// Integration test of `dipc ipcs`: the cluster-wide listing shows every node's objects, with their homes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <sstream>
#include <string>
#include <vector>

#include "tests/harness/sim_cluster.h"
#include "tests/integration/output.h"

namespace dipc::test {
namespace {

// The whitespace-separated columns of the listing's line that starts with `key` ("0x%08x"); empty if none.
std::vector<std::string> row(const std::string& out, const std::string& key) {
  std::istringstream is(out);
  std::string line;
  while (std::getline(is, line)) {
    if (line.rfind(key + " ", 0) != 0) continue;
    std::istringstream ls(line);
    std::vector<std::string> cols;
    for (std::string w; ls >> w;) cols.push_back(w);
    return cols;
  }
  return {};
}

TEST(Ipcs, ListsTheObjectsOfEveryNode) {
  SimCluster::Options o;
  o.nodes = 3;
  SimCluster c(o);
  const std::string cfg = c.dir() + "/cluster.toml";
  const std::string uid = std::to_string(getuid());

  auto sem = c.run(1, {SimCluster::prog("ipcop"), "semget:0x1c5e0001:2:creat+excl+dipc+0640"});
  std::string semid = field(sem.out, "semget");
  ASSERT_FALSE(semid.empty() || semid[0] == '-') << sem.out << sem.err;
  auto msg = c.run(2, {SimCluster::prog("ipcop"), "msgget:0x1c5e0002:creat+excl+dipc+0660", "msgsnd:@:1:hello"});
  std::string msqid = field(msg.out, "msgget");
  ASSERT_FALSE(msqid.empty() || msqid[0] == '-') << msg.out << msg.err;
  ASSERT_EQ(field(msg.out, "msgsnd"), "0") << msg.out;
  auto shm = c.run(3, {SimCluster::prog("shm_tool"), "get:0x1c5e0003:8192:creat+excl+dipc+0600"});
  std::string shmid = field(shm.out, "get");
  ASSERT_FALSE(shmid.empty() || shmid[0] == '-') << shm.out << shm.err;

  auto l = c.dipc(2, {"ipcs", "-c", cfg});
  ASSERT_EQ(l.status, 0) << l.out << l.err;
  EXPECT_EQ(l.out.find("unreachable"), std::string::npos) << l.out;
  EXPECT_NE(l.out.find("------ Semaphore Arrays --------"), std::string::npos) << l.out;
  EXPECT_NE(l.out.find("------ Message Queues --------"), std::string::npos) << l.out;
  EXPECT_NE(l.out.find("------ Shared Memory Segments --------"), std::string::npos) << l.out;
  // key id owner perms nsems home
  EXPECT_EQ(row(l.out, "0x1c5e0001"), (std::vector<std::string>{"0x1c5e0001", semid, uid, "640", "2", "node1"}))
      << l.out;
  // key id owner perms used-bytes messages home
  EXPECT_EQ(row(l.out, "0x1c5e0002"),
            (std::vector<std::string>{"0x1c5e0002", msqid, uid, "660", "5", "1", "node2"}))
      << l.out;
  // key id owner perms bytes nattch home (no status: not removed)
  EXPECT_EQ(row(l.out, "0x1c5e0003"),
            (std::vector<std::string>{"0x1c5e0003", shmid, uid, "600", "8192", "0", "node3"}))
      << l.out;

  // Without the configuration the homes are node ids.
  auto ids = c.dipc(1, {"ipcs", "-c", c.dir() + "/no-such.toml"});
  ASSERT_EQ(ids.status, 0) << ids.err;
  EXPECT_EQ(row(ids.out, "0x1c5e0003").back(), "3") << ids.out;

  EXPECT_EQ(field(c.run(3, {SimCluster::prog("ipcop"), "semrm:" + semid}).out, "semrm"), "0");
  EXPECT_EQ(field(c.run(1, {SimCluster::prog("ipcop"), "msgrm:" + msqid}).out, "msgrm"), "0");
  EXPECT_EQ(field(c.run(2, {SimCluster::prog("shm_tool"), "rm:" + shmid}).out, "rm"), "0");

  auto e = c.dipc(2, {"ipcs", "-c", cfg});
  ASSERT_EQ(e.status, 0) << e.out << e.err;
  EXPECT_TRUE(row(e.out, "0x1c5e0001").empty()) << e.out;
  EXPECT_TRUE(row(e.out, "0x1c5e0002").empty()) << e.out;
  EXPECT_TRUE(row(e.out, "0x1c5e0003").empty()) << e.out;
  EXPECT_EQ(e.out.find("0x"), std::string::npos) << e.out;  // nothing at all is left
  EXPECT_EQ(e.out.find("unreachable"), std::string::npos) << e.out;
}

}  // namespace
}  // namespace dipc::test
