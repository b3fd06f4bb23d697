// tamper_relay: a man in the middle between two real dipcd's, run on the dialing node (security suite).
//
//   tamper_relay TARGET_ADDR TARGET_PORT MARKER REPLACEMENT
//
// Listens on 127.0.0.1 (an ephemeral port, printed as "relay=PORT") and forwards every connection to TARGET. In
// the dialer-to-target direction it reassembles whole frames (common/frame.h) and, in the first frame whose bytes
// contain MARKER, overwrites it with REPLACEMENT (same length): a byte flip an attacker on the path makes in a
// frame it can read ("mac" sends frames in the clear, with a tag). The other direction passes unchanged.
// Prints "conn=N" for each connection accepted and "tampered=OP" once it altered a frame. Runs until killed.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/frame.h"
#include "tests/security/relay.h"

namespace {

using dipc::test::relay_step;

struct Conn {
  int a = -1, b = -1;           // the dialer's side, the target's side
  std::vector<uint8_t> a2b;     // the dialer's bytes not yet a whole frame
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5 || std::strlen(argv[3]) != std::strlen(argv[4]) || !*argv[3]) {
    std::fprintf(stderr, "usage: tamper_relay TARGET_ADDR TARGET_PORT MARKER REPLACEMENT (same length)\n");
    return 2;
  }
  sockaddr_in target{};
  target.sin_family = AF_INET;
  target.sin_port = htons(static_cast<uint16_t>(std::atoi(argv[2])));
  if (inet_pton(AF_INET, argv[1], &target.sin_addr) != 1) return 2;
  const std::string marker = argv[3], replacement = argv[4];

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (lfd < 0 || bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(lfd, 16) != 0 ||
      getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::perror("tamper_relay: listen");
    return 1;
  }
  std::printf("relay=%u\n", ntohs(a.sin_port));
  std::fflush(stdout);

  std::vector<Conn> conns;
  int accepted = 0;
  bool tampered = false;
  auto drop = [](Conn& c) {
    if (c.a >= 0) close(c.a);
    if (c.b >= 0) close(c.b);
    c.a = c.b = -1;
  };
  // Moves one read's worth from one side to the other; false when the connection is over.
  auto pump = [&](Conn& c, bool dialer_side) {
    if (!dialer_side) return relay_step(c.b, c.a, nullptr, [](const dipc::FrameHeader&, std::vector<uint8_t>&) {});
    return relay_step(c.a, c.b, &c.a2b, [&](const dipc::FrameHeader& h, std::vector<uint8_t>& frame) {
      if (tampered) return;
      auto body = frame.begin() + dipc::kFrameHeaderSize;
      auto at = std::search(body, frame.end(), marker.begin(), marker.end());
      if (at == frame.end()) return;
      std::copy(replacement.begin(), replacement.end(), at);
      tampered = true;
      std::printf("tampered=%u\n", h.op);
      std::fflush(stdout);
    });
  };

  for (;;) {
    std::vector<pollfd> fds{{lfd, POLLIN, 0}};
    for (const Conn& c : conns) {
      fds.push_back({c.a, POLLIN, 0});
      fds.push_back({c.b, POLLIN, 0});
    }
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (fds[0].revents & POLLIN) {
      int ca = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      int cb = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (ca >= 0 && cb >= 0 && connect(cb, reinterpret_cast<sockaddr*>(&target), sizeof target) == 0) {
        conns.push_back(Conn{ca, cb, {}});
        std::printf("conn=%d\n", ++accepted);
        std::fflush(stdout);
      } else {
        if (ca >= 0) close(ca);
        if (cb >= 0) close(cb);
      }
    }
    for (size_t i = 0; i < conns.size(); ++i) {
      Conn& c = conns[i];
      short ra = fds[1 + 2 * i].revents, rb = fds[2 + 2 * i].revents;
      if (((ra & (POLLIN | POLLHUP | POLLERR)) && !pump(c, true)) ||
          ((rb & (POLLIN | POLLHUP | POLLERR)) && !pump(c, false)))
        drop(c);
    }
    std::erase_if(conns, [](const Conn& c) { return c.a < 0; });
  }
}
