// Unit tests of common/: byte-order encoding, configuration, authentication, the event loop.
#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "common/auth.h"
#include "common/config.h"
#include "common/event_loop.h"
#include "common/wire.h"
#include "dipc/dipc.h"
#include "ipc/control.h"
#include "ipc/shm_table.h"
#include "ipc/ids.h"

namespace dipc {
namespace {

TEST(Wire, FieldsAreBigEndianWhateverTheHost) {
  Encoder e;
  e.u16(0x1234);
  e.u32(0x89abcdef);
  e.i64(-2);
  const Bytes& b = e.buf();
  ASSERT_EQ(b.size(), 14u);
  EXPECT_EQ(b[0], 0x12);
  EXPECT_EQ(b[1], 0x34);
  EXPECT_EQ(b[2], 0x89);
  EXPECT_EQ(b[5], 0xef);
  EXPECT_EQ(b[6], 0xff);
  EXPECT_EQ(b[13], 0xfe);
  Decoder d(b);
  EXPECT_EQ(d.u16(), 0x1234);
  EXPECT_EQ(d.u32(), 0x89abcdefu);
  EXPECT_EQ(d.i64(), -2);
  EXPECT_TRUE(d.done());
}

TEST(Wire, DecoderRejectsShortInputAndOversizedLengths) {
  Encoder e;
  e.u32(1000);  // claims 1000 bytes follow
  e.u8(1);
  Decoder d(e.buf());
  d.bytes(4096);
  EXPECT_FALSE(d.ok());

  Encoder e2;
  e2.str("hello");
  Decoder d2(e2.buf());
  d2.str(3);  // longer than the caller allows
  EXPECT_FALSE(d2.ok());

  Encoder e3;
  e3.u32(0xffffffff);  // an element count the input cannot hold
  Decoder d3(e3.buf());
  d3.count(1u << 30, 2);
  EXPECT_FALSE(d3.ok());

  Decoder d4(e2.buf());
  d4.u8();
  EXPECT_FALSE(d4.done());  // trailing bytes
}

TEST(Config, ParsesNodesPolicyAndDefaults) {
  std::string err;
  auto c = parse_config(R"(
[cluster]
secret_file = "/tmp/s"
transport = "tcp"
[[node]]
id = 1
name = "a"
address = "10.0.0.1"
port = 7000
[[node]]
id = 7
name = "b"
address = "10.0.0.2"
[policy]
distribute = "ranges"
ranges = [[0x1000, 0x1fff]]
)",
                        &err);
  ASSERT_TRUE(c) << err;
  EXPECT_EQ(c->nodes.size(), 2u);
  EXPECT_EQ(c->node(7)->port, 7450);
  EXPECT_TRUE(c->policy_distributes(0x1234));
  EXPECT_FALSE(c->policy_distributes(0x2000));
  EXPECT_FALSE(c->policy_distributes(0));  // IPC_PRIVATE: only "all" distributes it
  c->distribute = Distribute::kAll;
  EXPECT_TRUE(c->policy_distributes(0));
  c->distribute_private = false;
  EXPECT_FALSE(c->policy_distributes(0));
  EXPECT_TRUE(c->policy_distributes(0x2000));
  ASSERT_TRUE(select_self(*c, "b", &err));
  EXPECT_EQ(c->self, 7);
  EXPECT_FALSE(select_self(*c, "zz", &err));
}

TEST(Config, ErrorsNameTheProblem) {
  std::string err;
  EXPECT_FALSE(parse_config("[[node]]\nid = 300\n", &err));
  EXPECT_NE(err.find("1..255"), std::string::npos);
  EXPECT_FALSE(parse_config("[[node]]\nid = 1\n[[node]]\nid = 1\n[cluster]\nsecret_file=\"x\"\n", &err));
  EXPECT_NE(err.find("duplicate"), std::string::npos);
  EXPECT_FALSE(parse_config("[[node]]\nid = 1\n[[node]]\nid = 2\n", &err));
  EXPECT_NE(err.find("secret_file"), std::string::npos);
  EXPECT_FALSE(parse_config("this is = = not toml", &err));
  EXPECT_NE(err.find("line 1"), std::string::npos);
  EXPECT_FALSE(parse_config("[dsm]\nblock_size = 5000\n", &err));
  EXPECT_FALSE(parse_config("[policy]\ndistribute = \"all\"\nprivate = 3\n", &err));
  EXPECT_NE(err.find("policy.private"), std::string::npos);
  auto keep = parse_config("[policy]\ndistribute = \"all\"\nprivate = false\n", &err);
  ASSERT_TRUE(keep) << err;
  EXPECT_FALSE(keep->policy_distributes(0));
  EXPECT_TRUE(keep->policy_distributes(5));
  // The coherence unit is at least this node's page size (64 KiB on some ppc64el and arm64 kernels).
  const long page = sysconf(_SC_PAGESIZE);
  EXPECT_FALSE(parse_config("[dsm]\nblock_size = 2048\n", &err));  // below the smallest page of any Linux
  if (page > 4096) {
    EXPECT_FALSE(parse_config("[dsm]\nblock_size = 4096\n", &err));
    EXPECT_NE(err.find("smaller than this node's page size " + std::to_string(page)), std::string::npos) << err;
  }
  auto c = parse_config("[dsm]\nblock_size = " + std::to_string(page) + "\n", &err);
  ASSERT_TRUE(c) << err;
  EXPECT_EQ(c->block_size, static_cast<uint32_t>(page));
  EXPECT_GE(Config{}.block_size, static_cast<uint32_t>(page));  // the default fits this node too
}

// [cluster] sched and bind: what dipcd applies at start (daemon/sched.cc); a typo is an error, never a silent default.
TEST(Config, SchedAndBindAreCheckedAtParse) {
  std::string err;
  auto c = parse_config("[cluster]\nsched = \"fifo:20\"\nbind = \"core:1\"\n", &err);
  ASSERT_TRUE(c) << err;
  SchedSpec s;
  BindSpec b;
  ASSERT_TRUE(parse_sched(c->sched, &s));
  EXPECT_EQ(s.kind, SchedSpec::kFifo);
  EXPECT_EQ(s.value, 20);
  ASSERT_TRUE(parse_bind(c->bind, &b));
  EXPECT_EQ(b.kind, BindSpec::kCore);
  EXPECT_EQ(b.index, 1u);
  auto d = parse_config("", &err);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->sched, "auto");
  EXPECT_EQ(d->bind, "none");
  ASSERT_TRUE(parse_sched("nice:-5", &s));
  EXPECT_EQ(s.kind, SchedSpec::kNice);
  EXPECT_EQ(s.value, -5);
  for (const char* bad : {"fifo", "fifo:0", "fifo:100", "nice:-21", "nice:20", "nice:1x", "FIFO:10", "idle"}) {
    EXPECT_FALSE(parse_config(std::string("[cluster]\nsched = \"") + bad + "\"\n", &err)) << bad;
    EXPECT_NE(err.find("cluster.sched"), std::string::npos) << bad;
  }
  for (const char* bad : {"core", "core:-1", "socket:0", "pu:x"}) {
    EXPECT_FALSE(parse_config(std::string("[cluster]\nbind = \"") + bad + "\"\n", &err)) << bad;
    EXPECT_NE(err.find("cluster.bind"), std::string::npos) << bad;
  }
}

