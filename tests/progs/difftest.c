/* difftest: a seeded random sequence of SysV calls, edge cases and errors included, printing one line per call with
 * its result, errno name and out-data (never ids, times or pids themselves). Run once against the local kernel and
 * once against dipc: the transcripts must be identical. Nothing blocks (IPC_NOWAIT, or semtimedop with a zero
 * timeout). Plain SysV code.
 *
 *   difftest setup kernel|dipc SEED
 *       creates the objects the sequence starts from (3 semaphore sets, 3 queues, some messages) and prints
 *       "ids S0 S1 S2 M0 M1 M2". With dipc this can run on another node than `run`, so the objects' home is remote.
 *   difftest run kernel|dipc SEED STEPS S0 S1 S2 M0 M1 M2
 *       the sequence, starting from those ids; removes whatever is left at the end (not printed).
 *
 * With DIFFTEST_RAW=1 every SysV call is a raw system call (syscall(SYS_semop, ...)), as Go programs and some test
 * suites make them: under dipc they reach it only through the preload's seccomp path (DIPC_SECCOMP=1).
 * "kernel" uses keys without IPC_DIPC (run it without the preload); "dipc" ORs IPC_DIPC into every *get.
 * Exit 0 when the sequence ran (whatever the calls returned), 2 on bad usage, 1 on a setup failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <time.h>
#include <unistd.h>

#include <dipc/dipc.h>

#include "transcript.h"

/* DIFFTEST_RAW=1: raw system calls instead of libc's wrappers (a macro naming itself calls the real function). */
#include <stdarg.h>
#include <sys/syscall.h>
static int use_raw;
static long raw_semctl(int id, int num, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  unsigned long arg = va_arg(ap, unsigned long);
  va_end(ap);
  return syscall(SYS_semctl, id, num, cmd, arg);
}
#define semget(k, n, f) (use_raw ? (int)syscall(SYS_semget, k, n, f) : semget(k, n, f))
#define semop(i, s, n) (use_raw ? (int)syscall(SYS_semop, i, s, n) : semop(i, s, n))
#define semtimedop(i, s, n, t) (use_raw ? (int)syscall(SYS_semtimedop, i, s, n, t) : semtimedop(i, s, n, t))
#define semctl(...) (use_raw ? (int)raw_semctl(__VA_ARGS__, 0UL) : semctl(__VA_ARGS__))
#define msgget(k, f) (use_raw ? (int)syscall(SYS_msgget, k, f) : msgget(k, f))
#define msgsnd(i, p, n, f) (use_raw ? (int)syscall(SYS_msgsnd, i, p, n, f) : msgsnd(i, p, n, f))
#define msgrcv(i, p, n, t, f) (use_raw ? (ssize_t)syscall(SYS_msgrcv, i, p, n, t, f) : msgrcv(i, p, n, t, f))
#define msgctl(i, c, b) (use_raw ? (int)syscall(SYS_msgctl, i, c, b) : msgctl(i, c, b))

#define NSLOT 3
#define MAXPRIV 64


static int dflag;
static key_t base;
static key_t sem_key(int s) { return base + s; }     /* s == NSLOT: a key nobody creates (ENOENT) */
static key_t msg_key(int s) { return base + 8 + s; }


struct msgbuf_big {
  long mtype;
  char text[8300];
};

static void print_semstat(int id, key_t want_key) {
  struct semid_ds ds;
  memset(&ds, 0, sizeof ds);
  long r = semctl(id, 0, IPC_STAT, &ds);
  printf(" stat=%s", res(r));
  if (r < 0) return;
  printf(" key=%s mode=%o uid=%u gid=%u cuid=%u cgid=%u nsems=%lu otime=%s",
         ds.sem_perm.__key == want_key ? "as-asked" : "OTHER",
         ds.sem_perm.mode & 0777, ds.sem_perm.uid, ds.sem_perm.gid, ds.sem_perm.cuid, ds.sem_perm.cgid,
         (unsigned long)ds.sem_nsems, ds.sem_otime ? "set" : "0");
  unsigned short v[64];
  memset(v, 0xee, sizeof v);
  r = semctl(id, 0, GETALL, v);
  printf(" getall=%s", res(r));
  for (unsigned long i = 0; r == 0 && i < ds.sem_nsems && i < 64; i++) printf(" %u", v[i]);
}

