/* ipcop: runs SysV calls named on the command line, one result line each. Plain SysV code (+ IPC_DIPC).
 *
 *   ipcop CMD [CMD...]      each CMD is NAME:ARG:ARG...; '@' as an id means the id the last *get returned
 *
 *   semget:KEY:NSEMS:FLAGS   msgget:KEY:FLAGS           FLAGS: creat+excl+dipc+nowait+undo+noerror+except+0644
 *   semop:ID:N/OP/FLAGS[,N/OP/FLAGS...]                 timedop:ID:MS:N/OP/FLAGS[,...]
 *   setval:ID:N:V  getval:ID:N  getncnt:ID:N  getzcnt:ID:N  getpid:ID:N  getall:ID  setall:ID:V,V,...
 *   semstat:ID  semset:ID:MODE  semrm:ID
 *   msgsnd:ID:TYPE:TEXT:FLAGS  msgrcv:ID:TYPE:MAXSIZE:FLAGS  msgstat:ID  msgqbytes:ID:N  msgrm:ID
 *   msgset:ID:MODE (IPC_SET of the mode)  msgpids:ID ("msgpids=0 lspid=P lrpid=P" of IPC_STAT)
 *   pid                      prints "pid=N", this process's pid
 *   (FLAGS also: copy = MSG_COPY, huge = SHM_HUGETLB)
 *   shmget:KEY:SIZE:FLAGS  shmrm:ID  shmat:ID:FLAGS (FLAGS: rdonly = SHM_RDONLY)  shmdt (the last shmat's address)
 *   shmnattch:ID             shm_nattch of IPC_STAT       shmset:ID:MODE   IPC_SET of the mode
 *   forkread:OFFSET          a fork()ed child reads the int ("forkread=VALUE", or "forkread=signal SIGSEGV")
 *   shmwrite:OFFSET:VALUE    stores the int VALUE at OFFSET in the last attach     shmread:OFFSET  "shmread=VALUE"
 *   scan:sem|msg|shm[:any]   *_INFO, then *_STAT (or *_STAT_ANY) on every index up to the highest, as ipcs does:
 *                            "scan=FOUND used=COUNT keys=K,K,..." (the keys of the objects found, in index order)
 *   hold                     prints "held" and waits for a signal forever (to be killed)
 *   pause                    prints "paused" and waits for SIGUSR1, then goes on with the next command
 *   sigusr1 | sigusr1-restart   installs a SIGUSR1 handler (without / with SA_RESTART)
 *   print:TEXT               prints TEXT
 *
 * Output: "NAME=RESULT" on success (plus data), "NAME=-1 ERRNO_NAME" on failure. Exit status 0 always (the
 * caller checks the lines), 2 on bad usage.
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
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dipc/dipc.h>

union semun { /* semctl(2): the caller defines it */
  int val;
  struct semid_ds *buf;
  unsigned short *array;
};

static int last_id = -1;
static void *last_addr = NULL; /* the last shmat's address */

static long num(const char *s) {
  if (strcmp(s, "@") == 0) return last_id;
  return strtol(s, NULL, 0);
}

static int flags(const char *s) {
  int f = 0;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", s);
  char *save = NULL;
  for (char *tok = strtok_r(buf, "+", &save); tok; tok = strtok_r(NULL, "+", &save)) {
    if (!strcmp(tok, "creat")) f |= IPC_CREAT;
    else if (!strcmp(tok, "excl")) f |= IPC_EXCL;
    else if (!strcmp(tok, "dipc")) f |= IPC_DIPC;
    else if (!strcmp(tok, "nowait")) f |= IPC_NOWAIT;
    else if (!strcmp(tok, "undo")) f |= SEM_UNDO;
    else if (!strcmp(tok, "noerror")) f |= MSG_NOERROR;
    else if (!strcmp(tok, "except")) f |= MSG_EXCEPT;
    else if (!strcmp(tok, "copy")) f |= MSG_COPY;
    else if (!strcmp(tok, "huge")) f |= SHM_HUGETLB;
    else if (!strcmp(tok, "rdonly")) f |= SHM_RDONLY;
    else f |= (int)strtol(tok, NULL, 0);
  }
  return f;
}

