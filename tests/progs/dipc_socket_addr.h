/* The address of the node's dipc socket as a program sees it: $DIPC_SOCKET, default "@dipc" ('@' = abstract).
 * Shared by the test programs that talk to (or squat) the socket without the preload. */
#pragma once
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

/* Fills *a; returns the address length, or 0 when the name does not fit. */
static inline socklen_t dipc_socket_addr(struct sockaddr_un *a) {
  const char *name = getenv("DIPC_SOCKET");
  if (!name || !*name) name = "@dipc";
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  size_t n = strlen(name);
  if (n >= sizeof a->sun_path) return 0;
  memcpy(a->sun_path, name, n);
  if (name[0] == '@') a->sun_path[0] = '\0';
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (name[0] == '@' ? 0 : 1));
}