static void print_msgstat(int id, key_t want_key) {
  struct msqid_ds ds;
  memset(&ds, 0, sizeof ds);
  long r = msgctl(id, IPC_STAT, &ds);
  printf(" stat=%s", res(r));
  if (r < 0) return;
  printf(" key=%s mode=%o uid=%u gid=%u cuid=%u cgid=%u qnum=%lu cbytes=%lu qbytes=%lu stime=%s rtime=%s"
         " lspid=%s lrpid=%s",
         ds.msg_perm.__key == want_key ? "as-asked" : "OTHER",
         ds.msg_perm.mode & 0777, ds.msg_perm.uid, ds.msg_perm.gid, ds.msg_perm.cuid, ds.msg_perm.cgid,
         (unsigned long)ds.msg_qnum, (unsigned long)ds.__msg_cbytes, (unsigned long)ds.msg_qbytes,
         ds.msg_stime ? "set" : "0", ds.msg_rtime ? "set" : "0", pidclass(ds.msg_lspid), pidclass(ds.msg_lrpid));
}

/* A scan's findings, sorted (indices and ids differ between the kernel and dipc; what is found must not). */
static int cmpstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static void print_sorted(char **found, int n) {
  qsort(found, (size_t)n, sizeof *found, cmpstr);
  for (int i = 0; i < n; i++) {
    printf(" {%s}", found[i]);
    free(found[i]);
  }
}
static const char *keyclass(key_t k) {
  static char buf[32];
  if (k == IPC_PRIVATE) return "private";
  if (k >= base && k < base + 16) snprintf(buf, sizeof buf, "base+%d", (int)(k - base));
  else return "OTHER";
  return buf;
}

static void scan_sems(int any) {
  struct seminfo si;
  memset(&si, 0, sizeof si);
  int maxidx = semctl(0, 0, SEM_INFO, &si);
  printf("seminfo -> %s semusz=%d semaem=%d", maxidx < 0 ? res(-1) : "ok", si.semusz, si.semaem);
  struct seminfo li;
  memset(&li, 0, sizeof li);
  long r = semctl(0, 0, IPC_INFO, &li);
  printf(" ipcinfo=%s semmsl=%d semopm=%d semmni=%d", r < 0 ? res(-1) : "ok", li.semmsl, li.semopm, li.semmni);
  char *found[256];
  int n = 0;
  for (int i = 0; i <= maxidx && n < 256; i++) {
    struct semid_ds ds;
    memset(&ds, 0, sizeof ds);
    int id = semctl(i, 0, any ? SEM_STAT_ANY : SEM_STAT, &ds);
    if (id < 0 && errno == EINVAL) continue;
    char buf[160];
    if (id < 0) snprintf(buf, sizeof buf, "%s", res(-1));
    else snprintf(buf, sizeof buf, "key=%s mode=%o nsems=%lu otime=%s getval=%s", keyclass(ds.sem_perm.__key),
                  ds.sem_perm.mode & 0777, (unsigned long)ds.sem_nsems, ds.sem_otime ? "set" : "0",
                  res(semctl(id, 0, GETVAL)));
    found[n++] = strdup(buf);
  }
  printf(" %s found=%d", any ? "semstatany" : "semstat", n);
  print_sorted(found, n);
}

