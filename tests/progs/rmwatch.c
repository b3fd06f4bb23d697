/* rmwatch sem|msg ID PID: removes a semaphore set or queue the moment process PID is seen sleeping (state S in
 * /proc/PID/stat), as programs that wait for a peer to block before they remove or signal do. Prints "watching",
 * then "rm=RESULT" ("rm=-1 ERRNO_NAME"), or "rm=timeout" if PID did not sleep within 30 s. Polls, yielding the CPU.
 * Plain SysV code. Exit 0 (the caller checks the lines), 2 on bad usage. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <time.h>

static char state(const char *path) {
  char buf[512];
  FILE *f = fopen(path, "r");
  if (!f) return '?';
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  return p && p[1] && p[2] ? p[2] : '?';
}

int main(int argc, char **argv) {
  if (argc != 4 || (strcmp(argv[1], "sem") && strcmp(argv[1], "msg"))) {
    fprintf(stderr, "usage: rmwatch sem|msg ID PID\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  int id = atoi(argv[2]);
  char path[64];
  snprintf(path, sizeof path, "/proc/%s/stat", argv[3]);
  printf("watching\n");
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while (state(path) != 'S') {
    clock_gettime(CLOCK_MONOTONIC, &t);
    if (t.tv_sec - t0.tv_sec > 30) {
      printf("rm=timeout\n");
      return 0;
    }
    sched_yield();
  }
  long r = !strcmp(argv[1], "sem") ? semctl(id, 0, IPC_RMID) : msgctl(id, IPC_RMID, NULL);
  if (r < 0) printf("rm=-1 %s\n", strerrorname_np(errno));
  else printf("rm=%ld\n", r);
  return 0;
}
