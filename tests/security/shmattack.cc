// shmattack: what a user allowed only a read-only attach of a segment tries with the descriptors dipcd hands out.
//
//   shmattack SHMID
//
// Speaks the preload's protocol directly: kShmAt{SHMID, SHM_RDONLY} gives the node's view memfd; then
//   reopen=      open("/proc/self/fd/N", O_RDWR) of that memfd (a writable descriptor of the segment)
//   mmaprw=      mmap(PROT_WRITE, MAP_SHARED) of the descriptor received
//   fakeuffd=    kShmAttached (read-write) handing over an eventfd instead of a userfaultfd
//   rwattach=    kShmAttached (read-write) with a real userfaultfd for a writable mapping
//   rwnote=      the one-way kShmAttached (read-write) with a real userfaultfd and the read-only view, then
//                kShmAttachCheck: its answer (the note must not have been counted: ESTALE)
// and on the note channel (docs/ARCHITECTURE.md, "The note channel"):
//   foreignchannel=  kShmNotes handing over a socket whose peer is not this process (a second connection to dipcd)
//   channel=         kShmNotes with a SOCK_SEQPACKET pair of its own (allowed)
//   roattach=        kShmAttached SHM_RDONLY with a real userfaultfd kept under a token (allowed)
//   rwrevive=        its detach note keeping the token, then a note re-attaching it read-write on that userfaultfd,
//                    then kShmAttachCheck: its answer (the note must not have been counted: ESTALE)
//   flood_full=1     notes written until the channel is full (EAGAIN), flood_notes= how many
//   flood_served=    a request's answer while the channel is full (dipcd reads a bounded number and answers)
// Each prints 0 (it worked: the attack succeeded) or -1 ERRNO_NAME. "wrote=1" if a write reached the segment.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/fd_passing.h"
#include "common/frame.h"
#include "common/unix_socket.h"
#include "ipc/protocol.h"

namespace {

uint64_t g_next = 1;

// Sends one request (with a descriptor if pass_fd >= 0) and waits for its answer; *got_fd gets a passed one.
int roundtrip(int sock, uint16_t op, const dipc::Bytes& body, int pass_fd, dipc::Bytes* resp, int* got_fd) {
  dipc::Bytes req;
  dipc::append_frame(req, dipc::FrameHeader{dipc::FrameKind::kRequest, op, g_next++, 0, 0}, body);
  ssize_t n = pass_fd >= 0 ? dipc::send_with_fd(sock, req.data(), req.size(), pass_fd)
                           : send(sock, req.data(), req.size(), MSG_NOSIGNAL);
  if (n != static_cast<ssize_t>(req.size())) return EPIPE;
  dipc::FrameParser parser;
  uint8_t buf[4096];
  for (;;) {
    dipc::FrameParser::Frame f;
    if (parser.next(f)) {
      if (resp) *resp = f.payload;
      return f.header.status;
    }
    ssize_t r = dipc::recv_with_fds(sock, buf, sizeof buf, 0, [&](int fd) {
      if (got_fd && *got_fd < 0)
        *got_fd = fd;
      else
        close(fd);
    });
    if (r <= 0) return EPIPE;
    parser.feed(buf, static_cast<size_t>(r));
  }
}

const char* result(int err) {
  static std::string s;
  s = err == 0 ? "0" : std::string("-1 ") + strerrorname_np(err);
  return s.c_str();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: shmattack SHMID\n");
    return 2;
  }
  int id = atoi(argv[1]);
  auto sock = dipc::unix_connect(dipc::default_socket_name());
  if (!sock) {
    fprintf(stderr, "shmattack: no daemon\n");
    return 1;
  }
  dipc::Bytes resp;
  int view = -1;
  int st = roundtrip(*sock, dipc::ipc::kShmAt, dipc::ipc::encode_body(dipc::ipc::ShmAtReq{id, SHM_RDONLY}), -1, &resp,
                     &view);
  dipc::ipc::ShmAtResp at;
  if (st || view < 0 || !dipc::ipc::decode_body(resp, at)) {
    printf("shmat=%s\n", result(st ? st : EPROTO));
    return 0;
  }
  printf("shmat=0\n");
  const size_t len = at.mapped;