static void report(const char *name, long r) {
  if (r < 0) printf("%s=-1 %s\n", name, strerrorname_np(errno));
  else printf("%s=%ld\n", name, r);
}

static size_t sops_parse(char *spec, struct sembuf *sops, size_t max) {
  size_t n = 0;
  char *save = NULL;
  for (char *tok = strtok_r(spec, ",", &save); tok && n < max; tok = strtok_r(NULL, ",", &save)) {
    char *s2 = NULL;
    char *a = strtok_r(tok, "/", &s2), *b = strtok_r(NULL, "/", &s2), *c = strtok_r(NULL, "/", &s2);
    sops[n].sem_num = (unsigned short)strtol(a, NULL, 0);
    sops[n].sem_op = (short)strtol(b ? b : "0", NULL, 0);
    sops[n].sem_flg = (short)(c ? flags(c) : 0);
    n++;
  }
  return n;
}

static void on_usr1(int sig) { (void)sig; }

static void scan(const char *what, int any) {
  int maxidx, used = -1;
  if (!strcmp(what, "sem")) {
    struct seminfo si;
    maxidx = semctl(0, 0, SEM_INFO, &si);
    used = si.semusz;
  } else if (!strcmp(what, "msg")) {
    struct msginfo mi;
    maxidx = msgctl(0, MSG_INFO, (struct msqid_ds *)&mi);
    used = mi.msgpool;
  } else {
    struct shm_info hi;
    maxidx = shmctl(0, SHM_INFO, (struct shmid_ds *)&hi);
    used = hi.used_ids;
  }
  if (maxidx < 0) {
    report("scan", maxidx);
    return;
  }
  char keys[4096] = "";
  int found = 0;
  for (int i = 0; i <= maxidx; i++) {
    int id;
    key_t key;
    if (!strcmp(what, "sem")) {
      struct semid_ds ds;
      id = semctl(i, 0, any ? SEM_STAT_ANY : SEM_STAT, &ds);
      key = ds.sem_perm.__key;
    } else if (!strcmp(what, "msg")) {
      struct msqid_ds ds;
      id = msgctl(i, any ? MSG_STAT_ANY : MSG_STAT, &ds);
      key = ds.msg_perm.__key;
    } else {
      struct shmid_ds ds;
      id = shmctl(i, any ? SHM_STAT_ANY : SHM_STAT, &ds);
      key = ds.shm_perm.__key;
    }
    if (id < 0) continue;
    found++;
    size_t l = strlen(keys);
    snprintf(keys + l, sizeof keys - l, "%s%#x", l ? "," : "", (unsigned)key);
  }
  printf("scan=%d used=%d keys=%s\n", found, used, keys);
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    char *a[8] = {0};
    char *cmd = strdup(argv[i]);
    int n = 0;
    for (char *p = cmd; n < 8;) {
      a[n++] = p;
      char *c = strchr(p, ':');
      if (!c) break;
      *c = 0;
      p = c + 1;
    }
    const char *name = a[0];
    errno = 0;
    if (!strcmp(name, "semget")) {
      int r = semget((key_t)num(a[1]), (int)num(a[2]), flags(a[3]));
      if (r >= 0) last_id = r;
      report(name, r);
    } else if (!strcmp(name, "msgget")) {
      int r = msgget((key_t)num(a[1]), flags(a[2]));
      if (r >= 0) last_id = r;
      report(name, r);
    } else if (!strcmp(name, "semop") || !strcmp(name, "timedop")) {
      struct sembuf sops[64];
      int timed = !strcmp(name, "timedop");
      size_t k = sops_parse(a[timed ? 3 : 2], sops, 64);
      if (timed) {
        long ms = num(a[2]);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
        report(name, semtimedop((int)num(a[1]), sops, k, &ts));
      } else {
        report(name, semop((int)num(a[1]), sops, k));
      }
    } else if (!strcmp(name, "setval")) {
      union semun arg = {.val = (int)num(a[3])}; /* semctl(2): a union, not a plain int (64-bit big-endian) */
      report(name, semctl((int)num(a[1]), (int)num(a[2]), SETVAL, arg));
    } else if (!strcmp(name, "getval")) {
      report(name, semctl((int)num(a[1]), (int)num(a[2]), GETVAL));
    } else if (!strcmp(name, "getncnt")) {
      report(name, semctl((int)num(a[1]), (int)num(a[2]), GETNCNT));
    } else if (!strcmp(name, "getzcnt")) {
      report(name, semctl((int)num(a[1]), (int)num(a[2]), GETZCNT));
    } else if (!strcmp(name, "getpid")) {
      report(name, semctl((int)num(a[1]), (int)num(a[2]), GETPID));
    } else if (!strcmp(name, "getall")) {
      unsigned short v[256];
      int r = semctl((int)num(a[1]), 0, GETALL, v);
      if (r < 0) report(name, r);
      else {
        struct semid_ds ds;
        semctl((int)num(a[1]), 0, IPC_STAT, &ds);
        printf("getall=0");
        for (unsigned long j = 0; j < ds.sem_nsems && j < 256; j++) printf(" %u", v[j]);
        printf("\n");
      }
    } else if (!strcmp(name, "setall")) {
      unsigned short v[256];
      int k = 0;
      char *save = NULL;
      for (char *tok = strtok_r(a[2], ",", &save); tok && k < 256; tok = strtok_r(NULL, ",", &save)) v[k++] = (unsigned short)strtol(tok, NULL, 0);
      report(name, semctl((int)num(a[1]), 0, SETALL, v));
    } else if (!strcmp(name, "semstat")) {
      struct semid_ds ds;
      int r = semctl((int)num(a[1]), 0, IPC_STAT, &ds);
      if (r < 0) report(name, r);
      else printf("semstat=0 key=%#x mode=%o uid=%u nsems=%lu\n", (unsigned)ds.sem_perm.__key, ds.sem_perm.mode & 0777,
                  ds.sem_perm.uid, (unsigned long)ds.sem_nsems);
    } else if (!strcmp(name, "semset")) {
      struct semid_ds ds;
      int r = semctl((int)num(a[1]), 0, IPC_STAT, &ds);
      if (r == 0) {
        ds.sem_perm.mode = (unsigned short)num(a[2]);
        r = semctl((int)num(a[1]), 0, IPC_SET, &ds);
      }
      report(name, r);
    } else if (!strcmp(name, "semrm")) {
      report(name, semctl((int)num(a[1]), 0, IPC_RMID));
    } else if (!strcmp(name, "msgsnd")) {
      struct { long mtype; char text[8192]; } m;
      m.mtype = num(a[2]);
      size_t len = strlen(a[3]);
      memcpy(m.text, a[3], len);
      report(name, msgsnd((int)num(a[1]), &m, len, a[4] ? flags(a[4]) : 0));
    } else if (!strcmp(name, "msgrcv")) {
      struct { long mtype; char text[8192]; } m;
      ssize_t r = msgrcv((int)num(a[1]), &m, (size_t)num(a[3]), num(a[2]), a[4] ? flags(a[4]) : 0);
      if (r < 0) report(name, r);
      else printf("msgrcv=%zd type=%ld text=%.*s\n", r, m.mtype, (int)r, m.text);
    } else if (!strcmp(name, "msgstat")) {
      struct msqid_ds ds;
      int r = msgctl((int)num(a[1]), IPC_STAT, &ds);
      if (r < 0) report(name, r);
      else printf("msgstat=0 qnum=%lu cbytes=%lu qbytes=%lu mode=%o\n", (unsigned long)ds.msg_qnum,
                  (unsigned long)ds.__msg_cbytes, (unsigned long)ds.msg_qbytes, ds.msg_perm.mode & 0777);
    } else if (!strcmp(name, "msgqbytes")) {
      struct msqid_ds ds;
      int r = msgctl((int)num(a[1]), IPC_STAT, &ds);
      if (r == 0) {
        ds.msg_qbytes = (msglen_t)num(a[2]);
        r = msgctl((int)num(a[1]), IPC_SET, &ds);
      }
      report(name, r);
    } else if (!strcmp(name, "msgset")) {
      struct msqid_ds ds;
      int r = msgctl((int)num(a[1]), IPC_STAT, &ds);
      if (r == 0) {
        ds.msg_perm.mode = (unsigned short)num(a[2]);
        r = msgctl((int)num(a[1]), IPC_SET, &ds);
      }
      report(name, r);
    } else if (!strcmp(name, "msgpids")) {
      struct msqid_ds ds;
      int r = msgctl((int)num(a[1]), IPC_STAT, &ds);
      if (r < 0) report(name, r);
      else printf("msgpids=0 lspid=%d lrpid=%d\n", (int)ds.msg_lspid, (int)ds.msg_lrpid);
    } else if (!strcmp(name, "pid")) {
      printf("pid=%d\n", (int)getpid());
    } else if (!strcmp(name, "msgrm")) {
      report(name, msgctl((int)num(a[1]), IPC_RMID, NULL));
    } else if (!strcmp(name, "shmget")) {
      int r = shmget((key_t)num(a[1]), (size_t)num(a[2]), flags(a[3]));
      if (r >= 0) last_id = r;
      report(name, r);
    } else if (!strcmp(name, "shmrm")) {
      report(name, shmctl((int)num(a[1]), IPC_RMID, NULL));
    } else if (!strcmp(name, "shmat")) {
      void *p = shmat((int)num(a[1]), NULL, flags(a[2]));
      if (p != (void *)-1) last_addr = p;
      report(name, p == (void *)-1 ? -1 : 0);
    } else if (!strcmp(name, "shmdt")) {
      report(name, shmdt(last_addr));
    } else if (!strcmp(name, "shmwrite")) { /* shmwrite:OFFSET:VALUE, an int into the last attach */
      *(volatile int*)((char*)last_addr + num(a[1])) = (int)num(a[2]);
      printf("shmwrite=0\n");
    } else if (!strcmp(name, "forkread")) { /* forkread:OFFSET: a fork()ed child reads it */
      fflush(stdout);
      pid_t child = fork();
      if (child == 0) {
        printf("forkread=%d\n", *(volatile int*)((char*)last_addr + num(a[1])));
        fflush(stdout);
        _exit(0);
      }
      int st = 0;
      waitpid(child, &st, 0);
      if (WIFSIGNALED(st)) printf("forkread=signal %s\n", sigabbrev_np(WTERMSIG(st)));
    } else if (!strcmp(name, "shmread")) { /* shmread:OFFSET */
      printf("shmread=%d\n", *(volatile int*)((char*)last_addr + num(a[1])));
    } else if (!strcmp(name, "shmset")) {
      struct shmid_ds ds;
      int r = shmctl((int)num(a[1]), IPC_STAT, &ds);
      if (r == 0) {
        ds.shm_perm.mode = (unsigned short)num(a[2]);
        r = shmctl((int)num(a[1]), IPC_SET, &ds);
      }
      report(name, r);
    } else if (!strcmp(name, "shmnattch")) {
      struct shmid_ds ds;
      int r = shmctl((int)num(a[1]), IPC_STAT, &ds);
      report(name, r < 0 ? r : (int)ds.shm_nattch);
    } else if (!strcmp(name, "scan")) {
      scan(a[1], a[2] && !strcmp(a[2], "any"));
    } else if (!strcmp(name, "hold")) {
      printf("held\n");
      fflush(stdout);
      for (;;) pause();
    } else if (!strcmp(name, "pause")) {
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, SIGUSR1);
      sigprocmask(SIG_BLOCK, &set, NULL);
      printf("paused\n");
      fflush(stdout);
      int sig = 0;
      sigwait(&set, &sig);
      sigprocmask(SIG_UNBLOCK, &set, NULL);
    } else if (!strcmp(name, "sigusr1") || !strcmp(name, "sigusr1-restart")) {
      struct sigaction sa;
      memset(&sa, 0, sizeof sa);
      sa.sa_handler = on_usr1;
      sa.sa_flags = strcmp(name, "sigusr1") ? SA_RESTART : 0;
      sigaction(SIGUSR1, &sa, NULL);
      printf("%s=0\n", name);
    } else if (!strcmp(name, "print")) {
      printf("%s\n", a[1] ? a[1] : "");
    } else {
      fprintf(stderr, "ipcop: unknown command %s\n", name);
      return 2;
    }
    fflush(stdout);
    free(cmd);
  }
  return 0;
}
