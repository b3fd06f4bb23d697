// Descriptors passed beside the bytes of a Unix stream socket (SCM_RIGHTS): the daemon hands programs its control
// page and a segment's view memfd, programs hand it their userfaultfds. Header-only: the preload library uses it.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstring>

namespace dipc {

// recvmsg() with room for 4 descriptors; `flags` as recvmsg's (MSG_CMSG_CLOEXEC is always added). Every
// descriptor received goes to got_fd(int), which owns it from then on. *truncated (if given) tells that the kernel
// dropped descriptors that did not fit. Returns what recvmsg returns.
template <typename GotFd>
ssize_t recv_with_fds(int sock, void* buf, size_t len, int flags, GotFd&& got_fd, bool* truncated = nullptr) {
  iovec iov{buf, len};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 4)];
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = sizeof cbuf;
  ssize_t n = recvmsg(sock, &m, flags | MSG_CMSG_CLOEXEC);
  if (truncated) *truncated = n >= 0 && (m.msg_flags & MSG_CTRUNC);
  if (n < 0) return n;
  for (cmsghdr* cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
      got_fd(fd);
    }
  }
  return n;
}

// sendmsg() of [buf, buf+len) with MSG_NOSIGNAL; the `n` descriptors of `fds` (at most 2) ride on the first byte.
inline ssize_t send_with_fds(int sock, const void* buf, size_t len, const int* fds, size_t n) {
  iovec iov{const_cast<void*>(buf), len};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 2)];
  if (n > 2) n = 2;
  if (n > 0) {
    m.msg_control = cbuf;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * n);
    cmsghdr* cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * n);
    std::memcpy(CMSG_DATA(cm), fds, sizeof(int) * n);
  }
  return sendmsg(sock, &m, MSG_NOSIGNAL);
}

// sendmsg() of [buf, buf+len) with MSG_NOSIGNAL; `pass_fd` (if >= 0) rides on the first byte sent.
inline ssize_t send_with_fd(int sock, const void* buf, size_t len, int pass_fd) {
  return send_with_fds(sock, buf, len, &pass_fd, pass_fd >= 0 ? 1 : 0);
}

}  // namespace dipc
