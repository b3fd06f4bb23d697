/* shm_work: shared memory workloads that check themselves; plain C11 + SysV (+ IPC_DIPC). Every process of a workload
 * opens the segment with shmget(KEY, SIZE, IPC_CREAT|IPC_DIPC|0666) (the caller should create it fresh beforehand with
 * exactly SIZE, zero-filled), prints name=value lines and exits 0, or 1 with a message on stderr when a check failed.
 * Every wait is a bounded spin: the whole run is bounded by SHM_TIMEOUT seconds (default 120; alarm as a backstop).
 *
 *   litmus KEY writer|reader ROUNDS     SIZE 3 pages. Message passing: each round the writer fills the data page
 *       (page 0) with a round-specific pattern by plain stores, then release-stores the round number into the flag
 *       (page 1); the reader acquire-spins on the flag, checks all 512 words, and acks the round (page 2) before the
 *       writer starts the next one. Reader prints mismatches=N rounds=R; writer prints rounds=R.
 *   tcounter KEY ITERS NPROCS THREADS   SIZE (THREADS+2) pages. As counter, with THREADS threads per process, each
 *       adding ITERS and also bumping a word on its own page (faults of several threads of one process at once);
 *       prints counter=NPROCS*THREADS*ITERS.
 *   counter KEY ITERS NPROCS            SIZE 2 pages. After a start barrier, ITERS x __atomic_fetch_add(seq_cst) on the
 *       word at offset 0; after an end barrier checks and prints counter=NPROCS*ITERS.
 *   spinlock KEY ITERS NPROCS           SIZE 4 pages. A CAS spinlock (page 0) guards a plain read-increment-write of a
 *       counter (page 1) and of a second plain word (page 3) that must always equal it; prints errors=0 and, after
 *       an end barrier, counter=NPROCS*ITERS.
 *   random KEY NPROCS INDEX STEPS SEED PAGES   SIZE (PAGES+1) pages. NPROCS processes take turns round robin (turn
 *       word on page 0), STEPS turns each; a turn is 1..16 random word/byte writes over pages 1..PAGES. Everyone
 *       derives every turn's writes from SEED, replays the others' turns on a private reference copy and compares
 *       the whole data area with it before its own turn and at the end. Prints errors=0 checks=N.
 *   pingpong KEY ME ROUNDS              SIZE 1 page. Two processes (ME = 0, 1) alternate by a turn word on the one
 *       page and increment a plain counter on the same page; prints errors=0 counter=2*ROUNDS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#include <dipc/dipc.h>

#define PAGE 4096L
#define WORDS_PER_PAGE (PAGE / 8)

static double deadline;
static const char *who = "shm_work";

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *msg) {
  fprintf(stderr, "%s: %s\n", who, msg);
  exit(1);
}

/* One iteration of a bounded spin: yields, and fails the run once the deadline passed. */
static void spin_step(unsigned long i, const char *what) {
  if (i > 16) sched_yield();
  if ((i & 63) == 0 && now_s() > deadline) {
    fprintf(stderr, "%s: timed out waiting for %s\n", who, what);
    exit(1);
  }
}

static uint64_t *attach(long key, size_t size) {
  int id = shmget((key_t)key, size, IPC_CREAT | IPC_DIPC | 0666);
  if (id < 0) {
    fprintf(stderr, "%s: shmget(%#lx, %zu): %s\n", who, key, size, strerror(errno));
    exit(1);
  }
  void *p = shmat(id, NULL, 0);
  if (p == (void *)-1) {
    fprintf(stderr, "%s: shmat(%d): %s\n", who, id, strerror(errno));
    exit(1);
  }
  return p;
}

/* Everyone adds one, then waits until all n did. */
static void barrier(uint64_t *w, uint64_t n, const char *what) {
  __atomic_fetch_add(w, 1, __ATOMIC_SEQ_CST);
  for (unsigned long i = 0; __atomic_load_n(w, __ATOMIC_ACQUIRE) < n; i++) spin_step(i, what);
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* ---- litmus ---- */
static uint64_t pattern(uint64_t round, long i) { return (round * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)i << 32) ^ (uint64_t)i; }

