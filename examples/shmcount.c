/* shmcount: distributed shared memory with plain System V calls. Every process attaches one segment and adds to a
 * counter in it with an atomic fetch-add, with no other synchronisation, as threads of one program would; the last
 * one to finish prints the total and removes the segment. With dipc the processes may sit on different nodes and
 * the sum is still exact: lock-prefixed instructions on a dipc segment are atomic across the cluster.
 *
 *   shmcount KEY NPROCS ITERS        (e.g. dipc-launch -H node1,node2,node3 -n 6 shmcount 0x5eed 6 100000)
 *
 * dipc moves pages as opaque bytes, so in a cluster of mixed architectures the program decides the layout of its
 * own data: here two 64-bit counters (the same size on 32- and 64-bit machines), stored big-endian and updated with
 * a compare-and-swap of the whole 8 bytes, which is atomic whatever the byte order of the node that runs it.
 */
#include <endian.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ipc.h>
#include <sys/shm.h>

#include <dipc/dipc.h> /* IPC_DIPC: the key is distributed (the kernel alone ignores the bit) */

struct shared {
  uint64_t counter_be; /* every process adds ITERS to it */
  uint64_t done_be;    /* processes finished */
};

/* Adds `n` to a big-endian counter atomically; returns the new value. */
static uint64_t add_be(uint64_t *c, uint64_t n) {
  uint64_t old = __atomic_load_n(c, __ATOMIC_RELAXED), next;
  do next = htobe64(be64toh(old) + n);
  while (!__atomic_compare_exchange_n(c, &old, next, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
  return be64toh(next);
}

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
  for (long i = 0; i < iters; i++) add_be(&s->counter_be, 1);
  const char *node = getenv("DIPC_NODE");
  printf("added %ld on %s\n", iters, node ? node : "this machine");
  if (add_be(&s->done_be, 1) == (uint64_t)nprocs) {
    long long total = (long long)be64toh(__atomic_load_n(&s->counter_be, __ATOMIC_SEQ_CST));
    printf("total %lld (expected %lld): %s\n", total, (long long)nprocs * iters,
           total == (long long)nprocs * iters ? "exact" : "WRONG");
    shmctl(id, IPC_RMID, NULL); /* destroyed once the last process has detached */
    shmdt(s);
    return total == (long long)nprocs * iters ? 0 : 1;
  }
  shmdt(s);
  return 0;
}
