/* shmdiff: a seeded random sequence of SysV shared memory calls (shmget/shmat/shmdt/shmctl, edge cases and errors
 * included) and of loads and stores into the attached memory, printing one line per call with its result, errno
 * name and out-data. Never prints ids, addresses, times or pids themselves: slot numbers, attach numbers, window
 * numbers and classes ("self"/"other"/"0", "set"/"0", "as-asked"/"0"). Run once against the local kernel and once
 * against dipc: the transcripts must be identical. Nothing blocks. Plain SysV code.
 *
 *   shmdiff setup kernel|dipc SEED
 *       creates the segments the sequence starts from (4 slots of 1, 4096, 4097 and 12288 bytes, assorted modes;
 *       some get a pattern written through a short-lived attach) and prints "ids I0 I1 I2 I3". With dipc this can
 *       run on another node than `run`, so the segments' home is remote.
 *   shmdiff run kernel|dipc SEED STEPS I0 I1 I2 I3
 *       the sequence, starting from those ids; removes whatever is left at the end (not printed).
 *
 * Explicit attach addresses come from a region of windows the program reserves (PROT_NONE) at start: a window is
 * always either reserved or holds one attach at its base, so attaches at NULL never land there and an address is
 * free only between the program freeing it and its shmat. SHM_REMAP only ever replaces a whole attach (the new
 * segment is at least as long), never part of one (Linux then counts split VMAs in shm_nattch).
 *
 * "kernel" uses keys without IPC_DIPC (run it without the preload); "dipc" ORs IPC_DIPC into every shmget.
 * Exit 0 when the sequence ran (whatever the calls returned), 2 on bad usage, 1 on a setup failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

#include <dipc/dipc.h>

#include "transcript.h"

/* SHMDIFF_RAW=1: raw system calls instead of libc's wrappers (difftest.c does the same; a macro naming itself calls
 * the real function). Under dipc they are seen through the preload's seccomp path (DIPC_SECCOMP=1). */
#include <sys/syscall.h>
static int use_raw;
#define shmget(k, n, f) (use_raw ? (int)syscall(SYS_shmget, k, n, f) : shmget(k, n, f))
#define shmat(i, a, f) (use_raw ? (void *)syscall(SYS_shmat, i, a, f) : shmat(i, a, f))
#define shmdt(a) (use_raw ? (int)syscall(SYS_shmdt, a) : shmdt(a))
#define shmctl(i, c, b) (use_raw ? (int)syscall(SYS_shmctl, i, c, b) : shmctl(i, c, b))

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef SHM_DEST
#define SHM_DEST 01000
#endif
#ifndef SHM_LOCKED
#define SHM_LOCKED 02000
#endif

#define NSLOT 4
#define NWIN 8
#define WINPAGES 5 /* > the largest segment (12289 bytes: 4 pages) */
#define MAXATT 24
#define MAXSTALE 64


static int dflag;
static key_t base;
static long pg;
static key_t slot_key(int s) { return base + s; } /* s == NSLOT: a key nobody creates (ENOENT) */

static const char *resp(void *p) { return p == (void *)-1 ? res(-1) : "ok"; }
static size_t pages_of(size_t size) { return (size + (size_t)pg - 1) / (size_t)pg; }

static void print_shmstat(int id, key_t want_key) {
  struct shmid_ds ds;
  memset(&ds, 0, sizeof ds);
  long r = shmctl(id, IPC_STAT, &ds);
  printf(" stat=%s", res(r));
  if (r < 0) return;
  printf(" key=%s segsz=%lu nattch=%lu mode=%o dest=%d locked=%d uid=%u gid=%u cuid=%u cgid=%u atime=%s dtime=%s"
         " ctime=%s cpid=%s lpid=%s",
         ds.shm_perm.__key == want_key ? "as-asked" : ds.shm_perm.__key == 0 ? "0" : "OTHER",
         (unsigned long)ds.shm_segsz, (unsigned long)ds.shm_nattch, ds.shm_perm.mode & 0777,
         !!(ds.shm_perm.mode & SHM_DEST), !!(ds.shm_perm.mode & SHM_LOCKED), ds.shm_perm.uid, ds.shm_perm.gid,
         ds.shm_perm.cuid, ds.shm_perm.cgid, ds.shm_atime ? "set" : "0", ds.shm_dtime ? "set" : "0",
         ds.shm_ctime ? "set" : "0", pidclass(ds.shm_cpid), pidclass(ds.shm_lpid));
}