static void scan_msgs(int any) {
  struct msginfo mi;
  memset(&mi, 0, sizeof mi);
  int maxidx = msgctl(0, MSG_INFO, (struct msqid_ds *)&mi);
  printf("msginfo -> %s msgpool=%d msgmap=%d msgtql=%d", maxidx < 0 ? res(-1) : "ok", mi.msgpool, mi.msgmap,
         mi.msgtql);
  struct msginfo li;
  memset(&li, 0, sizeof li);
  long r = msgctl(0, IPC_INFO, (struct msqid_ds *)&li);
  printf(" ipcinfo=%s msgmax=%d msgmnb=%d msgmni=%d", r < 0 ? res(-1) : "ok", li.msgmax, li.msgmnb, li.msgmni);
  char *found[256];
  int n = 0;
  for (int i = 0; i <= maxidx && n < 256; i++) {
    struct msqid_ds ds;
    memset(&ds, 0, sizeof ds);
    int id = msgctl(i, any ? MSG_STAT_ANY : MSG_STAT, &ds);
    if (id < 0 && errno == EINVAL) continue;
    char buf[160];
    if (id < 0) snprintf(buf, sizeof buf, "%s", res(-1));
    else snprintf(buf, sizeof buf, "key=%s mode=%o qnum=%lu cbytes=%lu qbytes=%lu lspid=%s", keyclass(ds.msg_perm.__key),
                  ds.msg_perm.mode & 0777, (unsigned long)ds.msg_qnum, (unsigned long)ds.__msg_cbytes,
                  (unsigned long)ds.msg_qbytes, pidclass(ds.msg_lspid));
    found[n++] = strdup(buf);
  }
  printf(" %s found=%d", any ? "msgstatany" : "msgstat", n);
  print_sorted(found, n);
}

static int setup(void) {
  int ids[2 * NSLOT];
  for (int s = 0; s < NSLOT; s++) {
    int id = semget(sem_key(s), 3, IPC_CREAT | IPC_EXCL | 0600 | dflag);
    if (id < 0) { perror("difftest setup: semget"); return 1; }
    unsigned short v[3] = {(unsigned short)rnd(3), (unsigned short)rnd(3), (unsigned short)rnd(3)};
    if (semctl(id, 0, SETALL, v) < 0) { perror("difftest setup: SETALL"); return 1; }
    ids[s] = id;
  }
  for (int s = 0; s < NSLOT; s++) {
    int id = msgget(msg_key(s), IPC_CREAT | IPC_EXCL | 0600 | dflag);
    if (id < 0) { perror("difftest setup: msgget"); return 1; }
    for (int i = 0, n = rnd(4); i < n; i++) {
      struct msgbuf_big m;
      m.mtype = 1 + rnd(3);
      int len = rnd(20);
      for (int j = 0; j < len; j++) m.text[j] = (char)('A' + rnd(26));
      if (msgsnd(id, &m, (size_t)len, IPC_NOWAIT) < 0) { perror("difftest setup: msgsnd"); return 1; }
    }
    ids[NSLOT + s] = id;
  }
  printf("ids");
  for (int i = 0; i < 2 * NSLOT; i++) printf(" %d", ids[i]);
  printf("\n");
  return 0;
}

