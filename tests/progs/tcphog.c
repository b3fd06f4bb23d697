/* tcphog: a network peer that fills a daemon's handshake slots: keeps N idle TCP connections open to HOST:PORT from
 * source address SRC, opening a new one whenever one is closed (by the daemon's handshake deadline or its limits),
 * never saying a word. Prints "holding" once the first round is out, then runs until killed.
 *
 *   tcphog HOST PORT N SRC
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in dst, src;

static int dial(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0 ||
      (connect(fd, (struct sockaddr *)&dst, sizeof dst) != 0 && errno != EINPROGRESS)) {
    close(fd);
    return -1;
  }
  return fd;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: tcphog HOST PORT N SRC\n");
    return 2;
  }
  dst.sin_family = AF_INET;
  dst.sin_port = htons((unsigned short)atoi(argv[2]));
  inet_pton(AF_INET, argv[1], &dst.sin_addr);
  src.sin_family = AF_INET;
  inet_pton(AF_INET, argv[4], &src.sin_addr);
  int n = atoi(argv[3]);
  struct pollfd *p = calloc((size_t)n, sizeof *p);
  for (int i = 0; i < n; i++) p[i].fd = dial(), p[i].events = POLLRDHUP;
  printf("holding\n");
  fflush(stdout);
  for (;;) {
    if (poll(p, (nfds_t)n, 1000) < 0) continue;
    for (int i = 0; i < n; i++) {
      if (p[i].fd >= 0 && !(p[i].revents & (POLLHUP | POLLRDHUP | POLLERR))) continue;
      if (p[i].fd >= 0) close(p[i].fd);
      p[i].fd = dial();  /* -1 (out of ports, refused): tried again on the next round */
      p[i].revents = 0;
    }
  }
}