static int litmus(long key, const char *role, long rounds) {
  uint64_t *seg = attach(key, 3 * PAGE);
  uint64_t *data = seg, *flag = seg + WORDS_PER_PAGE, *ack = seg + 2 * WORDS_PER_PAGE;
  char what[160];
  if (!strcmp(role, "writer")) {
    for (long r = 1; r <= rounds; r++) {
      for (unsigned long i = 0; __atomic_load_n(ack, __ATOMIC_ACQUIRE) != (uint64_t)(r - 1); i++) {
        if ((i & 63) == 0) snprintf(what, sizeof what, "the reader's ack of round %ld (ack %llu flag %llu)", r - 1,
                                    (unsigned long long)*(volatile uint64_t *)ack, (unsigned long long)*(volatile uint64_t *)flag);
        spin_step(i, what);
      }
      for (long i = 0; i < WORDS_PER_PAGE; i++) data[i] = pattern((uint64_t)r, i);  // plain stores
      __atomic_store_n(flag, (uint64_t)r, __ATOMIC_RELEASE);
    }
    printf("rounds=%ld\n", rounds);
    return 0;
  }
  if (strcmp(role, "reader")) die("litmus: role must be writer or reader");
  long mismatches = 0;
  for (long r = 1; r <= rounds; r++) {
    for (unsigned long i = 0; __atomic_load_n(flag, __ATOMIC_ACQUIRE) != (uint64_t)r; i++) {
      if ((i & 63) == 0) snprintf(what, sizeof what, "the writer's flag of round %ld (flag %llu ack %llu)", r,
                                  (unsigned long long)*(volatile uint64_t *)flag, (unsigned long long)*(volatile uint64_t *)ack);
      spin_step(i, what);
    }
    for (long i = 0; i < WORDS_PER_PAGE; i++) {
      uint64_t got = data[i];  // plain loads
      if (got != pattern((uint64_t)r, i)) {
        if (mismatches < 10)
          fprintf(stderr, "%s: round %ld word %ld: %#llx, want %#llx\n", who, r, i, (unsigned long long)got,
                  (unsigned long long)pattern((uint64_t)r, i));
        mismatches++;
      }
    }
    __atomic_store_n(ack, (uint64_t)r, __ATOMIC_RELEASE);
  }
  printf("mismatches=%ld\n", mismatches);
  printf("rounds=%ld\n", rounds);
  return mismatches ? 1 : 0;
}

/* ---- counter ---- */
static int counter(long key, long iters, long nprocs) {
  uint64_t *seg = attach(key, 2 * PAGE);
  uint64_t *ctr = seg, *start = seg + WORDS_PER_PAGE, *end = seg + WORDS_PER_PAGE + 1;
  barrier(start, (uint64_t)nprocs, "the start barrier");
  for (long i = 0; i < iters; i++) __atomic_fetch_add(ctr, 1, __ATOMIC_SEQ_CST);
  barrier(end, (uint64_t)nprocs, "the end barrier");
  uint64_t v = __atomic_load_n(ctr, __ATOMIC_SEQ_CST);
  printf("counter=%llu\n", (unsigned long long)v);
  if (v != (uint64_t)(iters * nprocs)) {
    fprintf(stderr, "%s: counter is %llu, want %ld\n", who, (unsigned long long)v, iters * nprocs);
    return 1;
  }
  return 0;
}

/* ---- tcounter: threads ---- */
struct tc_arg {
  uint64_t *ctr, *own;
  long iters;
};
static void *tc_thread(void *p) {
  struct tc_arg *a = p;
  for (long i = 0; i < a->iters; i++) {
    __atomic_fetch_add(a->ctr, 1, __ATOMIC_SEQ_CST);
    if ((i & 255) == 0) *(volatile uint64_t *)a->own += 1;  // plain writes to this thread's own page
  }
  return NULL;
}
static int tcounter(long key, long iters, long nprocs, long threads) {
  if (threads < 1 || threads > 64) die("tcounter: THREADS must be 1..64");
  uint64_t *seg = attach(key, (size_t)(threads + 2) * PAGE);
  uint64_t *ctr = seg, *start = seg + WORDS_PER_PAGE, *end = seg + WORDS_PER_PAGE + 1;
  barrier(start, (uint64_t)nprocs, "the start barrier");
  pthread_t t[64];
  struct tc_arg a[64];
  for (long k = 0; k < threads; k++) {
    a[k] = (struct tc_arg){ctr, seg + (k + 2) * WORDS_PER_PAGE + (getpid() % 64) * 8 % WORDS_PER_PAGE, iters};
    if (pthread_create(&t[k], NULL, tc_thread, &a[k]) != 0) die("tcounter: pthread_create");
  }
  for (long k = 0; k < threads; k++) pthread_join(t[k], NULL);
  barrier(end, (uint64_t)nprocs, "the end barrier");
  uint64_t v = __atomic_load_n(ctr, __ATOMIC_SEQ_CST);
  printf("counter=%llu\n", (unsigned long long)v);
  if (v != (uint64_t)(iters * nprocs * threads)) {
    fprintf(stderr, "%s: counter is %llu, want %ld\n", who, (unsigned long long)v, iters * nprocs * threads);
    return 1;
  }
  return 0;
}