TEST(Auth, BothSidesProveTheSameSecretAndNothingElse) {
  Bytes s1(32, 7), s2(32, 8);
  ClusterKey k1 = ClusterKey::from_secret(s1), k1b = ClusterKey::from_secret(s1), k2 = ClusterKey::from_secret(s2);
  Nonce nc = k1.random_nonce(), ns = k1.random_nonce();
  EXPECT_NE(nc, ns);
  Mac server = k1.prove('S', ns, nc, 2, 1, 1);
  EXPECT_TRUE(k1b.verify('S', ns, nc, 2, 1, 1, server));
  EXPECT_FALSE(k2.verify('S', ns, nc, 2, 1, 1, server));   // wrong secret
  EXPECT_FALSE(k1b.verify('C', ns, nc, 2, 1, 1, server));  // reflected as the other role
  EXPECT_FALSE(k1b.verify('S', ns, nc, 3, 1, 1, server));  // another node's identity
  EXPECT_FALSE(k1b.verify('S', nc, ns, 2, 1, 1, server));  // nonces swapped
  EXPECT_FALSE(k1b.verify('S', ns, nc, 2, 1, 0, server));  // another link_security (a downgrade)
}

TEST(Auth, SessionKeysDifferPerDirectionConnectionAndSetting) {
  ClusterKey k = ClusterKey::from_secret(Bytes(32, 7)), other = ClusterKey::from_secret(Bytes(32, 8));
  Nonce nc = k.random_nonce(), ns = k.random_nonce(), nc2 = k.random_nonce();
  SessionKey d = k.session_key('D', nc, ns, 1, 2, 1);
  EXPECT_EQ(d, ClusterKey::from_secret(Bytes(32, 7)).session_key('D', nc, ns, 1, 2, 1));  // both ends derive it
  EXPECT_NE(d, k.session_key('A', nc, ns, 1, 2, 1));      // the other direction
  EXPECT_NE(d, k.session_key('D', nc2, ns, 1, 2, 1));     // another connection (fresh nonce)
  EXPECT_NE(d, k.session_key('D', nc, ns, 1, 2, 2));      // another setting
  EXPECT_NE(d, k.session_key('D', nc, ns, 1, 3, 1));      // another pair of nodes
  EXPECT_NE(d, other.session_key('D', nc, ns, 1, 2, 1));  // another cluster secret
}

