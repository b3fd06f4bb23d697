/* shm_tool: runs SysV shared memory calls named on the command line, in order, in one process; one result line each.
 * Plain SysV code (+ IPC_DIPC). Keys and numbers are hex (0x...) or decimal; '@' as an id means the id the last get
 * returned. At most one attachment is current ("the segment"); OFF is a byte offset into it (8-aligned for words).
 *
 *   get:KEY:SIZE:FLAGS       shmget; FLAGS: creat+excl+dipc+huge+0644 (octal mode; huge: SHM_HUGETLB) -> get=ID
 *   at[:ID[:FLAGS]]          shmat (default id @); FLAGS: rdonly, and nostat: no IPC_STAT after the attach (the
 *                            segment's size stays unknown: offsets are not bounds-checked) -> at=0
 *   dt                       shmdt of the current attachment                          -> dt=0
 *   stat[:ID]                IPC_STAT -> stat=0 key=0x.. segsz=N nattch=N mode=666 dest=0|1 cpid=self|other
 *                            lpid=self|other|none atime=set|none dtime=set|none uid=U cuid=U
 *   set:ID:MODE              IPC_SET of the mode (octal)                              -> set=0
 *   rm[:ID]                  IPC_RMID                                                 -> rm=0
 *   w:OFF:VAL  r:OFF         64-bit word store / load                                 -> w=0, r=VAL
 *   wstr:OFF:TEXT  rstr:OFF:LEN   bytes store / load                                  -> wstr=0, rstr=TEXT
 *   waitw:OFF:VAL[:SECS]     spins (bounded, default 30 s) until the word is VAL      -> waitw=0 (exit 1 on timeout)
 *   readinto:OFF:TEXT        writes TEXT to a pipe, read(2)s it into the segment at OFF -> readinto=BYTES
 *   crashw:OFF:VAL           a child writes VAL at OFF; reports how the child ended   -> crashw=SIGSEGV | exit N
 *   fork:OFF:VAL             fork: the child prints fork_child_saw=(word OFF) and fork_child_nattch=, waits for the
 *                            parent's post-fork write of VAL+1 at OFF+8, writes VAL at OFF and exits; the parent
 *                            waits for it and prints fork_child_status=N and fork_parent_sees=(word OFF)
 *   sparsew:STEP  sparsec:STEP   writes / checks a word every STEP bytes and the last word of the whole segment
 *                            (size from IPC_STAT)                     -> sparsew=WORDS, sparsec=MISMATCHES (exit 1 if >0)
 *   blockva                  maps a page of nothing where the last attachment was (after dt), so that the next
 *                            attach lands at another address                         -> blockva=0
 *   hold                     prints held=1 and waits to be killed (bounded by a 600 s alarm)
 *   forkexec                 a child (which inherits the attaches) prints forkexec_child_nattch= (of the current
 *                            segment), then execs `tail -f /dev/null` (a program that lives until killed); the
 *                            parent waits for that line -> forkexec_pid=N
 *   waitfile:PATH[:SECS]     polls (bounded, default 30 s) until PATH exists          -> waitfile=0 (exit 1 on timeout)
 *   print:TEXT               prints TEXT
 *   minflt                   this process's minor page faults so far (getrusage)     -> minflt=N
 *
 * Failed calls print "NAME=-1 ERRNO_NAME" and the run goes on (exit 0): callers check the lines. Failed checks
 * (waitw timeout, sparsec mismatch, fork child trouble) print to stderr and make the exit status 1; bad usage is 2.
 * An offset outside the attached segment is a usage error (exit 2). The whole run is bounded by alarm(SHM_TIMEOUT
 * seconds, default 120). */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dipc/dipc.h>

static int last_id = -1;
static int cur_id = -1;
static char *base = NULL;
static char *last_base = NULL; /* where the last attachment was, after dt */
static long base_size = -1; /* of the current attachment, -1 if IPC_STAT refused it */
static int failed = 0;

static long num(const char *s) {
  if (!s) return 0;
  if (strcmp(s, "@") == 0) return last_id;
  return strtol(s, NULL, 0);
}