/* FNV-1a of a byte range */
static int cmpstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
/* What a scan finds, sorted: indices and ids differ between the kernel and dipc, what is found must not. */
static void scan_shm(int any) {
  struct shm_info si;
  memset(&si, 0, sizeof si);
  int maxidx = shmctl(0, SHM_INFO, (struct shmid_ds *)&si);
  printf("shminfo -> %s used=%d tot=%lu", maxidx < 0 ? res(-1) : "ok", si.used_ids, (unsigned long)si.shm_tot);
  struct shminfo li;
  memset(&li, 0, sizeof li);
  long r = shmctl(0, IPC_INFO, (struct shmid_ds *)&li);
  printf(" ipcinfo=%s shmmax=%lu shmmni=%lu shmall=%lu", r < 0 ? res(-1) : "ok", li.shmmax, li.shmmni, li.shmall);
  char *found[128];
  int n = 0;
  for (int i = 0; i <= maxidx && n < 128; i++) {
    struct shmid_ds ds;
    memset(&ds, 0, sizeof ds);
    int id = shmctl(i, any ? SHM_STAT_ANY : SHM_STAT, &ds);
    if (id < 0 && errno == EINVAL) continue;
    char buf[160];
    key_t k = ds.shm_perm.__key;
    if (id < 0) snprintf(buf, sizeof buf, "%s", res(-1));
    else snprintf(buf, sizeof buf, "key=%s mode=%o size=%lu nattch=%lu cpid=%s", k == IPC_PRIVATE ? "private"
                  : k >= base && k < base + 16 ? "base" : "OTHER", ds.shm_perm.mode & 01777,
                  (unsigned long)ds.shm_segsz, (unsigned long)ds.shm_nattch, pidclass(ds.shm_cpid));
    found[n++] = strdup(buf);
  }
  printf(" %s found=%d", any ? "shmstatany" : "shmstat", n);
  qsort(found, (size_t)n, sizeof *found, cmpstr);
  for (int i = 0; i < n; i++) {
    printf(" {%s}", found[i]);
    free(found[i]);
  }
}

static unsigned long long sum(const unsigned char *p, size_t n) {
  unsigned long long h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

static sigjmp_buf segv_jmp;
static void on_segv(int sig) {
  (void)sig;
  siglongjmp(segv_jmp, 1);
}

static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "shmdiff: timed out\n";
  ssize_t n = write(2, msg, sizeof msg - 1);
  (void)n;
  _exit(3);
}

static const int slot_size[NSLOT] = {1, 4096, 4097, 12288};

static int setup(void) {
  int ids[NSLOT];
  for (int s = 0; s < NSLOT; s++) {
    int mode = (int)PICK(0600, 0640, 0666, 0400, 0644);
    int id = shmget(slot_key(s), (size_t)slot_size[s], IPC_CREAT | IPC_EXCL | mode | dflag);
    if (id < 0) { perror("shmdiff setup: shmget"); return 1; }
    if (rnd(2)) { /* a pattern written by another process: lpid, atime, dtime set */
      unsigned char *p = shmat(id, NULL, 0);
      if (p == (void *)-1) { perror("shmdiff setup: shmat"); return 1; }
      for (int i = 0, n = 1 + rnd(16); i < n; i++) p[rnd(slot_size[s])] = (unsigned char)rnd(256);
      if (shmdt(p) < 0) { perror("shmdiff setup: shmdt"); return 1; }
    }
    ids[s] = id;
  }
  printf("ids");
  for (int i = 0; i < NSLOT; i++) printf(" %d", ids[i]);
  printf("\n");
  return 0;
}

struct att {
  int live;
  unsigned char *addr;
  int id;
  size_t size;
  int rdonly;
  int win; /* -1: attached at an address the kernel chose */
};

static struct att atts[MAXATT];
static int win_att[NWIN]; /* attach index at the window's base, or -1: the window is reserved (PROT_NONE) */
static char *wins;
static int ids[NSLOT];
static size_t sizes[NSLOT];
static int stale[MAXSTALE], nstale;

