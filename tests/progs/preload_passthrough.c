/* A program written for dipc (IPC_DIPC in its *get flags) runs unchanged without dipc: the kernel ignores the bit
 * for semget/msgget and reads it as the harmless SHM_NORESERVE for shmget, and libdipc.so with no daemon running
 * passes every call through to the kernel.
 * Exercises the semaphore, message queue and shared memory calls (results and errnos), removes what it made,
 * prints "ok". */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <dipc/dipc.h>

#define CHECK(x)                                                                  \
  do {                                                                            \
    if (!(x)) {                                                                   \
      fprintf(stderr, "%s:%d: %s failed (errno %s)\n", __FILE__, __LINE__, #x, strerror(errno)); \
      return 1;                                                                   \
    }                                                                             \
  } while (0)
#define FAILS_WITH(call, e) CHECK((call) == -1 && errno == (e))

union semun {
  int val;
  struct semid_ds *buf;
  unsigned short *array;
};

static void on_alarm(int sig) { (void)sig; }

/* Arms a one-shot 50 ms timer whose handler is installed with SA_RESTART: SysV calls still fail with EINTR. */
static void alarm_soon(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval it = {{0, 0}, {0, 50000}};
  setitimer(ITIMER_REAL, &it, NULL);
}

static int sems(void) {
  int sem = semget(IPC_PRIVATE, 3, IPC_CREAT | IPC_DIPC | 0600);
  CHECK(sem >= 0);
  union semun arg;

  arg.val = 3;
  CHECK(semctl(sem, 0, SETVAL, arg) == 0);
  struct sembuf down = {0, -2, 0};
  CHECK(semop(sem, &down, 1) == 0);
  CHECK(semctl(sem, 0, GETVAL) == 1);
  CHECK(semctl(sem, 0, GETPID) == getpid());
  CHECK(semctl(sem, 0, GETNCNT) == 0 && semctl(sem, 0, GETZCNT) == 0);

  unsigned short vals[3] = {5, 0, 7}, got[3] = {0, 0, 0};
  arg.array = vals;
  CHECK(semctl(sem, 0, SETALL, arg) == 0);
  arg.array = got;
  CHECK(semctl(sem, 0, GETALL, arg) == 0 && got[0] == 5 && got[1] == 0 && got[2] == 7);

  struct semid_ds ds;
  arg.buf = &ds;
  CHECK(semctl(sem, 0, IPC_STAT, arg) == 0 && ds.sem_nsems == 3 && (ds.sem_perm.mode & 0777) == 0600);
  ds.sem_perm.mode = 0640;
  CHECK(semctl(sem, 0, IPC_SET, arg) == 0);
  CHECK(semctl(sem, 0, IPC_STAT, arg) == 0 && (ds.sem_perm.mode & 0777) == 0640);

  /* Errors as semop(2) lists them. */
  struct sembuf nowait = {1, -1, IPC_NOWAIT};
  FAILS_WITH(semop(sem, &nowait, 1), EAGAIN);
  struct sembuf bad = {9, 1, 0};
  FAILS_WITH(semop(sem, &bad, 1), EFBIG);
  FAILS_WITH(semop(sem, &down, 0), EINVAL);
  struct sembuf wait1 = {1, -1, 0};
  struct timespec zero = {0, 0}, short_wait = {0, 20000000}, invalid = {0, 1000000000};
  FAILS_WITH(semtimedop(sem, &wait1, 1, &zero), EAGAIN);
  FAILS_WITH(semtimedop(sem, &wait1, 1, &short_wait), EAGAIN);
  FAILS_WITH(semtimedop(sem, &wait1, 1, &invalid), EINVAL);
  struct sembuf up = {2, 1, 0};
  CHECK(semtimedop(sem, &up, 1, &short_wait) == 0 && semctl(sem, 2, GETVAL) == 8);

  /* A blocked semop is interrupted by a signal handler, SA_RESTART or not. */
  alarm_soon();
  FAILS_WITH(semop(sem, &wait1, 1), EINTR);
  CHECK(semctl(sem, 1, GETVAL) == 0 && semctl(sem, 1, GETNCNT) == 0);

  CHECK(semctl(sem, 0, IPC_RMID) == 0);
  FAILS_WITH(semctl(sem, 0, GETVAL), EINVAL);
  return 0;
}

static int msgs(void) {
  int q = msgget(IPC_PRIVATE, IPC_CREAT | IPC_DIPC | 0600);
  CHECK(q >= 0);
  struct {
    long mtype;
    char text[64];
  } m = {7, "hello"};
  CHECK(msgsnd(q, &m, 6, 0) == 0);
  m.mtype = 9;
  strcpy(m.text, "second message");
  CHECK(msgsnd(q, &m, strlen(m.text) + 1, IPC_NOWAIT) == 0);

  struct msqid_ds ds;
  CHECK(msgctl(q, IPC_STAT, &ds) == 0 && ds.msg_qnum == 2 && ds.msg_lspid == getpid());
  CHECK(ds.__msg_cbytes == 6 + strlen("second message") + 1);

  memset(&m, 0, sizeof m);
  CHECK(msgrcv(q, &m, sizeof m.text, 9, 0) == (ssize_t)strlen("second message") + 1 && m.mtype == 9);
  CHECK(strcmp(m.text, "second message") == 0);
  FAILS_WITH(msgrcv(q, &m, 2, 0, IPC_NOWAIT), E2BIG);
  CHECK(msgrcv(q, &m, 2, 0, MSG_NOERROR) == 2 && m.mtype == 7 && memcmp(m.text, "he", 2) == 0);
  FAILS_WITH(msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT), ENOMSG);
  m.mtype = 0;
  FAILS_WITH(msgsnd(q, &m, 1, 0), EINVAL);

  /* A blocked msgrcv is interrupted by a signal handler. */
  alarm_soon();
  FAILS_WITH(msgrcv(q, &m, sizeof m.text, 0, 0), EINTR);

  CHECK(msgctl(q, IPC_STAT, &ds) == 0 && ds.msg_qnum == 0 && ds.msg_lrpid == getpid());
  ds.msg_perm.mode = 0640;
  ds.msg_qbytes = ds.msg_qbytes / 2;
  CHECK(msgctl(q, IPC_SET, &ds) == 0);
  struct msqid_ds ds2;
  CHECK(msgctl(q, IPC_STAT, &ds2) == 0 && (ds2.msg_perm.mode & 0777) == 0640 && ds2.msg_qbytes == ds.msg_qbytes);

  CHECK(msgctl(q, IPC_RMID, NULL) == 0);
  FAILS_WITH(msgctl(q, IPC_STAT, &ds), EINVAL);
  return 0;
}

