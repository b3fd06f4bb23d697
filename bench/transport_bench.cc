// Transport-level benchmark in perftest's style, for every provider: two nodes in this process (two event loops,
// driven by busy polling as perftest does), and per operation and size the latency p50/p99/p99.9 and the bandwidth.
//   send_lat  ~ BM_Request  (request + reply of `size` bytes each way: a round trip, as ib_send_lat reports half of)
//   read_lat  ~ BM_Read     (one-sided read of `size` bytes)
//   write_lat ~ BM_WriteNotify (one-sided write + the message that follows it, as dsm/ pushes a block)
//   write_bw  ~ BM_WriteBw  (16 writes in flight)
// Providers: tcp over 127.0.0.1, verbs over the first local address with an active RDMA port (skipped if none).
// tcp runs [cluster] link_security "mac" (the default); tcp_none and tcp_encrypt run the 64 B round trip and the
// 4 KiB push under the other two settings, for the cost of the per-frame seal (bench/run_link_security.sh).
#include <arpa/inet.h>
#include <benchmark/benchmark.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/auth.h"
#include "common/config.h"
#include "common/event_loop.h"
#include "transport/tcp/tcp_transport.h"
#include "transport/transport.h"
#include "transport/verbs/verbs_transport.h"

namespace dipc::transport {
namespace {

constexpr uint16_t kOpEcho = ops::kTest.first, kOpMsg = ops::kTest.first + 2;

uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  uint16_t port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

std::string rdma_address() { return verbs_local_address(); }

struct Node : Handler {
  Config cfg;
  EventLoop loop;
  std::unique_ptr<Transport> tr;
  bool up = false;
  uint64_t messages = 0;
  void on_request(NodeId, uint16_t, ByteView body, ReplyToken token) override {
    (void)tr->reply(token, 0, Bytes(body.begin(), body.end()));
  }
  void on_message(NodeId, uint16_t, ByteView) override { ++messages; }
  void on_peer(NodeId, bool is_up) override { up = is_up; }
};

using Factory = std::function<std::unique_ptr<Transport>(const Config&, EventLoop&, const ClusterKey&)>;

// Two connected nodes and a registered 4 MiB region on each.
struct Pair {
  ClusterKey key = ClusterKey::from_secret(ByteView(reinterpret_cast<const uint8_t*>("bench-secret-0123456789"), 23));
  Node n[2];
  std::vector<uint8_t> mem[2];
  MemRegion reg[2];
  bool ok = false;

  Pair(const Factory& make, const std::string& addr, LinkSecurity sec) {
    uint16_t p1 = free_port(), p2 = free_port();
    for (int i = 0; i < 2; ++i) {
      n[i].cfg.nodes = {{1, "n1", addr, p1}, {2, "n2", addr, p2}};
      n[i].cfg.self = static_cast<uint16_t>(i + 1);
      n[i].cfg.link_security = sec;
      n[i].tr = make(n[i].cfg, n[i].loop, key);
      if (!n[i].tr || !n[i].tr->set_handler(ops::kTest, &n[i]) || !n[i].tr->start()) return;
      mem[i].assign(4u << 20, static_cast<uint8_t>(i));
      auto r = n[i].tr->register_region(mem[i].data(), mem[i].size());
      if (!r) return;
      reg[i] = *r;
    }
    ok = pump([&] { return n[0].up && n[1].up; }, 10000);
  }
  ~Pair() {
    for (auto& x : n)
      if (x.tr) x.tr->stop();
  }
  // Busy-polls both loops until done() (bounded).
  bool pump(const std::function<bool()>& done, int64_t timeout_ms = 5000) {
    int64_t deadline = EventLoop::now_ms() + timeout_ms;
    while (!done()) {
      if (EventLoop::now_ms() > deadline) return false;
      n[0].loop.run_once(0);
      n[1].loop.run_once(0);
    }
    return true;
  }
};

void report(benchmark::State& st, std::vector<double>& us, size_t bytes_per_op) {
  if (us.empty()) return;
  std::sort(us.begin(), us.end());
  auto pct = [&](double p) { return us[std::min(us.size() - 1, static_cast<size_t>(p * static_cast<double>(us.size())))]; };
  st.counters["p50_us"] = pct(0.50);
  st.counters["p99_us"] = pct(0.99);
  st.counters["p999_us"] = pct(0.999);
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * bytes_per_op));
}

