/* shmcount: distributed shared memory with plain System V calls. Every process attaches one segment and adds to a
 * counter in it with an atomic fetch-add, with no other synchronisation, as threads of one program would; the last
 * one to finish prints the total and removes the segment. With dipc the processes may sit on different nodes and
 * the sum is still exact: lock-prefixed instructions on a dipc segment are atomic across the cluster.
 *
 *   shmcount KEY NPROCS ITERS        (e.g. dipc-launch -H node1,node2,node3 -n 6 shmcount 0x5eed 6 100000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/shm.h>

#include <dipc/dipc.h> /* IPC_DIPC: the key is distributed (the kernel alone ignores the bit) */

struct shared {
  long counter; /* every process adds ITERS to it */
  long done;    /* processes finished */
};

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: shmcount KEY NPROCS ITERS\n");
    return 2;
  }
  key_t key = (key_t)strtol(argv[1], NULL, 0);
  long nprocs = atol(argv[2]), iters = atol(argv[3]);
  int id = shmget(key, sizeof(struct shared), IPC_CREAT | IPC_DIPC | 0666);
  if (id < 0) {
    perror("shmget");
    return 1;
  }
  struct shared *s = shmat(id, NULL, 0);
  if (s == (void *)-1) {
    perror("shmat");
    return 1;
  }
  for (long i = 0; i < iters; i++) __atomic_fetch_add(&s->counter, 1, __ATOMIC_SEQ_CST);
  const char *node = getenv("DIPC_NODE");
  printf("added %ld on %s\n", iters, node ? node : "this machine");
  if (__atomic_add_fetch(&s->done, 1, __ATOMIC_SEQ_CST) == nprocs) {
    long total = __atomic_load_n(&s->counter, __ATOMIC_SEQ_CST);
    printf("total %ld (expected %ld): %s\n", total, nprocs * iters, total == nprocs * iters ? "exact" : "WRONG");
    shmctl(id, IPC_RMID, NULL); /* destroyed once the last process has detached */
    shmdt(s);
    return total == nprocs * iters ? 0 : 1;
  }
  shmdt(s);
  return 0;
}
