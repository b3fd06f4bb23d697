/* wakeups: the programs bench/wakeups.sh runs to count the context switches of one remote semop and one read miss.
 *   wakeups create PAGES        (on the home node) a dipc segment of PAGES pages, every page written here, and a
 *                               dipc semaphore set; prints "SHMID SEMID" and exits (both outlive it)
 *   wakeups semop SEMID N       N x (semop +1, semop -1) on semaphore 0: 2N remote calls
 *   wakeups ping SEMID N        N ping-pong rounds with "pong" on the home: V on semaphore 1, then P on semaphore 0,
 *                               which waits at the home (a worker asleep in the kernel set) until pong's V
 *   wakeups pong SEMID N        (on the home node) N x (P on semaphore 1, V on semaphore 0); not measured
 *   wakeups wait SEMID N        N x P on semaphore 0, each of which waits at the home until "post" sees it there
 *   wakeups post SEMID N        (on the home node) N x (V on semaphore 0 once GETNCNT shows a waiter, looked at
 *                               every 20 us); not measured
 *   wakeups read SHMID PAGES    reads one word of every page: PAGES read misses (checks the home's pattern)
 *   wakeups rm SHMID SEMID      removes both
 * Each measuring mode prints "ops N ns T vcsw V ivcsw I" (its own context switches from getrusage). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <time.h>

#include <dipc/dipc.h>

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void report(long ops, long long ns, const struct rusage *a, const struct rusage *b) {
  printf("ops %ld ns %lld vcsw %ld ivcsw %ld\n", ops, ns, b->ru_nvcsw - a->ru_nvcsw, b->ru_nivcsw - a->ru_nivcsw);
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  const char *mode = argv[1];
  if (!strcmp(mode, "create")) {
    long pages = atol(argv[2]);
    int shmid = shmget(IPC_PRIVATE, (size_t)pages * 4096, IPC_CREAT | IPC_DIPC | 0600);
    int semid = semget(IPC_PRIVATE, 2, IPC_CREAT | IPC_DIPC | 0600);
    if (shmid < 0 || semid < 0) { perror("get"); return 1; }
    volatile long *p = shmat(shmid, NULL, 0);
    if (p == (void *)-1) { perror("shmat"); return 1; }
    for (long i = 0; i < pages; i++) p[i * 512] = i + 1;
    shmdt((void *)p);
    printf("%d %d\n", shmid, semid);
    return 0;
  }
  if (!strcmp(mode, "rm") && argc == 4) {
    shmctl(atoi(argv[2]), IPC_RMID, NULL);
    semctl(atoi(argv[3]), 0, IPC_RMID);
    return 0;
  }
  if (argc < 4) return 2;
  int id = atoi(argv[2]);
  long n = atol(argv[3]);
  struct rusage a, b;
  if (!strcmp(mode, "semop")) {
    struct sembuf up = {0, 1, 0}, down = {0, -1, 0};
    if (semop(id, &up, 1) || semop(id, &down, 1)) { perror("semop"); return 1; }  /* warm: connection open */
    getrusage(RUSAGE_SELF, &a);
    long long t0 = now_ns();
    for (long i = 0; i < n; i++)
      if (semop(id, &up, 1) || semop(id, &down, 1)) { perror("semop"); return 1; }
    long long t1 = now_ns();
    getrusage(RUSAGE_SELF, &b);
    report(2 * n, t1 - t0, &a, &b);
    return 0;
  }
  if (!strcmp(mode, "pong")) {
    struct sembuf p1 = {1, -1, 0}, v0 = {0, 1, 0};
    for (long i = 0; i < n + 1; i++)  /* + 1: ping's warm-up round */
      if (semop(id, &p1, 1) || semop(id, &v0, 1)) { perror("semop"); return 1; }
    return 0;
  }
  if (!strcmp(mode, "post")) {
    struct sembuf v0 = {0, 1, 0};
    struct timespec gap = {0, 20000};
    for (long i = 0; i < n + 1; i++) {  /* + 1: wait's warm-up */
      while (semctl(id, 0, GETNCNT) < 1) nanosleep(&gap, NULL);
      if (semop(id, &v0, 1)) { perror("semop"); return 1; }
    }
    return 0;
  }
  if (!strcmp(mode, "wait")) {
    struct sembuf p0 = {0, -1, 0};
    if (semop(id, &p0, 1)) { perror("semop"); return 1; }  /* warm */
    getrusage(RUSAGE_SELF, &a);
    long long t0 = now_ns();
    for (long i = 0; i < n; i++)
      if (semop(id, &p0, 1)) { perror("semop"); return 1; }
    long long t1 = now_ns();
    getrusage(RUSAGE_SELF, &b);
    report(n, t1 - t0, &a, &b);
    return 0;
  }
  if (!strcmp(mode, "ping")) {
    struct sembuf v1 = {1, 1, 0}, p0 = {0, -1, 0};
    if (semop(id, &v1, 1) || semop(id, &p0, 1)) { perror("semop"); return 1; }  /* warm */
    getrusage(RUSAGE_SELF, &a);
    long long t0 = now_ns();
    for (long i = 0; i < n; i++)
      if (semop(id, &v1, 1) || semop(id, &p0, 1)) { perror("semop"); return 1; }
    long long t1 = now_ns();
    getrusage(RUSAGE_SELF, &b);
    report(n, t1 - t0, &a, &b);
    return 0;
  }
  if (!strcmp(mode, "read")) {
    volatile long *p = shmat(id, NULL, SHM_RDONLY);
    if (p == (void *)-1) { perror("shmat"); return 1; }
    if (p[0] != 1) { fprintf(stderr, "wakeups: page 0 holds %ld\n", p[0]); return 1; }  /* warm */
    getrusage(RUSAGE_SELF, &a);
    long long t0 = now_ns();
    for (long i = 1; i < n; i++)
      if (p[i * 512] != i + 1) { fprintf(stderr, "wakeups: page %ld holds %ld\n", i, p[i * 512]); return 1; }
    long long t1 = now_ns();
    getrusage(RUSAGE_SELF, &b);
    report(n - 1, t1 - t0, &a, &b);
    return 0;
  }
  return 2;
}