TEST(Config, LinkSecurityParsedAndRangeChecked) {
  std::string err;
  auto def = parse_config("[cluster]\n", &err);
  ASSERT_TRUE(def) << err;
  EXPECT_EQ(def->link_security, LinkSecurity::kMac);  // the default
  for (auto [text, want] : {std::pair{"none", LinkSecurity::kNone}, std::pair{"mac", LinkSecurity::kMac},
                            std::pair{"encrypt", LinkSecurity::kEncrypt}}) {
    auto c = parse_config(std::string("[cluster]\nlink_security = \"") + text + "\"\n", &err);
    ASSERT_TRUE(c) << err;
    EXPECT_EQ(c->link_security, want);
    EXPECT_STREQ(link_security_name(want), text);
  }
  auto bad = parse_config("[cluster]\nlink_security = \"hmac\"\n", &err);
  EXPECT_FALSE(bad);
  EXPECT_NE(err.find("cluster.link_security"), std::string::npos) << err;
}

TEST(Auth, SecretFileRoundTrip) {
  char path[] = "/tmp/dipc-secret-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  ASSERT_TRUE(write_new_secret(path));
  auto k = ClusterKey::from_file(path);
  EXPECT_TRUE(k);
  EXPECT_EQ(ClusterKey::from_file("/nonexistent/secret").status().code(), ENOENT);
  unlink(path);
}

TEST(EventLoop, TimersFireInOrderAndCanBeCancelled) {
  EventLoop loop;
  std::vector<int> fired;
  loop.add_timer(20, [&] { fired.push_back(2); });
  loop.add_timer(0, [&] { fired.push_back(1); });
  auto t = loop.add_timer(10, [&] { fired.push_back(99); });
  loop.cancel_timer(t);
  loop.add_timer(30, [&] { loop.stop(); });
  loop.run();
  EXPECT_EQ(fired, (std::vector<int>{1, 2}));
}

TEST(EventLoop, PostFromAnotherThreadWakesTheLoop) {
  EventLoop loop;
  int ran = 0;
  std::thread th([&] { loop.post([&] { ++ran; loop.stop(); }); });
  loop.add_timer(10000, [&] { loop.stop(); });  // bound
  loop.run();
  th.join();
  EXPECT_EQ(ran, 1);
}

// The shortest time a 300 us timer took to fire over several runs (-1 if one fired early or not at all). A loop that
// rounded the timeout up to whole milliseconds would take at least 1000 us every time; a loaded or emulated machine
// (the unit suite runs under qemu-user too) may be late now and then, but not in every run.
int64_t fastest_300us_timer() {
  int64_t best = -1;
  for (int i = 0; i < 15; ++i) {
    EventLoop loop;
    int64_t start = EventLoop::now_us(), fired = 0;
    loop.add_timer_us(300, [&] { fired = EventLoop::now_us(); });
    loop.add_timer(2000, [] {});  // bound: run_once returns by then at the latest
    while (!fired && EventLoop::now_us() - start < 2'000'000) loop.run_once(-1);
    if (fired == 0 || fired - start < 300) return -1;
    if (best < 0 || fired - start < best) best = fired - start;
  }
  return best;
}

TEST(EventLoop, MicrosecondTimersDoNotWaitAWholeMillisecond) {
  // A 300 us timer (the DSM quantum uses such) fires after 300 us, not after the 1 ms a millisecond-granular
  // epoll_wait would round it up to.
  int64_t best = fastest_300us_timer();
  EXPECT_GT(best, 0);
  EXPECT_LT(best, 1000);
}