static char *win_base(int w) { return wins + (size_t)w * WINPAGES * (size_t)pg; }
static void reserve(int w) { /* the window is ours (no attach in it): make it all PROT_NONE again */
  if (mmap(win_base(w), WINPAGES * (size_t)pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
      MAP_FAILED) {
    perror("shmdiff: reserve");
    exit(1);
  }
}
static void unreserve(int w, size_t len) { munmap(win_base(w), len); }

static int free_att(void) {
  for (int i = 0; i < MAXATT; i++)
    if (!atts[i].live) return i;
  return -1;
}
static int pick_att(int want_rw) { /* a random live attach (-1: none) */
  int n = 0, cand[MAXATT];
  for (int i = 0; i < MAXATT; i++)
    if (atts[i].live && (!want_rw || !atts[i].rdonly)) cand[n++] = i;
  return n ? cand[rnd(n)] : -1;
}
static void add_stale(int id) {
  if (nstale < MAXSTALE) stale[nstale++] = id;
}

/* The target of an id-taking call: mostly a slot's current id, sometimes an old one, rarely an invalid one. */
struct target {
  int id;
  size_t size;  /* as far as we know (0: unknown) */
  key_t key;
  char name[32];
};
static struct target pick_target(int s) {
  struct target t;
  int k = rnd(12);
  if (k == 0 && nstale > 0) {
    int i = rnd(nstale);
    t.id = stale[i];
    t.size = 0;
    t.key = slot_key(s); /* whatever: a stale id's key is 0 or OTHER */
    snprintf(t.name, sizeof t.name, "stale%d", i);
  } else if (k == 1) {
    t.id = -1;
    t.size = 0;
    t.key = 0;
    snprintf(t.name, sizeof t.name, "minus1");
  } else {
    t.id = ids[s];
    t.size = sizes[s];
    t.key = slot_key(s);
    snprintf(t.name, sizeof t.name, "slot%d", s);
  }
  return t;
}

/* Records a successful attach; returns its index. */
static int record(unsigned char *p, int id, size_t size, int rdonly, int win) {
  int i = free_att();
  atts[i] = (struct att){1, p, id, size, rdonly, win};
  if (win >= 0) win_att[win] = i;
  return i;
}

static int do_detach(int i) { /* shmdt of attach i, then the window is reserved again */
  long r = shmdt(atts[i].addr);
  if (r == 0) {
    atts[i].live = 0;
    if (atts[i].win >= 0) {
      win_att[atts[i].win] = -1;
      reserve(atts[i].win);
    }
  }
  return (int)r;
}

static size_t stat_size(int id) { /* the segment's size by IPC_STAT, 0 if refused (errno kept) */
  struct shmid_ds ds;
  int saved = errno;
  size_t n = shmctl(id, IPC_STAT, &ds) == 0 ? ds.shm_segsz : 0;
  errno = saved;
  return n;
}

static void private_sequence(void) {
  size_t size = (size_t)PICK(0, 1, 5000, 5000, 8192, -1);
  int id = shmget(IPC_PRIVATE, size, IPC_CREAT | 0600 | dflag);
  printf("private size=%ld -> %s", (long)size, id >= 0 ? "ok" : res(id));
  if (id < 0) {
    printf("\n");
    return;
  }
  int id2 = shmget(IPC_PRIVATE, size, IPC_CREAT | IPC_EXCL | 0640 | dflag); /* IPC_EXCL means nothing here */
  printf(" second=%s", id2 >= 0 ? (id2 != id ? "two" : "SAME") : res(id2));
  if (id2 >= 0) printf(" rm2=%s", res(shmctl(id2, IPC_RMID, NULL)));
  print_shmstat(id, IPC_PRIVATE);
  unsigned char *p = shmat(id, NULL, 0);
  printf(" at=%s", resp(p));
  if (p != (void *)-1) {
    for (int i = 0; i < 8; i++) p[rnd((int)size)] = (unsigned char)rnd(256);
    unsigned char *q = shmat(id, NULL, SHM_RDONLY);
    printf(" at2=%s", resp(q));
    if (q != (void *)-1) {
      printf(" sum=%016llx", sum(q, size));
      printf(" dt2=%s", res(shmdt(q)));
    }
    printf(" rm=%s", res(shmctl(id, IPC_RMID, NULL)));
    print_shmstat(id, IPC_PRIVATE);
    p[0] ^= 0x5a; /* still usable through its attach */
    printf(" sum=%016llx", sum(p, size));
    unsigned char *r = shmat(id, NULL, 0); /* Linux lets a removed segment be attached while it lives */
    printf(" at3=%s", resp(r));
    if (r != (void *)-1) {
      printf(" same=%d", r[0] == p[0]);
      printf(" dt3=%s", res(shmdt(r)));
    }
    /* its last attach replaced by a new one of itself (SHM_REMAP, same range): Linux counts the new attach before
     * the old one goes, so the removed segment lives on */
    unsigned char *m = shmat(id, p, SHM_REMAP);
    printf(" remap=%s", m == (void *)-1 ? res(-1) : m == p ? "same-place" : "ELSEWHERE");
    if (m != (void *)-1) {
      print_shmstat(id, IPC_PRIVATE);
      printf(" sum=%016llx", sum(m, size));
      p = m;
    }
    printf(" dt=%s", res(shmdt(p)));
  } else {
    printf(" rm=%s", res(shmctl(id, IPC_RMID, NULL)));
  }
  print_shmstat(id, IPC_PRIVATE); /* gone */
  printf(" stale_at=%s", resp(shmat(id, NULL, 0)));
  printf(" stale_rm=%s", res(shmctl(id, IPC_RMID, NULL)));
  printf("\n");
}

static int run(int steps, char **idv) {
  for (int s = 0; s < NSLOT; s++) {
    ids[s] = atoi(idv[s]);
    sizes[s] = (size_t)slot_size[s];
  }
  wins = mmap(NULL, NWIN * WINPAGES * (size_t)pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (wins == MAP_FAILED) { perror("shmdiff: mmap"); return 1; }
  for (int w = 0; w < NWIN; w++) win_att[w] = -1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_segv;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_NODEFER;
  sigaction(SIGSEGV, &sa, NULL);

  for (int step = 0; step < steps; step++) {
    int s = rnd(NSLOT), what = rnd(21);
    errno = 0;
    printf("%d: ", step);
    switch (what) {
      case 0: case 1: { /* shmget: existing (same, EINVAL for a larger size, size 0 fine), EEXIST, ENOENT, new */
        int never = rnd(6) == 0;
        size_t size = (size_t)PICK(0, 0, 1, (long)sizes[s], (long)sizes[s] + 1, 4096, 4097, 12288, 12289, -1);
        int fl = (int)PICK(0, IPC_CREAT, IPC_CREAT | IPC_EXCL, IPC_CREAT, 0) | (int)PICK(0600, 0600, 0400, 0666);
        if (never) fl &= ~IPC_CREAT;
        int r = shmget(never ? slot_key(NSLOT) : slot_key(s), size, fl | dflag);
        printf("shmget %s size=%ld flags=%o -> ", never ? "never" : "slot", (long)size, fl);
        if (r >= 0) {
          int same = r == ids[s];
          printf("ok %s", never ? "NEVER" : same ? "same" : "new");
          if (!never && !same) {
            add_stale(ids[s]);
            ids[s] = r;
            sizes[s] = size;
          }
          if (!never) print_shmstat(r, slot_key(s));
          printf("\n");
        } else {
          printf("%s\n", res(r));
        }
        break;
      }
      case 2: /* IPC_PRIVATE segments, start to end */
        if (rnd(2)) private_sequence();
        else printf("noop\n");
        break;
      case 3: case 4: { /* shmat at an address the kernel chooses */
        struct target t = pick_target(s);
        int fl = (int)PICK(0, 0, 0, SHM_RDONLY, SHM_RDONLY, SHM_RND, SHM_REMAP, SHM_EXEC, SHM_RDONLY | SHM_EXEC);
        if (rnd(10) == 0) { /* below SHMLBA: SHM_RND would round it to 0, which SHM_REMAP refuses (EINVAL) */
          printf("shmat %s low fl=rnd|remap -> %s\n", t.name,
                 resp(shmat(t.id, (void *)(uintptr_t)(1 + rnd((int)pg - 1)), SHM_RND | SHM_REMAP)));
          break;
        }
        printf("shmat %s null fl=%o", t.name, fl);
        if (free_att() < 0) {
          printf(" -> full\n");
          break;
        }
        unsigned char *p = shmat(t.id, NULL, fl);
        printf(" -> %s", resp(p));
        if (p != (void *)-1) {
          size_t size = t.size ? t.size : stat_size(t.id);
          printf(" att%d", record(p, t.id, size, !!(fl & SHM_RDONLY), -1));
        }
        printf("\n");
        break;
      }
      case 5: case 6: case 7: { /* shmat at a chosen address: aligned, unaligned (EINVAL), SHM_RND, SHM_REMAP, overlap */
        struct target t = pick_target(s);
        int w = rnd(NWIN), v = rnd(5);
        int fl = rnd(4) == 0 ? SHM_RDONLY : 0;
        long off = 0;
        if (v == 1 || v == 2) off = 1 + rnd((int)pg - 1);
        if (v == 2) fl |= SHM_RND;
        if (v == 3) fl |= SHM_REMAP;
        int occupied = win_att[w] >= 0;
        printf("shmat %s win%d%s v%d off=%s fl=%o", t.name, w, occupied ? "(att)" : "", v, off ? "odd" : "0", fl);
        if (free_att() < 0) {
          printf(" -> full\n");
          break;
        }
        size_t len = t.size ? pages_of(t.size) * (size_t)pg : 0;
        if (v == 3 && occupied && pages_of(atts[win_att[w]].size) * (size_t)pg > len) {
          /* would replace part of an attach only: not exercised (see the top) */
          printf(" -> skip\n");
          break;
        }
        int freed = 0;
        if ((v == 0 || v == 2) && !occupied) {
          unreserve(w, WINPAGES * (size_t)pg);
          freed = 1;
        }
        unsigned char *p = shmat(t.id, win_base(w) + off, fl);
        printf(" -> %s", resp(p));
        if (p != (void *)-1) {
          printf(" %s", p == (unsigned char *)win_base(w) ? "at-window" : "ELSEWHERE");
          if (v == 3 && occupied) { /* the old attach was replaced whole */
            int old = win_att[w];
            atts[old].live = 0;
            printf(" replaced=att%d", old);
          }
          size_t size = t.size ? t.size : stat_size(t.id);
          printf(" att%d", record(p, t.id, size, !!(fl & SHM_RDONLY), w));
          if (freed) { /* the rest of the window is reserved again */
            size_t used = pages_of(size) * (size_t)pg;
            if (mmap(win_base(w) + used, WINPAGES * (size_t)pg - used, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) == MAP_FAILED) {
              perror("shmdiff: reserve tail");
              return 1;
            }
          }
        } else if (freed) {
          reserve(w);
        }
        printf("\n");
        break;
      }
      case 8: case 9: { /* shmdt: an attach's start (0), or not one (EINVAL) */
        int i = pick_att(0);
        int v = rnd(6);
        if (v < 3 && i >= 0) {
          printf("shmdt att%d -> %s\n", i, res(do_detach(i)));
        } else if (v == 3 && i >= 0) {
          printf("shmdt att%d+%s -> %s\n", i, atts[i].size > (size_t)pg ? "page" : "1",
                 res(shmdt(atts[i].addr + (atts[i].size > (size_t)pg ? pg : 1))));
        } else if (v == 4) {
          int w = rnd(NWIN);
          printf("shmdt win%d%s -> %s\n", w, win_att[w] >= 0 ? "(att)+page" : "",
                 res(shmdt(win_base(w) + (win_att[w] >= 0 ? WINPAGES - 1 : 0) * pg)));
        } else {
          printf("shmdt null -> %s\n", res(shmdt(NULL)));
        }
        break;
      }
      case 10: case 11: { /* stores, then loads through every attach of... whatever is attached */
        int i = pick_att(rnd(4) != 0);
        if (i < 0) {
          printf("write none\n");
          break;
        }
        struct att *a = &atts[i];
        size_t span = rnd(5) == 0 ? pages_of(a->size) * (size_t)pg : a->size; /* the last page's tail too */
        int n = 1 + rnd(8);
        printf("write att%d n=%d span=%s", i, n, span == a->size ? "size" : "pages");
        if (a->rdonly) {
          volatile unsigned char *p = a->addr + rnd((int)span);
          if (sigsetjmp(segv_jmp, 1) == 0) {
            *p = 1;
            printf(" -> WROTE\n");
          } else {
            printf(" -> SIGSEGV\n");
          }
          break;
        }
        for (int k = 0; k < n; k++) a->addr[rnd((int)span)] = (unsigned char)rnd(256);
        printf(" -> ok\n");
        break;
      }
      case 12: { /* loads: checksums of the segment's bytes and of the tail of its last page */
        int i = pick_att(0);
        if (i < 0) {
          printf("read none\n");
          break;
        }
        struct att *a = &atts[i];
        size_t all = pages_of(a->size) * (size_t)pg;
        printf("read att%d size=%lu sum=%016llx tail=%016llx\n", i, (unsigned long)a->size, sum(a->addr, a->size),
               sum(a->addr + a->size, all - a->size));
        break;
      }
      case 13: case 14: { /* IPC_STAT of a slot, of an attach's segment, of an old id */
        int i = pick_att(0);
        if (rnd(3) == 0 && i >= 0) {
          printf("shmstat att%d", i);
          print_shmstat(atts[i].id, atts[i].id == ids[s] ? slot_key(s) : 0);
        } else {
          struct target t = pick_target(s);
          printf("shmstat %s", t.name);
          print_shmstat(t.id, t.key);
        }
        printf("\n");
        break;
      }
      case 15: { /* IPC_SET of the mode (and owner), EFAULT on a NULL buffer */
        struct target t = pick_target(s);
        if (rnd(6) == 0) {
          printf("shmset %s null -> %s\n", t.name, res(shmctl(t.id, IPC_SET, NULL)));
          break;
        }
        struct shmid_ds ds;
        memset(&ds, 0, sizeof ds);
        long r = shmctl(t.id, IPC_STAT, &ds);
        int mode = (int)PICK(0600, 0640, 0400, 0666, 0, 01777, 0444);
        unsigned uid = (unsigned)PICK(0, 0, 0, 1234), gid = (unsigned)PICK(0, 0, 0, 4321);
        if (r == 0) {
          ds.shm_perm.mode = (unsigned short)mode;
          ds.shm_perm.uid = uid;
          ds.shm_perm.gid = gid;
          r = shmctl(t.id, IPC_SET, &ds);
        }
        printf("shmset %s mode=%o uid=%u gid=%u -> %s", t.name, mode, uid, gid, res(r));
        print_shmstat(t.id, t.key);
        printf("\n");
        break;
      }
      case 16: { /* SHM_LOCK / SHM_UNLOCK (recorded: SHM_LOCKED) */
        struct target t = pick_target(s);
        int cmd = rnd(2) ? SHM_LOCK : SHM_UNLOCK;
        printf("shm%s %s -> %s", cmd == SHM_LOCK ? "lock" : "unlock", t.name, res(shmctl(t.id, cmd, NULL)));
        print_shmstat(t.id, t.key);
        printf("\n");
        break;
      }
      case 17: { /* IPC_RMID (attached or not), then what is left of it */
        struct target t = pick_target(s);
        if (rnd(3) == 0) {
          printf("shmrm %s -> %s", t.name, res(shmctl(t.id, IPC_RMID, NULL)));
          print_shmstat(t.id, t.key);
          printf("\n");
        } else {
          printf("noop\n");
        }
        break;
      }
      case 20: /* SHM_INFO, IPC_INFO and a SHM_STAT / SHM_STAT_ANY scan over every index, as ipcs does */
        scan_shm(rnd(2));
        printf("\n");
        break;
      default: { /* commands no kernel knows, a NULL IPC_STAT buffer */
        struct target t = pick_target(s);
        int v = rnd(3);
        if (v == 0) printf("shmctl %s cmd=99 -> %s\n", t.name, res(shmctl(t.id, 99, NULL)));
        else if (v == 1) printf("shmctl %s cmd=-1 -> %s\n", t.name, res(shmctl(t.id, -1, NULL)));
        else printf("shmstat %s null -> %s\n", t.name, res(shmctl(t.id, IPC_STAT, NULL)));
        break;
      }
    }
  }
  fflush(stdout);
  for (int s = 0; s < NSLOT; s++) shmctl(ids[s], IPC_RMID, NULL);
  for (int i = 0; i < nstale; i++) shmctl(stale[i], IPC_RMID, NULL);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 4 || (strcmp(argv[2], "kernel") && strcmp(argv[2], "dipc"))) {
    fprintf(stderr, "usage: shmdiff setup kernel|dipc SEED | shmdiff run kernel|dipc SEED STEPS IDS...\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  use_raw = getenv("SHMDIFF_RAW") && !strcmp(getenv("SHMDIFF_RAW"), "1");
  signal(SIGALRM, on_alarm);
  alarm(100);
  pg = sysconf(_SC_PAGESIZE);
  dflag = strcmp(argv[2], "dipc") == 0 ? IPC_DIPC : 0;
  unsigned long long seed = strtoull(argv[3], NULL, 0);
  base = (key_t)(0x53000000 + (seed % 4096) * 16);
  if (!strcmp(argv[1], "setup")) {
    rng = seed ^ 0x5e75e75e7ULL;
    return setup();
  }
  if (!strcmp(argv[1], "run") && argc == 5 + NSLOT) {
    rng = seed;
    return run(atoi(argv[4]), argv + 5);
  }
  fprintf(stderr, "shmdiff: bad arguments\n");
  return 2;
}
