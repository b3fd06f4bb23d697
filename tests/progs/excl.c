/* excl KEY: semget(KEY, 1, IPC_CREAT|IPC_EXCL|IPC_DIPC) and prints "won" or the errno name. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>

#include <dipc/dipc.h>

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  int r = semget((key_t)strtol(argv[1], NULL, 0), 1, IPC_CREAT | IPC_EXCL | IPC_DIPC | 0600);
  if (r >= 0) printf("won %d\n", r);
  else printf("%s\n", strerrorname_np(errno));
  return 0;
}