static int run(int steps, char **idv) {
  int sems[NSLOT], msgs[NSLOT];
  for (int s = 0; s < NSLOT; s++) {
    sems[s] = atoi(idv[s]);
    msgs[s] = atoi(idv[NSLOT + s]);
  }
  int priv[MAXPRIV], npriv = 0;
  static struct sembuf sops[600];
  for (int step = 0; step < steps; step++) {
    int s = rnd(NSLOT), what = rnd(25);
    int sid = sems[s], mid = msgs[s];
    errno = 0;
    printf("%d: ", step);
    switch (what) {
      case 0: { /* semget: existing, new, EEXIST, ENOENT, EINVAL for nsems */
        int never = rnd(6) == 0;
        int nsems = (int)PICK(-1, 0, 1, 3, 3, 4, 40000);
        int fl = (int)PICK(0, IPC_CREAT, IPC_CREAT | IPC_EXCL, IPC_CREAT, 0) | (int)PICK(0600, 0600, 0400, 0666);
        if (never) fl &= ~IPC_CREAT;
        int r = semget(never ? sem_key(NSLOT) : sem_key(s), nsems, fl | dflag);
        printf("semget %s nsems=%d flags=%o -> ", never ? "never" : "slot", nsems, fl);
        if (r >= 0) {
          printf("ok %s\n", r == sems[s] ? "same" : "new");
          sems[s] = r;
        } else {
          printf("%s\n", res(r));
        }
        break;
      }
      case 1: case 2: case 3: { /* semop / semtimedop(0): EAGAIN, EFBIG, ERANGE, E2BIG, EINVAL nsops */
        int n = (int)PICK(0, 1, 1, 2, 2, 3, 501);
        int big = rnd(8) == 0;
        for (int i = 0; i < n; i++) {
          sops[i].sem_num = (unsigned short)(n > 3 ? 0 : rnd(5));
          sops[i].sem_op = (short)(n > 3 ? 0 : big ? PICK(32767, -32768, 16384) : rnd(5) - 2);
          sops[i].sem_flg = (short)(IPC_NOWAIT | (rnd(3) == 0 ? SEM_UNDO : 0));
        }
        printf("%s slot%d n=%d", what == 3 ? "semtimedop" : "semop", s, n);
        for (int i = 0; i < n && i < 3; i++)
          printf(" [%u %d %s]", sops[i].sem_num, sops[i].sem_op, sops[i].sem_flg & SEM_UNDO ? "undo" : "-");
        if (what == 3) {
          for (int i = 0; i < n; i++) sops[i].sem_flg &= (short)~IPC_NOWAIT;
          struct timespec ts = {0, 0};
          printf(" -> %s\n", res(semtimedop(sid, sops, (size_t)n, &ts)));
        } else {
          printf(" -> %s\n", res(semop(sid, sops, (size_t)n)));
        }
        break;
      }
      case 4: { /* reading semctl commands, bad semnum, bad command */
        int cmd = (int)PICK(GETVAL, GETVAL, GETNCNT, GETZCNT, GETPID, 99);
        int num = rnd(6) - 1;
        long r = semctl(sid, num, cmd);
        printf("semctl slot%d cmd=%d num=%d -> %s", s, cmd, num, cmd == GETPID && r >= 0 ? pidclass(r) : res(r));
        printf("\n");
        break;
      }
      case 5: { /* SETVAL incl. ERANGE both ways */
        int val = (int)PICK(-1, 0, 1, 2, 5, 32767, 32768);
        int num = rnd(6) - 1;
        printf("setval slot%d num=%d val=%d -> %s\n", s, num, val, res(semctl(sid, num, SETVAL, val)));
        break;
      }
      case 6: /* IPC_STAT + GETALL */
        printf("semstat slot%d", s);
        print_semstat(sid, sem_key(s));
        printf("\n");
        break;
      case 7: { /* SETALL incl. ERANGE */
        struct semid_ds ds;
        unsigned short v[64];
        if (semctl(sid, 0, IPC_STAT, &ds) < 0) {
          printf("setall slot%d stat -> %s\n", s, res(-1));
          break;
        }
        int bad = rnd(5) == 0;
        for (unsigned long i = 0; i < ds.sem_nsems && i < 64; i++) v[i] = (unsigned short)rnd(3);
        if (bad) v[ds.sem_nsems - 1] = 32768;
        printf("setall slot%d bad=%d -> %s\n", s, bad, res(semctl(sid, 0, SETALL, v)));
        break;
      }
      case 8: { /* IPC_SET of the mode */
        struct semid_ds ds;
        long r = semctl(sid, 0, IPC_STAT, &ds);
        int mode = (int)PICK(0600, 0640, 0400, 0666, 0);
        if (r == 0) {
          ds.sem_perm.mode = (unsigned short)mode;
          r = semctl(sid, 0, IPC_SET, &ds);
        }
        printf("semset slot%d mode=%o -> %s\n", s, mode, res(r));
        break;
      }
      case 9: /* IPC_RMID; the slot keeps the stale id */
        if (rnd(3) == 0) printf("semrm slot%d -> %s\n", s, res(semctl(sid, 0, IPC_RMID)));
        else printf("noop\n");
        break;
      case 10: { /* msgget: existing, new, EEXIST, ENOENT */
        int never = rnd(6) == 0;
        int fl = (int)PICK(0, IPC_CREAT, IPC_CREAT | IPC_EXCL, IPC_CREAT, 0) | (int)PICK(0600, 0600, 0400, 0666);
        if (never) fl &= ~IPC_CREAT;
        int r = msgget(never ? msg_key(NSLOT) : msg_key(s), fl | dflag);
        printf("msgget %s flags=%o -> ", never ? "never" : "slot", fl);
        if (r >= 0) {
          printf("ok %s\n", r == msgs[s] ? "same" : "new");
          msgs[s] = r;
        } else {
          printf("%s\n", res(r));
        }
        break;
      }
      case 11: case 12: case 13: { /* msgsnd: EAGAIN on a full queue, EINVAL for mtype < 1 or size > msgmax */
        struct msgbuf_big m;
        m.mtype = PICK(-1, 0, 1, 1, 2, 3, 5);
        if (m.mtype < 1 && rnd(2)) m.mtype = 1;
        int len = rnd(10) == 0 ? (int)PICK(0, 8192, 8193) : rnd(60);
        for (int i = 0; i < len; i++) m.text[i] = (char)('a' + rnd(26));
        printf("msgsnd slot%d type=%ld len=%d -> %s\n", s, m.mtype, len, res(msgsnd(mid, &m, (size_t)len, IPC_NOWAIT)));
        break;
      }
      case 14: case 15: case 16: { /* msgrcv: every msgtyp form, MSG_EXCEPT, MSG_NOERROR, E2BIG, ENOMSG */
        struct msgbuf_big m;
        memset(&m, 0, sizeof m);
        long typ = rnd(9) - 4;
        int fl = IPC_NOWAIT | (rnd(3) == 0 ? MSG_NOERROR : 0) | (rnd(4) == 0 ? MSG_EXCEPT : 0);
        size_t max = rnd(12) == 0 ? (size_t)-1 : (size_t)rnd(64);
        ssize_t r = msgrcv(mid, &m, max, typ, fl);
        printf("msgrcv slot%d typ=%ld max=%ld fl=%o -> %s", s, typ, (long)max, fl, res(r));
        if (r >= 0) printf(" type=%ld text=%.*s", m.mtype, (int)r, m.text);
        printf("\n");
        break;
      }
      case 17: /* IPC_STAT */
        printf("msgstat slot%d", s);
        print_msgstat(mid, msg_key(s));
        printf("\n");
        break;
      case 18: { /* IPC_SET of qbytes (0: nothing fits; above msgmnb: allowed with CAP_SYS_RESOURCE) and mode */
        struct msqid_ds ds;
        long r = msgctl(mid, IPC_STAT, &ds);
        unsigned long qb = (unsigned long)PICK(0, 40, 100, 100, 16384, 20000);
        int mode = (int)PICK(0600, 0644, 0400, 0600);
        if (r == 0) {
          ds.msg_qbytes = (msglen_t)qb;
          ds.msg_perm.mode = (unsigned short)mode;
          r = msgctl(mid, IPC_SET, &ds);
        }
        printf("msgset slot%d qbytes=%lu mode=%o -> %s\n", s, qb, mode, res(r));
        break;
      }
      case 19: /* IPC_RMID, or a command no kernel knows */
        if (rnd(3) == 0) printf("msgrm slot%d -> %s\n", s, res(msgctl(mid, IPC_RMID, NULL)));
        else printf("msgctl slot%d cmd=99 -> %s\n", s, res(msgctl(mid, 99, NULL)));
        break;
      case 20: { /* IPC_PRIVATE objects: always new, key 0; use, remove, then use the stale id */
        if (npriv + 2 > MAXPRIV) {
          printf("noop\n");
          break;
        }
        int a = semget(IPC_PRIVATE, 2, IPC_CREAT | 0600 | dflag);
        int b = semget(IPC_PRIVATE, 2, IPC_CREAT | 0600 | dflag);
        printf("private sem -> %s", a >= 0 && b >= 0 ? (a != b ? "two" : "SAME") : res(-1));
        if (a >= 0) priv[npriv++] = a;
        if (b >= 0) priv[npriv++] = b;
        if (a >= 0) {
          printf(" setval=%s", res(semctl(a, 1, SETVAL, 7)));
          printf(" getval=%s", res(semctl(a, 1, GETVAL)));
          print_semstat(a, IPC_PRIVATE);
          printf(" rm=%s", res(semctl(a, 0, IPC_RMID)));
          printf(" stale=%s", res(semctl(a, 1, GETVAL)));
        }
        printf("\n");
        break;
      }
      case 22: { /* MSG_COPY: the message at an index, left queued; EINVAL without IPC_NOWAIT or with MSG_EXCEPT */
        struct msgbuf_big m;
        memset(&m, 0, sizeof m);
        long idx = rnd(6) - 1;
        int fl = MSG_COPY | (rnd(6) ? IPC_NOWAIT : 0) | (rnd(8) == 0 ? MSG_EXCEPT : 0) | (rnd(4) == 0 ? MSG_NOERROR : 0);
        size_t max = rnd(10) == 0 ? (size_t)-1 : (size_t)rnd(64);
        ssize_t r = msgrcv(mid, &m, max, idx, fl);
        printf("msgcopy slot%d idx=%ld max=%ld fl=%o -> %s", s, idx, (long)max, fl, res(r));
        if (r >= 0) printf(" type=%ld text=%.*s", m.mtype, (int)r, m.text);
        print_msgstat(mid, msg_key(s));
        printf("\n");
        break;
      }
      case 23: case 24: /* *_INFO counts and a *_STAT / *_STAT_ANY scan over every index, as ipcs does */
        if (what == 23) scan_sems(rnd(2));
        else scan_msgs(rnd(2));
        printf("\n");
        break;
      default: { /* a private queue, used from its id */
        int q = msgget(IPC_PRIVATE, IPC_CREAT | 0600 | dflag);
        printf("private msg -> %s", q >= 0 ? "ok" : res(q));
        if (q >= 0) {
          struct msgbuf_big m = {4, "private"};
          printf(" snd=%s", res(msgsnd(q, &m, 7, IPC_NOWAIT)));
          print_msgstat(q, IPC_PRIVATE);
          memset(&m, 0, sizeof m);
          ssize_t r = msgrcv(q, &m, 3, -4, IPC_NOWAIT | MSG_NOERROR);
          printf(" rcv=%s", res(r));
          if (r >= 0) printf(" type=%ld text=%.*s", m.mtype, (int)r, m.text);
          printf(" rm=%s", res(msgctl(q, IPC_RMID, NULL)));
          printf(" stale=%s", res(msgsnd(q, &m, 1, IPC_NOWAIT)));
        }
        printf("\n");
      }
    }
  }
  fflush(stdout);
  for (int s = 0; s < NSLOT; s++) {
    semctl(sems[s], 0, IPC_RMID);
    msgctl(msgs[s], IPC_RMID, NULL);
  }
  for (int i = 0; i < npriv; i++) semctl(priv[i], 0, IPC_RMID);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 4 || (strcmp(argv[2], "kernel") && strcmp(argv[2], "dipc"))) {
    fprintf(stderr, "usage: difftest setup kernel|dipc SEED | difftest run kernel|dipc SEED STEPS IDS...\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  use_raw = getenv("DIFFTEST_RAW") && !strcmp(getenv("DIFFTEST_RAW"), "1");
  dflag = strcmp(argv[2], "dipc") == 0 ? IPC_DIPC : 0;
  unsigned long long seed = strtoull(argv[3], NULL, 0);
  base = (key_t)(0x44000000 + (seed % 4096) * 16);
  if (!strcmp(argv[1], "setup")) {
    rng = seed ^ 0x5e75e75e7ULL;
    return setup();
  }
  if (!strcmp(argv[1], "run") && argc == 5 + 2 * NSLOT) {
    rng = seed;
    return run(atoi(argv[4]), argv + 5);
  }
  fprintf(stderr, "difftest: bad arguments\n");
  return 2;
}
