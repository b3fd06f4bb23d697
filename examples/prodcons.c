/* A producer/consumer over a System V message queue guarded by semaphores: plain SysV code.
 * The IPC_DIPC flag makes the queue and the semaphore set cluster-wide; without dipc the kernel ignores the bit and
 * the program runs on one machine as it always did.
 *
 *   prodcons consumer NPRODUCERS NITEMS     creates the objects, receives NPRODUCERS*NITEMS items, removes them
 *   prodcons producer ID NITEMS             sends NITEMS items tagged with ID
 *
 * Semaphore 0 counts free slots (a bounded buffer of 8 items); semaphore 1 counts producers that attached.
 *
 * Portable across the nodes of a mixed cluster (x86-64, i386, s390x...): dipc carries message texts as opaque bytes,
 * as the kernel does, so the program lays out its own data the same way on every architecture: a body of a fixed
 * size (not sizeof of a struct with a long in it, which differs between 32- and 64-bit), its number big-endian. The
 * semaphore value is passed to semctl in a union semun, as semctl(2) requires (a plain int reads as 0 on a 64-bit
 * big-endian machine).
 */
#include <endian.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <time.h>
#include <unistd.h>

#include <dipc/dipc.h>

#define KEY_SEM 0x5eed0001
#define KEY_MSG 0x5eed0002
#define SLOTS 8

/* The message body: BODY_SIZE bytes on every architecture. */
struct item {
  long mtype;       /* producer id + 1 (small: a 32-bit receiver sees it whole) */
  uint32_t seq_be;  /* item number, big-endian */
  char text[32];
};
#define BODY_SIZE (sizeof(uint32_t) + 32)

union semun { /* semctl(2): the caller defines it */
  int val;
  struct semid_ds *buf;
  unsigned short *array;
};

static const char *node(void) {
  const char *n = getenv("DIPC_NODE");
  return n ? n : "local";
}

static void die(const char *what) {
  fprintf(stderr, "prodcons: %s: %s\n", what, strerror(errno));
  exit(1);
}

static int wait_for(int (*get)(void), const char *what) {
  for (int i = 0; i < 600; i++) { /* up to 30 s for the consumer to create the objects */
    int id = get();
    if (id >= 0) return id;
    if (errno != ENOENT) die(what);
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  errno = ETIMEDOUT;
  die(what);
  return -1;
}
static int get_msg(void) { return msgget(KEY_MSG, IPC_DIPC | 0666); }
static int get_sem(void) { return semget(KEY_SEM, 2, IPC_DIPC | 0666); }

static int consumer(int producers, int items) {
  int semid = semget(KEY_SEM, 2, IPC_CREAT | IPC_DIPC | 0666);
  if (semid < 0) die("semget");
  union semun arg = {.val = SLOTS};
  if (semctl(semid, 0, SETVAL, arg) < 0) die("semctl SETVAL");
  int msqid = msgget(KEY_MSG, IPC_CREAT | IPC_DIPC | 0666); /* created last: producers start once it exists */
  if (msqid < 0) die("msgget");
  printf("consumer on %s: queue %d, semaphores %d, waiting for %d x %d items\n", node(), msqid, semid, producers,
         items);
  fflush(stdout);
  int *next = calloc((size_t)producers, sizeof *next);
  long total = (long)producers * items;
  for (long got = 0; got < total; got++) {
    struct item it;
    ssize_t n = msgrcv(msqid, &it, BODY_SIZE, 0, 0);
    if (n < 0) die("msgrcv");
    int p = (int)it.mtype - 1;
    int seq = (int)be32toh(it.seq_be);
    if (n != (ssize_t)BODY_SIZE || p < 0 || p >= producers || seq != next[p]) {
      fprintf(stderr, "prodcons: out of order, duplicate or malformed item: producer %d seq %d (expected %d), %zd bytes\n",
              p, seq, p >= 0 && p < producers ? next[p] : -1, n);
      return 1;
    }
    next[p]++;
    struct sembuf up = {0, 1, 0};
    if (semop(semid, &up, 1) < 0) die("semop V(slots)");
  }
  for (int p = 0; p < producers; p++) printf("consumer on %s: producer %d delivered %d items in order\n", node(), p, next[p]);
  printf("consumer on %s: received %ld items, none lost, none duplicated\n", node(), total);
  msgctl(msqid, IPC_RMID, NULL);
  semctl(semid, 0, IPC_RMID);
  free(next);
  return 0;
}

static int producer(int id, int items) {
  int msqid = wait_for(get_msg, "msgget");
  int semid = wait_for(get_sem, "semget");
  struct sembuf joined = {1, 1, 0};
  if (semop(semid, &joined, 1) < 0) die("semop joined");
  for (int i = 0; i < items; i++) {
    struct sembuf down = {0, -1, 0};
    if (semop(semid, &down, 1) < 0) die("semop P(slots)");
    struct item it = {id + 1, htobe32((uint32_t)i), ""};
    snprintf(it.text, sizeof it.text, "item %d from %s", i, node());
    if (msgsnd(msqid, &it, BODY_SIZE, 0) < 0) die("msgsnd");
  }
  printf("producer %d on %s: sent %d items\n", id, node(), items);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "consumer") == 0) return consumer(atoi(argv[2]), atoi(argv[3]));
  if (argc == 4 && strcmp(argv[1], "producer") == 0) return producer(atoi(argv[2]), atoi(argv[3]));
  fprintf(stderr, "usage: prodcons consumer NPRODUCERS NITEMS | prodcons producer ID NITEMS\n");
  return 2;
}
