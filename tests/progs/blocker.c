/* blocker HANDLER WHAT ID: blocks in one SysV call and reports how it returned. Plain SysV code.
 *
 *   HANDLER  none            default SIGUSR1 disposition
 *            norestart       SIGUSR1 handler installed with sigaction, no SA_RESTART
 *            restart         SIGUSR1 handler with SA_RESTART (SysV IPC calls must still fail with EINTR)
 *   WHAT     sem             semop {0,+1},{1,-1} atomically on set ID: blocks while semaphore 1 is 0; were it half
 *                            applied, semaphore 0 would be 1 afterwards
 *            semv            semop {0,+1} on set ID: an increment, which never sleeps (nor fails with EINTR)
 *            msgrcv          msgrcv(ID, any type) with no message there
 *            msgsnd          msgsnd(ID, type 9, "zz") on a queue with no room
 *
 * With $BLOCKER_GO set to a path, waits (polling, yielding the CPU: never sleeping) until that file exists first.
 * Prints "blocking" before the call, then "result=0" or "result=-1 ERRNO_NAME" and "handler_ran=N".
 * Exit 0 whatever the call returned (the caller checks the lines); 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sched.h>
#include <unistd.h>

static volatile sig_atomic_t handled;
static void on_usr1(int sig) {
  (void)sig;
  handled++;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: blocker none|norestart|restart sem|semv|msgrcv|msgsnd ID\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (strcmp(argv[1], "none")) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    if (!strcmp(argv[1], "restart")) sa.sa_flags = SA_RESTART;
    else if (strcmp(argv[1], "norestart")) return 2;
    if (sigaction(SIGUSR1, &sa, NULL) < 0) {
      perror("blocker: sigaction");
      return 1;
    }
  }
  int id = atoi(argv[3]);
  long r;
  const char *go = getenv("BLOCKER_GO");
  if (go) {
    printf("ready\n");
    while (access(go, F_OK) != 0) sched_yield();
  }
  printf("blocking\n");
  errno = 0;
  if (!strcmp(argv[2], "sem")) {
    struct sembuf ops[2] = {{0, 1, 0}, {1, -1, 0}};
    r = semop(id, ops, 2);
  } else if (!strcmp(argv[2], "semv")) {
    struct sembuf v = {0, 1, 0};
    r = semop(id, &v, 1);
  } else if (!strcmp(argv[2], "msgrcv")) {
    struct { long mtype; char text[64]; } m;
    r = msgrcv(id, &m, sizeof m.text, 0, 0);
  } else if (!strcmp(argv[2], "msgsnd")) {
    struct { long mtype; char text[8]; } m = {9, "zz"};
    r = msgsnd(id, &m, 2, 0);
  } else {
    return 2;
  }
  if (r < 0) printf("result=-1 %s\n", strerrorname_np(errno));
  else printf("result=%ld\n", r);
  printf("handler_ran=%d\n", (int)handled);
  return 0;
}
