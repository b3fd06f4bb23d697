/* hog: what a local user can make dipcd hold. Opens N connections to dipcd ($DIPC_SOCKET) and on each sends the
 * header of a 4 MiB request followed by KIB KiB of its body, never the rest: partially received frames the daemon
 * must buffer. Then waits (bounded, 20 s) until at most MAXKEPT connections are still open, prints
 * "kept=K dropped=D" and "held" and waits to be killed (SIGTERM/SIGKILL), keeping what it has.
 *
 *   hog N KIB MAXKEPT
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "dipc_socket_addr.h"

static int connect_daemon(void) {
  struct sockaddr_un a;
  socklen_t len = dipc_socket_addr(&a);
  if (!len) return -1;
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&a, len) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void be32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: hog N KIB MAXKEPT\n");
    return 2;
  }
  int n = atoi(argv[1]), maxkept = atoi(argv[3]);
  size_t body = (size_t)atoi(argv[2]) << 10;
  char *junk = calloc(1, body + 1);
  int *fds = calloc((size_t)n, sizeof *fds);
  int kept = 0, dropped = 0;
  for (int i = 0; i < n; i++) {
    fds[i] = connect_daemon();
    if (fds[i] < 0) { dropped++; continue; }
    uint8_t h[24] = {0};
    be32(h, 0x44495043);       /* magic */
    h[4] = 3;                  /* version: kFrameVersion of common/frame.h */
    h[5] = 2;                  /* request */
    h[7] = 3;                  /* op: semop */
    h[15] = (uint8_t)(i + 1);  /* id */
    be32(h + 20, 4u << 20);    /* length: 4 MiB, of which only KIB KiB follow */
    if (send(fds[i], h, sizeof h, MSG_NOSIGNAL) != (ssize_t)sizeof h ||
        (body && send(fds[i], junk, body, MSG_NOSIGNAL) != (ssize_t)body)) {
      close(fds[i]);
      fds[i] = -1;
      dropped++;
    }
  }
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    kept = 0;
    for (int i = 0; i < n; i++) {
      if (fds[i] < 0) continue;
      struct pollfd p = {fds[i], POLLIN | POLLRDHUP, 0};
      if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLIN))) {
        close(fds[i]);
        fds[i] = -1;
        dropped++;
      } else {
        kept++;
      }
    }
    clock_gettime(CLOCK_MONOTONIC, &t);
    if (kept <= maxkept || t.tv_sec - t0.tv_sec > 20) break;
    struct pollfd none;
    poll(&none, 0, 50); /* the daemon works through the backlog; look again */
  }
  printf("kept=%d dropped=%d\nheld\n", kept, dropped);
  fflush(stdout);
  for (;;) pause();
}