static int flags(const char *s) {
  int f = 0;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", s ? s : "");
  char *save = NULL;
  for (char *tok = strtok_r(buf, "+", &save); tok; tok = strtok_r(NULL, "+", &save)) {
    if (!strcmp(tok, "creat")) f |= IPC_CREAT;
    else if (!strcmp(tok, "excl")) f |= IPC_EXCL;
    else if (!strcmp(tok, "dipc")) f |= IPC_DIPC;
    else if (!strcmp(tok, "rdonly")) f |= SHM_RDONLY;
    else if (!strcmp(tok, "huge")) f |= SHM_HUGETLB;
    else f |= (int)strtol(tok, NULL, 8);
  }
  return f;
}

static void report(const char *name, long r) {
  if (r < 0) printf("%s=-1 %s\n", name, strerrorname_np(errno));
  else printf("%s=%ld\n", name, r);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int need_base(const char *name) {
  if (base) return 1;
  fprintf(stderr, "shm_tool: %s: nothing attached\n", name);
  exit(2);
}

/* Catches a caller's mistake (an offset outside the segment) instead of silently touching whatever lies beyond. */
static long in_seg(long off, long len) {
  if (off < 0 || (base_size >= 0 && off + len > base_size)) {
    fprintf(stderr, "shm_tool: offset %ld (+%ld) is outside the %ld-byte segment\n", off, len, base_size);
    exit(2);
  }
  return off;
}

static volatile uint64_t *word(long off) { return (volatile uint64_t *)(base + in_seg(off, 8)); }

/* Bounded spin until the word at off is val; 0 on success, -1 on timeout. */
static int spin_word(long off, uint64_t val, double secs) {
  double deadline = now_s() + secs;
  for (unsigned long i = 0;; i++) {
    if (__atomic_load_n((uint64_t *)(base + off), __ATOMIC_ACQUIRE) == val) return 0;
    if ((i & 63) == 0 && now_s() > deadline) return -1;
    if (i > 16) sched_yield();
  }
}

static uint64_t sparse_val(long off) { return 0x5bd1e995ULL * (uint64_t)(off / 8 + 1) ^ 0xfeedfacecafebeefULL; }

static int stat_size(long *size) {
  struct shmid_ds ds;
  if (shmctl(cur_id, IPC_STAT, &ds) < 0) return -1;
  *size = (long)ds.shm_segsz;
  return 0;
}

static const char *pid_class(pid_t p) { return p == 0 ? "none" : p == getpid() ? "self" : "other"; }

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *t = getenv("SHM_TIMEOUT");
  alarm(t ? (unsigned)atoi(t) : 120);
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
    if (!strcmp(name, "get")) {
      int r = shmget((key_t)num(a[1]), (size_t)strtoull(a[2] ? a[2] : "0", NULL, 0), flags(a[3]));
      if (r >= 0) last_id = r;
      report(name, r);
    } else if (!strcmp(name, "at")) {
      int id = a[1] ? (int)num(a[1]) : last_id;
      void *p = shmat(id, NULL, a[2] ? flags(a[2]) : 0);
      if (p == (void *)-1) {
        report(name, -1);
      } else {
        struct shmid_ds ds;
        base = p;
        cur_id = id;
        int nostat = a[2] && strstr(a[2], "nostat");
        base_size = !nostat && shmctl(id, IPC_STAT, &ds) == 0 ? (long)ds.shm_segsz : -1;
        report(name, 0);
      }
    } else if (!strcmp(name, "dt")) {
      need_base(name);
      int r = shmdt(base);
      if (r == 0) {
        last_base = base;
        base = NULL;
      }
      report(name, r);
    } else if (!strcmp(name, "stat")) {
      struct shmid_ds ds;
      int r = shmctl(a[1] ? (int)num(a[1]) : last_id, IPC_STAT, &ds);
      if (r < 0) report(name, r);
      else
        printf("stat=0 key=%#x segsz=%zu nattch=%lu mode=%o dest=%d cpid=%s lpid=%s atime=%s dtime=%s uid=%u cuid=%u\n",
               (unsigned)ds.shm_perm.__key, (size_t)ds.shm_segsz, (unsigned long)ds.shm_nattch,
               ds.shm_perm.mode & 0777, (ds.shm_perm.mode & SHM_DEST) ? 1 : 0, pid_class(ds.shm_cpid),
               pid_class(ds.shm_lpid), ds.shm_atime ? "set" : "none", ds.shm_dtime ? "set" : "none",
               ds.shm_perm.uid, ds.shm_perm.cuid);
    } else if (!strcmp(name, "set")) {
      struct shmid_ds ds;
      int id = (int)num(a[1]);
      int r = shmctl(id, IPC_STAT, &ds);
      if (r == 0) {
        ds.shm_perm.mode = (unsigned short)strtol(a[2] ? a[2] : "0", NULL, 8);
        r = shmctl(id, IPC_SET, &ds);
      }
      report(name, r);
    } else if (!strcmp(name, "rm")) {
      report(name, shmctl(a[1] ? (int)num(a[1]) : last_id, IPC_RMID, NULL));
    } else if (!strcmp(name, "w")) {
      need_base(name);
      *word(num(a[1])) = (uint64_t)strtoull(a[2] ? a[2] : "0", NULL, 0);
      report(name, 0);
    } else if (!strcmp(name, "r")) {
      need_base(name);
      printf("r=%llu\n", (unsigned long long)*word(num(a[1])));
    } else if (!strcmp(name, "wstr")) {
      need_base(name);
      const char *s = a[2] ? a[2] : "";
      long off = in_seg(num(a[1]), (long)strlen(s));
      for (size_t k = 0; s[k]; k++) ((volatile char *)base)[off + (long)k] = s[k];
      report(name, 0);
    } else if (!strcmp(name, "rstr")) {
      need_base(name);
      long len = num(a[2]), off = in_seg(num(a[1]), len);
      printf("rstr=");
      for (long k = 0; k < len; k++) {
        char ch = ((volatile char *)base)[off + k];
        putchar(ch >= 32 && ch < 127 ? ch : '.');
      }
      printf("\n");
    } else if (!strcmp(name, "waitw")) {
      need_base(name);
      double secs = a[3] ? (double)num(a[3]) : 30.0;
      if (spin_word(in_seg(num(a[1]), 8), (uint64_t)strtoull(a[2] ? a[2] : "0", NULL, 0), secs) < 0) {
        fprintf(stderr, "shm_tool: waitw: word %ld is %llu, not %s after %.0f s\n", num(a[1]),
                (unsigned long long)*word(num(a[1])), a[2], secs);
        printf("waitw=-1 TIMEOUT\n");
        return 1;
      }
      report(name, 0);
    } else if (!strcmp(name, "readinto")) {
      need_base(name);
      const char *s = a[2] ? a[2] : "";
      size_t len = strlen(s);
      int pfd[2];
      if (pipe(pfd) < 0 || write(pfd[1], s, len) != (ssize_t)len) {
        perror("shm_tool: readinto: pipe");
        return 1;
      }
      close(pfd[1]);
      ssize_t r = read(pfd[0], base + in_seg(num(a[1]), (long)len), len);
      close(pfd[0]);
      report(name, r);
    } else if (!strcmp(name, "crashw")) {
      need_base(name);
      long off = num(a[1]);
      uint64_t v = (uint64_t)strtoull(a[2] ? a[2] : "0", NULL, 0);
      fflush(stdout);
      pid_t c = fork();
      if (c < 0) { perror("shm_tool: fork"); return 1; }
      if (c == 0) {
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        alarm(30);
        *word(off) = v;
        _exit(0);
      }
      int st = 0;
      if (waitpid(c, &st, 0) < 0) { perror("shm_tool: waitpid"); return 1; }
      if (WIFSIGNALED(st)) printf("crashw=SIG%s\n", sigabbrev_np(WTERMSIG(st)));
      else printf("crashw=exit %d\n", WEXITSTATUS(st));
    } else if (!strcmp(name, "fork")) {
      need_base(name);
      long off = num(a[1]);
      uint64_t v = (uint64_t)strtoull(a[2] ? a[2] : "0", NULL, 0);
      fflush(stdout);
      pid_t c = fork();
      if (c < 0) { perror("shm_tool: fork"); return 1; }
      if (c == 0) {
        alarm(60);
        printf("fork_child_saw=%llu\n", (unsigned long long)*word(off));
        struct shmid_ds ds;
        if (shmctl(cur_id, IPC_STAT, &ds) < 0) printf("fork_child_nattch=-1 %s\n", strerrorname_np(errno));
        else printf("fork_child_nattch=%lu\n", (unsigned long)ds.shm_nattch);
        if (spin_word(in_seg(off + 8, 8), v + 1, 30) < 0) {
          fprintf(stderr, "shm_tool: fork child: the parent's post-fork write never showed\n");
          _exit(1);
        }
        *word(off) = v;
        fflush(stdout);
        _exit(0);
      }
      __atomic_store_n((uint64_t *)(base + in_seg(off + 8, 8)), v + 1, __ATOMIC_RELEASE);
      int st = 0;
      if (waitpid(c, &st, 0) < 0) { perror("shm_tool: waitpid"); return 1; }
      int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      printf("fork_child_status=%d\n", code);
      printf("fork_parent_sees=%llu\n", (unsigned long long)*word(off));
      if (code != 0) failed = 1;
    } else if (!strcmp(name, "sparsew") || !strcmp(name, "sparsec")) {
      need_base(name);
      long step = num(a[1]), size = 0;
      if (step <= 0 || step % 8) { fprintf(stderr, "shm_tool: %s: bad step\n", name); return 2; }
      if (stat_size(&size) < 0) { report(name, -1); continue; }
      int check = !strcmp(name, "sparsec");
      long count = 0, bad = 0;
      for (long off = 0;; off += step) {
        if (off > size - 8) off = (size - 8) & ~7L;  /* the last word of the segment */
        if (check) {
          uint64_t got = *word(off);
          if (got != sparse_val(off)) {
            if (bad < 10)
              fprintf(stderr, "shm_tool: sparsec: word at %ld is %#llx, want %#llx\n", off, (unsigned long long)got,
                      (unsigned long long)sparse_val(off));
            bad++;
          }
        } else {
          *word(off) = sparse_val(off);
        }
        count++;
        if (off == ((size - 8) & ~7L)) break;
      }
      if (check) {
        printf("sparsec=%ld\n", bad);
        printf("sparse_words=%ld\n", count);
        if (bad) failed = 1;
      } else {
        printf("sparsew=%ld\n", count);
      }
    } else if (!strcmp(name, "forkexec")) {
      fflush(stdout);
      int pfd[2];
      if (pipe(pfd) < 0) { perror("shm_tool: pipe"); return 1; }
      pid_t c = fork();
      if (c < 0) { perror("shm_tool: fork"); return 1; }
      if (c == 0) {
        struct shmid_ds ds;
        if (shmctl(cur_id, IPC_STAT, &ds) < 0) printf("forkexec_child_nattch=-1 %s\n", strerrorname_np(errno));
        else printf("forkexec_child_nattch=%lu\n", (unsigned long)ds.shm_nattch);
        fflush(stdout);
        close(pfd[0]);
        close(pfd[1]);  /* tells the parent the line is out */
        execlp("tail", "tail", "-f", "/dev/null", (char *)NULL);
        _exit(127);
      }
      close(pfd[1]);
      char ch;
      while (read(pfd[0], &ch, 1) < 0 && errno == EINTR) {
      }
      close(pfd[0]);
      printf("forkexec_pid=%d\n", (int)c);
    } else if (!strcmp(name, "blockva")) {
      void *q = last_base ? mmap(last_base, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
                          : MAP_FAILED;
      report(name, q == MAP_FAILED ? -1 : 0);
    } else if (!strcmp(name, "hold")) {
      printf("held=1\n");
      fflush(stdout);
      alarm(600);
      for (;;) pause();
    } else if (!strcmp(name, "waitfile")) {
      long secs = a[2] ? num(a[2]) : 30;
      struct timespec step = {0, 10 * 1000 * 1000};
      long waited = 0;
      while (access(a[1] ? a[1] : "", F_OK) != 0 && waited < secs * 100) {
        nanosleep(&step, NULL);
        ++waited;
      }
      if (access(a[1] ? a[1] : "", F_OK) != 0) {
        fprintf(stderr, "shm_tool: waitfile: %s did not appear in %ld s\n", a[1] ? a[1] : "", secs);
        return 1;
      }
      printf("waitfile=0\n");
    } else if (!strcmp(name, "print")) {
      printf("%s\n", a[1] ? a[1] : "");
    } else if (!strcmp(name, "minflt")) {
      struct rusage ru;
      getrusage(RUSAGE_SELF, &ru);
      printf("minflt=%ld\n", ru.ru_minflt);
    } else {
      fprintf(stderr, "shm_tool: unknown command %s\n", name);
      return 2;
    }
    fflush(stdout);
    free(cmd);
  }
  return failed;
}
