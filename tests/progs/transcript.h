/* What the differential test programs (difftest.c, shmdiff.c) share: a seeded generator, and the way a call's
 * result is printed in a transcript. Header-only: each program is one translation unit. */
#ifndef DIPC_TESTS_PROGS_TRANSCRIPT_H
#define DIPC_TESTS_PROGS_TRANSCRIPT_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned long long rng; /* the sequence's state; seed it before use */
static int rnd(int n) {        /* splitmix64, uniform in [0, n) */
  rng += 0x9e3779b97f4a7c15ULL;
  unsigned long long z = rng;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return (int)((z ^ (z >> 31)) % (unsigned long long)n);
}
/* One of the listed values, chosen by rnd(). */
#define PICK(...) ((long[]){__VA_ARGS__}[rnd((int)(sizeof((long[]){__VA_ARGS__}) / sizeof(long)))])

/* "-1 ERRNONAME" or the value. */
static const char *res(long r) {
  static char buf[64];
  if (r < 0) snprintf(buf, sizeof buf, "-1 %s", strerrorname_np(errno));
  else snprintf(buf, sizeof buf, "%ld", r);
  return buf;
}
/* Pids differ between runs: print only whose they are. With DIPC_TEST_ANY_PID=1 only whether one is set: under
 * dipc-exec (a static binary) the pids dipc records are dipc-exec's (README). */
static const char *pidclass(long pid) {
  if (pid && getenv("DIPC_TEST_ANY_PID")) return "set";
  return pid == 0 ? "0" : pid == getpid() ? "self" : "other";
}

#endif
