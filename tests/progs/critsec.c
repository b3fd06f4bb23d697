/* critsec ID ITERS: a critical section guarded by semaphore 0 of set ID. Inside, it reads semaphore 1 with GETVAL
 * and writes it back +1 with SETVAL: a read-modify-write that loses updates unless the mutual exclusion holds. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  int id = atoi(argv[1]), iters = atoi(argv[2]);
  for (int i = 0; i < iters; i++) {
    struct sembuf p = {0, -1, 0}, v = {0, 1, 0};
    if (semop(id, &p, 1) < 0) { perror("critsec: P"); return 1; }
    int x = semctl(id, 1, GETVAL);
    if (x < 0 || semctl(id, 1, SETVAL, x + 1) < 0) { perror("critsec: counter"); return 1; }
    if (semop(id, &v, 1) < 0) { perror("critsec: V"); return 1; }
  }
  printf("critsec done %d\n", iters);
  return 0;
}
