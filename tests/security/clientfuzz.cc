// clientfuzz: a hostile local program feeding dipcd fuzzed client frames over its Unix socket (the path every
// program's calls take), end to end: valid requests of every client operation with bytes flipped, truncated or
// extended, random headers (kinds, ops, ids, lengths), cancels of unknown requests, and descriptors of the wrong
// kind passed along (eventfd, pipe, memfd where a userfaultfd is expected). Deterministic for a seed.
//
//   clientfuzz SEED CONNECTIONS
//
// Each connection sends a few frames, reads whatever comes back for a moment and closes (or is closed). Prints
// "sent=N answers=A closed_by_daemon=C" and exits 0 if the daemon still answers a status request at the end, 1 if
// not.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "common/fd_passing.h"
#include "common/frame.h"
#include "common/unix_socket.h"
#include "ipc/protocol.h"

namespace {

namespace ipc = dipc::ipc;
using dipc::Bytes;

std::mt19937_64 rng;
uint64_t rnd(uint64_t n) { return n ? rng() % n : 0; }

// A valid body for a client operation, to be mutated.
Bytes valid_body(uint16_t op) {
  switch (op) {
    case ipc::kSemGet: case ipc::kMsgGet: case ipc::kShmGet:
      return ipc::encode_body(ipc::GetReq{static_cast<int32_t>(rnd(1 << 20)), static_cast<int32_t>(rnd(300)),
                                          static_cast<int32_t>(rng()), rnd(1 << 20)});
    case ipc::kSemOp: {
      ipc::SemOpReq q;
      q.id = static_cast<int32_t>(rng());
      for (uint64_t i = rnd(5); i > 0; --i)
        q.sops.push_back(ipc::SemBuf{static_cast<uint16_t>(rnd(4)), static_cast<int16_t>(rnd(5) - 2),
                                     static_cast<int16_t>(04000)});
      return ipc::encode_body(q);
    }
    case ipc::kMsgSnd: {
      ipc::MsgSndReq q;
      q.id = static_cast<int32_t>(rng());
      q.mtype = static_cast<int64_t>(rnd(4));
      q.text.assign(rnd(64), 'x');
      q.flg = 04000;
      return ipc::encode_body(q);
    }
    case ipc::kMsgRcv:
      return ipc::encode_body(ipc::MsgRcvReq{static_cast<int32_t>(rng()), rnd(100), static_cast<int64_t>(rnd(3)), 04000});
    case ipc::kShmAt:
      return ipc::encode_body(ipc::ShmAtReq{static_cast<int32_t>(rng()), static_cast<int32_t>(rnd(2) ? 010000 : 0)});
    case ipc::kShmAttached: case ipc::kShmDt: case ipc::kShmAttachCheck: case ipc::kShmForget:
      return ipc::encode_body(ipc::ShmAttachReq{static_cast<int32_t>(rng()), rng(), rng(), static_cast<int32_t>(rng()),
                                                rnd(2) ? rng() : 0, rnd(4)});
    case ipc::kHello:
      return ipc::encode_body(ipc::HelloReq{});
    default: {
      Bytes b(rnd(48));
      for (auto& x : b) x = static_cast<uint8_t>(rng());
      return b;
    }
  }
}

Bytes mutate(Bytes b) {
  switch (rnd(4)) {
    case 0:
      for (uint64_t i = rnd(4) + 1; i > 0 && !b.empty(); --i) b[rnd(b.size())] ^= static_cast<uint8_t>(1 + rnd(255));
      break;
    case 1:
      b.resize(rnd(b.size() + 1));
      break;
    case 2:
      for (uint64_t i = rnd(16) + 1; i > 0; --i) b.push_back(static_cast<uint8_t>(rng()));
      break;
    default:
      break;  // valid as is: the daemon must answer it (with an errno)
  }
  return b;
}

int wrong_fd() {
  switch (rnd(3)) {
    case 0: return eventfd(0, EFD_CLOEXEC);
    case 1: {
      int p[2];
      if (pipe2(p, O_CLOEXEC) != 0) return -1;
      close(p[1]);
      return p[0];
    }
    default: return memfd_create("clientfuzz", MFD_CLOEXEC);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: clientfuzz SEED CONNECTIONS\n");
    return 2;
  }
  rng.seed(strtoull(argv[1], nullptr, 0));
  int conns = atoi(argv[2]);
  static const uint16_t kOps[] = {ipc::kHello, ipc::kSemGet, ipc::kSemOp, ipc::kSemCtl, ipc::kMsgGet, ipc::kMsgSnd,
                                  ipc::kMsgRcv, ipc::kMsgCtl, ipc::kShmGet, ipc::kShmAt, ipc::kShmAttached,
                                  ipc::kShmDt, ipc::kShmAttachCheck, ipc::kShmNotes, ipc::kShmForget, ipc::kShmCtl,
                                  ipc::kCancel, ipc::kAdminStatus, ipc::kAdminObjects,
                                  ipc::kAdminEnable, 0, 99, 0xffff};
  long sent = 0, answers = 0, closed = 0;
  for (int c = 0; c < conns; ++c) {
    auto fd = dipc::unix_connect(dipc::default_socket_name());
    if (!fd) {
      fprintf(stderr, "clientfuzz: connect: %s\n", fd.status().str().c_str());
      return 1;
    }
    Bytes out;
    int pass = -1;
    // A note channel of its own (kShmNotes) now and then, with mutated notes on it: dipcd reads them at its next
    // drain (the requests below cause some).
    int chan[2] = {-1, -1};
    if (rnd(3) == 0 && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, chan) == 0) {
      Bytes hello;
      dipc::append_frame(hello, dipc::FrameHeader{dipc::FrameKind::kRequest, ipc::kShmNotes, 7, 0, 0}, {});
      (void)dipc::send_with_fd(*fd, hello.data(), hello.size(), chan[1]);
      close(chan[1]);
      for (uint64_t n = rnd(8); n > 0; --n) {
        static const uint16_t kNotes[] = {ipc::kShmDt, ipc::kShmAttached, ipc::kShmForget, ipc::kShmAt, 0xffff};
        uint16_t op = kNotes[rnd(sizeof kNotes / sizeof kNotes[0])];
        Bytes note;
        dipc::append_frame(note, dipc::FrameHeader{rnd(6) ? dipc::FrameKind::kOneWay : static_cast<dipc::FrameKind>(rnd(8)),
                                                   op, rnd(4), 0, 0},
                           mutate(valid_body(op)));
        if (rnd(8) == 0) note.resize(rnd(note.size() + 1));  // a cut one
        (void)!send(chan[0], note.data(), note.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        ++sent;
      }
    }
    for (uint64_t n = rnd(6) + 1; n > 0; --n) {
      uint16_t op = kOps[rnd(sizeof kOps / sizeof kOps[0])];
      Bytes body = mutate(valid_body(op));
      auto kind = rnd(8) == 0 ? static_cast<dipc::FrameKind>(rnd(8))
                  : op == ipc::kCancel ? dipc::FrameKind::kOneWay
                                       : dipc::FrameKind::kRequest;
      size_t start = out.size();
      dipc::append_frame(out, dipc::FrameHeader{kind, op, rnd(4), 0, 0}, body);
      if (rnd(10) == 0) {  // a lying length field
        uint32_t len = static_cast<uint32_t>(rng());
        for (int i = 0; i < 4; ++i) out[start + 20 + static_cast<size_t>(i)] = static_cast<uint8_t>(len >> (24 - 8 * i));
      }
      ++sent;
    }
    if (rnd(3) == 0) pass = wrong_fd();
    if (pass >= 0) {
      (void)dipc::send_with_fd(*fd, out.data(), out.size(), pass);
      close(pass);
    } else {
      (void)!send(*fd, out.data(), out.size(), MSG_NOSIGNAL);
    }
    // Whatever comes back within a moment (answers carry descriptors sometimes: closed at once).
    uint8_t buf[4096];
    pollfd p{*fd, POLLIN, 0};
    while (poll(&p, 1, 20) > 0) {
      ssize_t r = dipc::recv_with_fds(*fd, buf, sizeof buf, MSG_DONTWAIT, [](int f) { close(f); });
      if (r <= 0) {
        ++closed;
        break;
      }
      ++answers;
    }
    close(*fd);
    if (chan[0] >= 0) close(chan[0]);
  }
  // Still there, still answering.
  auto fd = dipc::unix_connect(dipc::default_socket_name());
  Bytes req;
  dipc::append_frame(req, dipc::FrameHeader{dipc::FrameKind::kRequest, ipc::kAdminStatus, 1, 0, 0}, {});
  bool alive = fd && send(*fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size());
  if (alive) {
    pollfd p{*fd, POLLIN, 0};
    uint8_t buf[64];
    alive = poll(&p, 1, 10000) == 1 && recv(*fd, buf, sizeof buf, 0) > 0;
  }
  printf("sent=%ld answers=%ld closed_by_daemon=%ld\nalive=%d\n", sent, answers, closed, alive ? 1 : 0);
  return alive ? 0 : 1;
}