TEST(EventLoop, WithoutEpollPwait2TimersKeepTheMicrosecondAndFdsAreServed) {
  // As on Linux < 5.11 or qemu-user 7.2, where epoll_pwait2 answers ENOSYS: the loop falls back to epoll_wait and a
  // timerfd. The fallback is process-wide, so it runs in a child process.
  EXPECT_EXIT(
      {
        EventLoop::force_epoll_wait_fallback();
        if (EventLoop::has_epoll_pwait2()) _exit(2);
        int64_t best = fastest_300us_timer();
        if (best <= 0 || best >= 1000) _exit(3);
        // Ready fds, posted tasks and millisecond timers are served as before; nothing spins.
        EventLoop loop;
        int p[2];
        if (pipe(p) != 0) _exit(4);
        int got = 0;
        if (!loop.add(p[0], EPOLLIN, [&](uint32_t) {
              char c;
              if (read(p[0], &c, 1) == 1) ++got;
            }))
          _exit(6);
        std::thread th([&] {
          if (write(p[1], "x", 1) != 1) _exit(5);
          loop.post([&] { loop.add_timer(5, [&] { loop.stop(); }); });
        });
        loop.add_timer(10000, [&] { _exit(6); });  // bound
        loop.run();
        th.join();
        _exit(got == 1 ? 0 : 7);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(EventLoop, DeferredTasksRunAfterEveryReadyFdOfTheIteration) {
  EventLoop loop;
  int a[2], b[2];
  ASSERT_EQ(pipe(a), 0);
  ASSERT_EQ(pipe(b), 0);
  std::vector<std::string> order;
  auto readable = [&](int fd, const char* name) {
    ASSERT_TRUE(loop.add(fd, EPOLLIN, [&, fd, name](uint32_t) {
      char c;
      ASSERT_EQ(read(fd, &c, 1), 1);
      order.push_back(name);
      loop.defer([&order, name] { order.push_back(std::string("deferred by ") + name); });
    }));
  };
  readable(a[0], "a");
  readable(b[0], "b");
  ASSERT_EQ(write(a[1], "x", 1), 1);
  ASSERT_EQ(write(b[1], "x", 1), 1);
  loop.run_once(1000);
  ASSERT_EQ(order.size(), 4u);
  // Both fds are served before either deferred task runs; the tasks run in the order they were deferred.
  EXPECT_EQ(order[2].rfind("deferred by ", 0), 0u);
  EXPECT_EQ(order[3].rfind("deferred by ", 0), 0u);
  EXPECT_EQ(order[2], "deferred by " + order[0]);
  // Deferred outside an iteration: the next iteration runs it without waiting for anything else.
  bool ran = false;
  loop.defer([&] { ran = true; });
  loop.run_once(5000);
  EXPECT_TRUE(ran);
  for (int fd : {a[0], a[1], b[0], b[1]}) close(fd);
}

TEST(Ids, EncodeHomeNodeAndStayPositive) {
  int32_t id = ipc::make_id(255, 511, 8191);
  EXPECT_GT(id, 0);
  EXPECT_TRUE(ipc::is_dipc_id(id));
  EXPECT_EQ(ipc::id_node(id), 255);
  EXPECT_EQ(ipc::id_seq(id), 511u);
  EXPECT_EQ(ipc::id_slot(id), 8191u);
  EXPECT_EQ(ipc::id_incarnation(id), 31u);
  // Reuses of a slot stay in their incarnation's generations: another incarnation's ids are never made again.
  uint32_t g = ipc::first_gen(5);
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(ipc::id_incarnation(ipc::make_id(1, g, 0)), 5u);
    g = ipc::next_gen(g);
  }
  EXPECT_FALSE(ipc::is_dipc_id(32768 * 5 + 3));  // a typical kernel id
}

TEST(ControlPage, DecidesDistribution) {
  ipc::ControlPage p{};
  p.init(3);
  EXPECT_EQ(p.check(), ipc::ControlCheck::kOk);
  EXPECT_EQ(p.node(), 3);
  p.set_enabled(true);
  p.set_distribute(0);
  EXPECT_TRUE(p.distributes(0x10, IPC_DIPC, IPC_DIPC));
  EXPECT_FALSE(p.distributes(0x10, 0, IPC_DIPC));
  p.set_distribute(1);
  EXPECT_TRUE(p.distributes(0x10, 0, IPC_DIPC));
  EXPECT_TRUE(p.distributes(0, 0, IPC_DIPC));  // "all" distributes IPC_PRIVATE too
  p.set_flags(ipc::kControlKeepPrivate);  // [policy] private = false
  EXPECT_FALSE(p.distributes(0, 0, IPC_DIPC));
  EXPECT_TRUE(p.distributes(0x10, 0, IPC_DIPC));
  p.set_flags(0);
  p.set_distribute(2);
  p.set_range(0, 100, 200);
  p.set_range(1, -300, -250);
  p.set_nranges(2);
  EXPECT_TRUE(p.distributes(150, 0, IPC_DIPC));
  EXPECT_FALSE(p.distributes(201, 0, IPC_DIPC));
  EXPECT_TRUE(p.distributes(-260, 0, IPC_DIPC));
  EXPECT_FALSE(p.distributes(0, 0, IPC_DIPC));
  p.set_enabled(false);  // dipc off
  EXPECT_FALSE(p.distributes(150, IPC_DIPC, IPC_DIPC));
}

TEST(ControlPage, IsBigEndianOnEveryHostAndAnOtherOrderIsTold) {
  // The bytes a program of any architecture maps are the same: big-endian fields at fixed offsets.
  ipc::ControlPage p{};
  p.init(0x0102);
  p.set_distribute(2);
  p.set_range(0, 0x1000, 0x1fff);
  p.set_nranges(1);
  p.set_enabled(true);
  const auto* b = reinterpret_cast<const uint8_t*>(&p);
  EXPECT_EQ(std::vector<uint8_t>(b, b + 8), (std::vector<uint8_t>{'D', 'C', 'T', 'P', 0, 0, 0, 2}));
  EXPECT_EQ(std::vector<uint8_t>(b + 8, b + 24),
            (std::vector<uint8_t>{0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0x01, 0x02, 0, 0}));
  EXPECT_EQ(std::vector<uint8_t>(b + 24, b + 40),
            (std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x1f, 0xff}));
  // A page written in the other byte order (an old daemon of the other endianness), another version, or garbage.
  ipc::ControlPage q = {};
  q.magic_be = __builtin_bswap32(p.magic_be);
  EXPECT_EQ(q.check(), ipc::ControlCheck::kOtherByteOrder);
  q.magic_be = p.magic_be;
  q.version_be = htobe32(1);
  EXPECT_EQ(q.check(), ipc::ControlCheck::kOtherVersion);
  q.magic_be = 0x12345678;
  EXPECT_EQ(q.check(), ipc::ControlCheck::kBadMagic);
}

TEST(ShmTable, FindsWhatWasPublishedAndGivesUpWhileItChanges) {
  auto t = std::make_unique<ipc::ShmTable>();
  t->init();
  EXPECT_TRUE(t->valid());
  std::vector<ipc::ShmTableRow> rows;
  for (int i = 1; i <= 300; ++i)  // more keys than fit in a probe run: collisions on the same home slot
    rows.push_back(ipc::ShmTableRow{i * static_cast<int32_t>(ipc::kShmTableSlots), 0x40000000 + i, 0640,
                                    1000, 100, 1001, 101, (uint64_t{1} << 33) + i});
  t->publish(rows);
  ipc::ShmTableRow r;
  ASSERT_EQ(t->find(7 * ipc::kShmTableSlots, &r), 1);
  EXPECT_EQ(r.id, 0x40000007);
  EXPECT_EQ(r.mode, 0640u);
  EXPECT_EQ(r.cuid, 1001u);
  EXPECT_EQ(r.size, (uint64_t{1} << 33) + 7);
  EXPECT_EQ(t->find(12345, &r), 0);
  // The fields are big-endian for programs of either byte order.
  const auto* b = reinterpret_cast<const uint8_t*>(t.get());
  EXPECT_EQ(std::vector<uint8_t>(b, b + 4), (std::vector<uint8_t>{'D', 'S', 'T', 'B'}));
  // A table being rewritten (odd sequence) decides nothing; a republished one without the key says absent.
  uint32_t seq = be32toh(t->seq_be.load());
  EXPECT_EQ(seq % 2, 0u);
  t->seq_be.store(htobe32(seq + 1));
  EXPECT_EQ(t->find(7 * ipc::kShmTableSlots, &r), -1);
  t->seq_be.store(htobe32(seq));
  rows.erase(rows.begin() + 6);
  t->publish(rows);
  EXPECT_EQ(t->find(7 * ipc::kShmTableSlots, &r), 0);
  ASSERT_EQ(t->find(8 * ipc::kShmTableSlots, &r), 1);
  EXPECT_EQ(r.id, 0x40000008);
  // More segments than slots: the ones left out are absent (asked of dipcd), never wrong.
  rows.clear();
  for (int i = 1; i <= 2000; ++i) rows.push_back(ipc::ShmTableRow{i, i, 0600, 0, 0, 0, 0, 4096});
  t->publish(rows);
  int found = 0;
  for (int i = 1; i <= 2000; ++i)
    if (int f = t->find(i, &r); f == 1) {
      ++found;
      EXPECT_EQ(r.id, i);
    }
  EXPECT_EQ(found, static_cast<int>(ipc::kShmTableSlots) - 1);
}

}  // namespace
}  // namespace dipc
