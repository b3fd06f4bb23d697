/* semundo ID pause|block: atomically takes semaphore 0 of set ID (-1) and adds 2 to semaphore 1, both with SEM_UNDO,
 * prints "held" and then never returns by itself: "pause" waits in pause(); "block" waits in a semop on semaphore 2
 * that nobody satisfies (a blocked call at the set's home). Meant to be killed with SIGKILL: the undo must then
 * restore semaphore 0 (+1) and semaphore 1 (-2), and a blocked wait must be withdrawn. Plain SysV code. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 3 || (strcmp(argv[2], "pause") && strcmp(argv[2], "block"))) {
    fprintf(stderr, "usage: semundo ID pause|block\n");
    return 2;
  }
  int id = atoi(argv[1]);
  struct sembuf take[2] = {{0, -1, SEM_UNDO}, {1, 2, SEM_UNDO}};
  if (semop(id, take, 2) < 0) {
    fprintf(stderr, "semundo: semop: %s\n", strerror(errno));
    return 1;
  }
  printf("held\n");
  fflush(stdout);
  if (!strcmp(argv[2], "pause")) {
    for (;;) pause();
  }
  struct sembuf wait2 = {2, -1, 0};
  int r = semop(id, &wait2, 1);
  fprintf(stderr, "semundo: the wait on semaphore 2 returned %d (%s)\n", r, r < 0 ? strerror(errno) : "taken");
  return 1;
}
