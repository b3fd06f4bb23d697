/* squat: binds the dipc socket ($DIPC_SOCKET, '@' = abstract) before dipcd does, as a hostile local user would,
 * prints "squatting", then accepts connections and never answers (holding each one) until killed. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "dipc_socket_addr.h"

int main(void) {
  struct sockaddr_un a;
  socklen_t len = dipc_socket_addr(&a);
  if (!len) return 2;
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, len) != 0 || listen(fd, 64) != 0) {
    perror("squat");
    return 1;
  }
  printf("squatting\n");
  fflush(stdout);
  for (;;) {
    int c = accept(fd, NULL, NULL);
    if (c < 0) return 1;
  }
}