// One timed operation per iteration: `issue(done)` starts it, the loops are pumped until `done` is set.
template <typename Issue>
void latency(benchmark::State& st, Pair& p, size_t bytes, Issue issue) {
  std::vector<double> us;
  us.reserve(1 << 16);
  for (auto _ : st) {
    bool done = false;
    auto t0 = std::chrono::steady_clock::now();
    if (!issue(done) || !p.pump([&] { return done; })) {
      st.SkipWithError("operation failed or timed out");
      return;
    }
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  report(st, us, bytes);
}

void bm_request(benchmark::State& st, Pair* p) {
  size_t size = static_cast<size_t>(st.range(0));
  latency(st, *p, 2 * size, [&](bool& done) {
    return bool(p->n[0].tr->request(2, kOpEcho, Bytes(size, 7), [&done](Status, ByteView) { done = true; }));
  });
}

void bm_read(benchmark::State& st, Pair* p) {
  size_t size = static_cast<size_t>(st.range(0));
  latency(st, *p, size, [&](bool& done) {
    return bool(p->n[0].tr->read(p->reg[1].remote, 0, p->reg[0], 0, size, [&done](Status) { done = true; }));
  });
}

void bm_write_notify(benchmark::State& st, Pair* p) {
  size_t size = static_cast<size_t>(st.range(0));
  latency(st, *p, size, [&](bool& done) {
    uint64_t want = p->n[1].messages + 1;
    Status s = p->n[0].tr->write_notify(p->reg[0], 0, p->reg[1].remote, 0, size, kOpMsg, Bytes{1}, [](Status) {});
    if (!s) return false;
    return p->pump([&] { return p->n[1].messages >= want; }) && (done = true);
  });
}

void bm_write_bw(benchmark::State& st, Pair* p) {
  size_t size = static_cast<size_t>(st.range(0));
  constexpr int kDepth = 16;
  int inflight = 0;
  bool failed = false;
  auto cb = [&](Status s) {
    --inflight;
    if (!s) failed = true;
  };
  for (auto _ : st) {
    while (inflight >= kDepth)
      if (!p->pump([&] { return inflight < kDepth; })) return st.SkipWithError("write timed out");
    Status s = p->n[0].tr->write(p->reg[0], 0, p->reg[1].remote, 0, size, cb);
    if (s.retryable()) {
      p->pump([&] { return inflight == 0; });
      continue;
    }
    if (!s || failed) return st.SkipWithError("write failed");
    ++inflight;
  }
  p->pump([&] { return inflight == 0; });
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * size));
}

}  // namespace
}  // namespace dipc::transport

int main(int argc, char** argv) {
  using namespace dipc::transport;
  benchmark::Initialize(&argc, argv);
  struct Provider {
    const char* name;
    Factory make;
    std::string addr;
    dipc::LinkSecurity sec = dipc::LinkSecurity::kMac;
    bool all = true;  // every benchmark, or only the round trip and the push (the link_security comparison)
  };
  Factory tcp = [](const dipc::Config& c, dipc::EventLoop& l, const dipc::ClusterKey& k) {
    return make_tcp_transport(c, l, k);
  };
  std::vector<Provider> providers = {
      {"tcp", tcp, "127.0.0.1"},
      {"tcp_none", tcp, "127.0.0.1", dipc::LinkSecurity::kNone, false},
      {"tcp_encrypt", tcp, "127.0.0.1", dipc::LinkSecurity::kEncrypt, false}};
  if (std::string a = rdma_address(); !a.empty()) {
    Factory verbs = [](const dipc::Config& c, dipc::EventLoop& l, const dipc::ClusterKey& k) {
      auto t = make_verbs_transport(c, l, k);
      return t ? std::move(*t) : std::unique_ptr<Transport>();
    };
    providers.push_back({"verbs", verbs, a});
    providers.push_back({"verbs_none", verbs, a, dipc::LinkSecurity::kNone, false});
    providers.push_back({"verbs_encrypt", verbs, a, dipc::LinkSecurity::kEncrypt, false});
  }
  std::vector<std::unique_ptr<Pair>> pairs;
  for (auto& pr : providers) {
    auto p = std::make_unique<Pair>(pr.make, pr.addr, pr.sec);
    if (!p->ok) {
      fprintf(stderr, "transport_bench: %s: the two nodes did not connect; skipped\n", pr.name);
      continue;
    }
    Pair* raw = p.get();
    std::string n = pr.name;
    if (!pr.all) {
      benchmark::RegisterBenchmark(("BM_Request/" + n).c_str(), bm_request, raw)->Arg(64)->UseRealTime();
      benchmark::RegisterBenchmark(("BM_WriteNotify/" + n).c_str(), bm_write_notify, raw)->Arg(4096)->UseRealTime();
      pairs.push_back(std::move(p));
      continue;
    }
    benchmark::RegisterBenchmark(("BM_Request/" + n).c_str(), bm_request, raw)->Arg(64)->Arg(4096)->UseRealTime();
    benchmark::RegisterBenchmark(("BM_Read/" + n).c_str(), bm_read, raw)->Arg(64)->Arg(4096)->Arg(65536)->UseRealTime();
    benchmark::RegisterBenchmark(("BM_WriteNotify/" + n).c_str(), bm_write_notify, raw)->Arg(4096)->UseRealTime();
    benchmark::RegisterBenchmark(("BM_WriteBw/" + n).c_str(), bm_write_bw, raw)->Arg(4096)->Arg(65536)->UseRealTime();
    pairs.push_back(std::move(p));
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
