/* excl KEY [BARRIER_ID]: semget(KEY, 1, IPC_CREAT|IPC_EXCL|IPC_DIPC|0600); prints "won ID" or the errno name
 * ("EEXIST"). With BARRIER_ID it first waits for semaphore 0 of that set to become zero, so several racers on
 * different nodes can be released at the same moment. Exit 0 when it printed a result, 1 if the barrier failed. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>

#include <dipc/dipc.h>

int main(int argc, char **argv) {
  if (argc != 2 && argc != 3) {
    fprintf(stderr, "usage: excl KEY [BARRIER_ID]\n");
    return 2;
  }
  if (argc == 3) {
    struct sembuf zero = {0, 0, 0};
    if (semop(atoi(argv[2]), &zero, 1) < 0) {
      fprintf(stderr, "excl: barrier: %s\n", strerror(errno));
      return 1;
    }
  }
  int r = semget((key_t)strtol(argv[1], NULL, 0), 1, IPC_CREAT | IPC_EXCL | IPC_DIPC | 0600);
  if (r >= 0) printf("won %d\n", r);
  else printf("%s\n", strerrorname_np(errno));
  return 0;
}
