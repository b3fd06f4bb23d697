/* forkshm ROUNDS NSEG: fork under a shared memory load with many attaches. Each round makes NSEG private segments
 * (IPC_DIPC), attaches them all, removes them (IPC_RMID: each lives on while attached), forks, and the parent
 * detaches everything at once: the segments then live only through the child's inherited attaches, which fork()
 * must have counted before it returned, as the kernel counts them. The child checks each segment: IPC_STAT works
 * and shows it attached, and a value it writes reads back. Prints "rounds=N bad=M" (M: checks that failed in
 * children) and exits 0; 1 on a setup failure, 2 on bad usage. Plain SysV code. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dipc/dipc.h>

#define MAXSEG 64

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: forkshm ROUNDS NSEG\n");
    return 2;
  }
  int rounds = atoi(argv[1]), nseg = atoi(argv[2]);
  if (nseg < 1 || nseg > MAXSEG) return 2;
  setvbuf(stdout, NULL, _IOLBF, 0);
  int bad = 0;
  for (int r = 0; r < rounds; r++) {
    int ids[MAXSEG];
    volatile int *p[MAXSEG];
    for (int i = 0; i < nseg; i++) {
      ids[i] = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600 | IPC_DIPC);
      if (ids[i] < 0) { perror("forkshm: shmget"); return 1; }
      p[i] = shmat(ids[i], NULL, 0);
      if (p[i] == (void *)-1) { perror("forkshm: shmat"); return 1; }
      p[i][0] = r;
      if (shmctl(ids[i], IPC_RMID, NULL) < 0) { perror("forkshm: IPC_RMID"); return 1; }
    }
    pid_t c = fork();
    if (c < 0) { perror("forkshm: fork"); return 1; }
    if (c == 0) {
      int b = 0;
      for (int i = 0; i < nseg; i++) {
        struct shmid_ds ds;
        if (shmctl(ids[i], IPC_STAT, &ds) < 0 || ds.shm_nattch < 1) b++;
        if (p[i][0] != r) b++;
        p[i][1] = r + 1;
        if (p[i][1] != r + 1) b++;
        shmdt((const void *)p[i]);
      }
      _exit(b > 100 ? 100 : b);
    }
    for (int i = 0; i < nseg; i++) shmdt((const void *)p[i]);  /* at once: the child's attaches keep them alive */
    int st = 0;
    if (waitpid(c, &st, 0) < 0 || !WIFEXITED(st)) bad += 1000;
    else bad += WEXITSTATUS(st);
  }
  printf("rounds=%d bad=%d\n", rounds, bad);
  return 0;
}