/* ---- spinlock ---- */
static int spinlock(long key, long iters, long nprocs) {
  uint64_t *seg = attach(key, 4 * PAGE);
  uint64_t *lock = seg, *start = seg + 1, *end = seg + 2;
  volatile uint64_t *ctr = seg + WORDS_PER_PAGE, *shadow = seg + 3 * WORDS_PER_PAGE;
  uint64_t me = (uint64_t)getpid();
  long errors = 0;
  barrier(start, (uint64_t)nprocs, "the start barrier");
  for (long i = 0; i < iters; i++) {
    for (unsigned long k = 0;; k++) {
      uint64_t expected = 0;
      if (__atomic_compare_exchange_n(lock, &expected, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) break;
      spin_step(k, "the lock");
    }
    uint64_t c = *ctr;  // plain read-modify-write, only correct under mutual exclusion
    if (*shadow != c) {
      if (errors < 10) fprintf(stderr, "%s: inside the lock: counter %llu but shadow %llu\n", who, (unsigned long long)c,
                               (unsigned long long)*shadow);
      errors++;
    }
    *ctr = c + 1;
    *shadow = c + 1;
    if (__atomic_load_n(lock, __ATOMIC_RELAXED) != me) {
      errors++;
      fprintf(stderr, "%s: someone else holds my lock\n", who);
    }
    __atomic_store_n(lock, 0, __ATOMIC_RELEASE);
  }
  barrier(end, (uint64_t)nprocs, "the end barrier");
  uint64_t v = *ctr;
  printf("errors=%ld\n", errors);
  printf("counter=%llu\n", (unsigned long long)v);
  if (v != (uint64_t)(iters * nprocs) || *shadow != v) {
    fprintf(stderr, "%s: counter %llu shadow %llu, want %ld\n", who, (unsigned long long)v,
            (unsigned long long)*shadow, iters * nprocs);
    return 1;
  }
  return errors ? 1 : 0;
}

/* ---- random ---- */
/* The writes of global step s (done by process s % nprocs), applied to dst (the segment's data area or the reference). */
static void apply_step(volatile unsigned char *dst, uint64_t seed, long s, long pages) {
  uint64_t st = seed ^ ((uint64_t)s * 0xd1b54a32d192ed03ULL);
  int n = 1 + (int)(splitmix(&st) % 16);
  for (int k = 0; k < n; k++) {
    uint64_t r = splitmix(&st), v = splitmix(&st);
    if (r % 4 == 3) {
      long off = (long)((r >> 8) % (uint64_t)(pages * PAGE));
      dst[off] = (unsigned char)v;
    } else {
      long w = (long)((r >> 8) % (uint64_t)(pages * WORDS_PER_PAGE));
      ((volatile uint64_t *)dst)[w] = v;
    }
  }
}

static long compare(volatile unsigned char *seg, const unsigned char *ref, long pages, long step) {
  long bad = 0;
  for (long w = 0; w < pages * WORDS_PER_PAGE; w++) {
    uint64_t got = ((volatile uint64_t *)seg)[w], want;
    memcpy(&want, ref + w * 8, 8);
    if (got != want) {
      if (bad < 5)
        fprintf(stderr, "%s: before step %ld: data word %ld (page %ld) is %#llx, reference %#llx\n", who, step, w,
                w / WORDS_PER_PAGE + 1, (unsigned long long)got, (unsigned long long)want);
      bad++;
    }
  }
  return bad;
}

static int randomized(long key, long nprocs, long index, long steps, uint64_t seed, long pages) {
  if (nprocs < 1 || index < 0 || index >= nprocs || pages < 1) die("random: bad arguments");
  uint64_t *seg = attach(key, (size_t)(pages + 1) * PAGE);
  uint64_t *turn = seg;
  volatile unsigned char *data = (unsigned char *)seg + PAGE;
  unsigned char *ref = calloc((size_t)(pages * PAGE), 1);
  if (!ref) die("out of memory");
  long total = nprocs * steps, applied = 0, errors = 0, checks = 0;
  char what[160];
  for (long s = index; s < total; s += nprocs) {
    for (unsigned long i = 0; __atomic_load_n(turn, __ATOMIC_ACQUIRE) != (uint64_t)s; i++) {
      if ((i & 63) == 0) snprintf(what, sizeof what, "turn %ld (the turn word is %llu)", s, (unsigned long long)*(volatile uint64_t *)turn);
      spin_step(i, what);
    }
    for (; applied < s; applied++) apply_step(ref, seed, applied, pages);
    errors += compare(data, ref, pages, s);
    checks++;
    apply_step(data, seed, s, pages);
    apply_step(ref, seed, s, pages);
    applied++;
    __atomic_store_n(turn, (uint64_t)(s + 1), __ATOMIC_RELEASE);
  }
  for (unsigned long i = 0; __atomic_load_n(turn, __ATOMIC_ACQUIRE) != (uint64_t)total; i++) spin_step(i, "the last turn");
  for (; applied < total; applied++) apply_step(ref, seed, applied, pages);
  errors += compare(data, ref, pages, total);
  checks++;
  printf("errors=%ld\n", errors);
  printf("checks=%ld\n", checks);
  return errors ? 1 : 0;
}

/* ---- pingpong ---- */
static int pingpong(long key, long me, long rounds) {
  if (me != 0 && me != 1) die("pingpong: ME must be 0 or 1");
  uint64_t *seg = attach(key, PAGE);
  uint64_t *turn = seg;                                   // whose turn: turn % 2
  volatile uint64_t *ctr = seg + 8, *last = seg + 16;     // plain words on the same page
  long errors = 0;
  char what[160];
  for (long r = 0; r < rounds; r++) {
    uint64_t t = (uint64_t)(2 * r + me);
    for (unsigned long i = 0; __atomic_load_n(turn, __ATOMIC_ACQUIRE) != t; i++) {
      if ((i & 63) == 0) snprintf(what, sizeof what, "turn %llu (the turn word is %llu)", (unsigned long long)t, (unsigned long long)*(volatile uint64_t *)turn);
      spin_step(i, what);
    }
    if (*ctr != t || (t > 0 && *last != (uint64_t)(2 - me))) {
      if (errors < 10)
        fprintf(stderr, "%s: turn %llu: counter %llu last %llu\n", who, (unsigned long long)t,
                (unsigned long long)*ctr, (unsigned long long)*last);
      errors++;
    }
    *ctr = *ctr + 1;
    *last = (uint64_t)(me + 1);
    __atomic_store_n(turn, t + 1, __ATOMIC_RELEASE);
  }
  for (unsigned long i = 0; __atomic_load_n(turn, __ATOMIC_ACQUIRE) != (uint64_t)(2 * rounds); i++) spin_step(i, "the end");
  uint64_t v = *ctr;
  printf("errors=%ld\n", errors);
  printf("counter=%llu\n", (unsigned long long)v);
  return errors || v != (uint64_t)(2 * rounds) ? 1 : 0;
}

static long arg(char **argv, int i) { return strtol(argv[i], NULL, 0); }

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *t = getenv("SHM_TIMEOUT");
  int timeout = t ? atoi(t) : 120;
  alarm((unsigned)timeout + 10);
  deadline = now_s() + timeout;
  const char *w = argc > 1 ? argv[1] : "";
  if (!strcmp(w, "litmus") && argc == 5) { who = "shm_work litmus"; return litmus(arg(argv, 2), argv[3], arg(argv, 4)); }
  if (!strcmp(w, "tcounter") && argc == 6) {
    who = "shm_work tcounter";
    return tcounter(arg(argv, 2), arg(argv, 3), arg(argv, 4), arg(argv, 5));
  }
  if (!strcmp(w, "counter") && argc == 5) { who = "shm_work counter"; return counter(arg(argv, 2), arg(argv, 3), arg(argv, 4)); }
  if (!strcmp(w, "spinlock") && argc == 5) { who = "shm_work spinlock"; return spinlock(arg(argv, 2), arg(argv, 3), arg(argv, 4)); }
  if (!strcmp(w, "random") && argc == 8) {
    who = "shm_work random";
    return randomized(arg(argv, 2), arg(argv, 3), arg(argv, 4), arg(argv, 5), strtoull(argv[6], NULL, 0), arg(argv, 7));
  }
  if (!strcmp(w, "pingpong") && argc == 5) { who = "shm_work pingpong"; return pingpong(arg(argv, 2), arg(argv, 3), arg(argv, 4)); }
  fprintf(stderr,
          "usage: shm_work litmus KEY writer|reader ROUNDS | counter KEY ITERS NPROCS | tcounter KEY ITERS NPROCS THREADS | spinlock KEY ITERS NPROCS\n"
          "     | random KEY NPROCS INDEX STEPS SEED PAGES | pingpong KEY ME ROUNDS\n");
  return 2;
}