  int rw = open(("/proc/self/fd/" + std::to_string(view)).c_str(), O_RDWR | O_CLOEXEC);
  printf("reopen=%s\n", result(rw >= 0 ? 0 : errno));
  int wfd = rw >= 0 ? rw : view;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, wfd, 0);
  printf("mmaprw=%s\n", result(p != MAP_FAILED ? 0 : errno));
  if (p != MAP_FAILED) {
    // Writing through the view lands in the node's copy of the segment without dipcd's say.
    static_cast<volatile char*>(p)[0] = 'X';
    printf("wrote=1\n");
    munmap(p, len);
  }

  // A read-only mapping to register, as the preload would.
  void* m = mmap(nullptr, len, PROT_READ, MAP_SHARED, view, 0);
  if (m == MAP_FAILED) return 1;
  auto addr = reinterpret_cast<uint64_t>(m);
  int efd = eventfd(0, EFD_CLOEXEC);
  st = roundtrip(*sock, dipc::ipc::kShmAttached, dipc::ipc::encode_body(dipc::ipc::ShmAttachReq{id, addr, len, 0}),
                 efd, nullptr, nullptr);
  printf("fakeuffd=%s\n", result(st));
  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  uffdio_api api{UFFD_API, 0, 0};
  if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) != 0) {
    printf("rwattach=skipped\n");
    return 0;
  }
  uffdio_register reg{};
  reg.range.start = addr;
  reg.range.len = len;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  (void)ioctl(uffd, UFFDIO_REGISTER, &reg);
  st = roundtrip(*sock, dipc::ipc::kShmAttached, dipc::ipc::encode_body(dipc::ipc::ShmAttachReq{id, addr, len, 0}),
                 uffd, nullptr, nullptr);
  printf("rwattach=%s\n", result(st));
  int uffd2 = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  uffdio_api api2{UFFD_API, 0, 0};
  if (uffd2 < 0 || ioctl(uffd2, UFFDIO_API, &api2) != 0) {
    printf("rwnote=skipped\n");
    return 0;
  }
  dipc::Bytes note;
  dipc::append_frame(note, dipc::FrameHeader{dipc::FrameKind::kOneWay, dipc::ipc::kShmAttached, g_next++, 0, 0},
                     dipc::ipc::encode_body(dipc::ipc::ShmAttachReq{id, addr, len, 0}));
  const int fds[2] = {uffd2, view};
  if (dipc::send_with_fds(*sock, note.data(), note.size(), fds, 2) != static_cast<ssize_t>(note.size())) return 1;
  st = roundtrip(*sock, dipc::ipc::kShmAttachCheck, dipc::ipc::encode_body(dipc::ipc::ShmAttachReq{id, addr, 0, 0}),
                 -1, nullptr, nullptr);
  printf("rwnote=%s\n", result(st));

  auto other = dipc::unix_connect(dipc::default_socket_name());
  st = other ? roundtrip(*sock, dipc::ipc::kShmNotes, {}, *other, nullptr, nullptr) : EPROTO;
  printf("foreignchannel=%s\n", result(st));
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0) return 1;
  st = roundtrip(*sock, dipc::ipc::kShmNotes, {}, sv[1], nullptr, nullptr);
  close(sv[1]);
  printf("channel=%s\n", result(st));
  auto note_on = [&](uint16_t op, const dipc::ipc::ShmAttachReq& r) {
    dipc::Bytes b;
    dipc::append_frame(b, dipc::FrameHeader{dipc::FrameKind::kOneWay, op, g_next++, 0, 0}, dipc::ipc::encode_body(r));
    return send(sv[0], b.data(), b.size(), MSG_DONTWAIT | MSG_NOSIGNAL) == static_cast<ssize_t>(b.size());
  };
  void* m2 = mmap(nullptr, len, PROT_READ, MAP_SHARED, view, 0);
  int uffd3 = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  uffdio_api api3{UFFD_API, 0, 0};
  if (m2 == MAP_FAILED || uffd3 < 0 || ioctl(uffd3, UFFDIO_API, &api3) != 0) return 1;
  auto addr2 = reinterpret_cast<uint64_t>(m2);
  reg.range.start = addr2;
  (void)ioctl(uffd3, UFFDIO_REGISTER, &reg);
  constexpr uint64_t kTok = 7;
  st = roundtrip(*sock, dipc::ipc::kShmAttached,
                 dipc::ipc::encode_body(dipc::ipc::ShmAttachReq{id, addr2, len, SHM_RDONLY, 0, kTok}), uffd3, nullptr,
                 nullptr);
  printf("roattach=%s\n", result(st));
  if (!note_on(dipc::ipc::kShmDt, {id, addr2, 0, 0, 0, kTok}) || !note_on(dipc::ipc::kShmAttached, {id, addr2, len, 0, 0, kTok}))
    return 1;
  st = roundtrip(*sock, dipc::ipc::kShmAttachCheck, dipc::ipc::encode_body(dipc::ipc::ShmAttachReq{id, addr2, 0, 0}),
                 -1, nullptr, nullptr);
  printf("rwrevive=%s\n", result(st));

  long notes = 0;
  while (notes < 1000000 && note_on(dipc::ipc::kShmForget, {id, 0, 0, 0, 0, 1000 + static_cast<uint64_t>(notes)})) ++notes;
  printf("flood_full=%d\nflood_notes=%ld\n", errno == EAGAIN ? 1 : 0, notes);
  st = roundtrip(*sock, dipc::ipc::kShmAttachCheck, dipc::ipc::encode_body(dipc::ipc::ShmAttachReq{id, addr2, 0, 0}),
                 -1, nullptr, nullptr);
  printf("flood_served=%s\n", result(st));
  return 0;
}
