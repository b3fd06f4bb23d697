/* squat: binds the dipc socket ($DIPC_SOCKET, '@' = abstract) before dipcd does, as a hostile local user would,
 * prints "squatting", then accepts connections and never answers (holding each one) until killed. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(void) {
  const char *name = getenv("DIPC_SOCKET");
  if (!name || !*name) name = "@dipc";
  struct sockaddr_un a;
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  size_t n = strlen(name);
  if (n >= sizeof a.sun_path) return 2;
  memcpy(a.sun_path, name, n);
  if (name[0] == '@') a.sun_path[0] = '\0';
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (name[0] == '@' ? 0 : 1));
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