static int shms(void) {
  int id = shmget(IPC_PRIVATE, 10000, IPC_CREAT | IPC_DIPC | 0600);  /* SHM_NORESERVE to the kernel */
  CHECK(id >= 0);
  char *p = shmat(id, NULL, 0);
  CHECK(p != (void *)-1);
  strcpy(p + 9000, "written before fork");
  pid_t c = fork();
  CHECK(c >= 0);
  if (c == 0) _exit(strcmp(p + 9000, "written before fork") == 0 && (strcpy(p, "child") != NULL) ? 0 : 1);
  int st = 0;
  CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0);
  CHECK(strcmp(p, "child") == 0);  /* the child wrote the same memory */
  struct shmid_ds ds;
  CHECK(shmctl(id, IPC_STAT, &ds) == 0);
  CHECK(ds.shm_segsz == 10000 && ds.shm_nattch == 1 && (ds.shm_perm.mode & 0777) == 0600);
  char *q = shmat(id, NULL, SHM_RDONLY);
  CHECK(q != (void *)-1 && strcmp(q, "child") == 0);
  FAILS_WITH(shmdt(p + 1), EINVAL);
  CHECK(shmdt(q) == 0 && shmdt(p) == 0);
  FAILS_WITH(shmget(IPC_PRIVATE, 0, IPC_CREAT | IPC_DIPC | 0600), EINVAL);
  CHECK(shmctl(id, IPC_RMID, NULL) == 0);
  FAILS_WITH(shmat(id, NULL, 0) == (void *)-1 ? -1 : 0, EINVAL);
  return 0;
}

int main(void) {
  if (sems() || msgs() || shms()) return 1;
  printf("ok\n");
  return 0;
}
