/* prodcons: producers and consumers on one System V message queue, given by id (made by the caller). Plain SysV.
 *
 *   prodcons producer QID PRODUCER COUNT   sends COUNT items (mtype 1) tagged PRODUCER and seq 0..COUNT-1, each
 *                                          with a payload derived from both; prints "sent PRODUCER COUNT"
 *   prodcons consumer QID                  receives (any type, blocking) until a stop message (mtype 2); checks
 *                                          every payload and that each producer's seqs arrive in increasing order;
 *                                          prints "got PRODUCER SEQ" per item, then "stopped after N"
 *   prodcons stop QID N                    sends N stop messages
 *
 * Loss and duplication across several consumers are checked by whoever merges their "got" lines.
 * Exit 0 on success; 1 with a message on stderr on a failed call or a corrupt, duplicate or reordered item.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>

#define MAXPROD 64

struct item {
  long mtype;
  char text[256];
};

/* "P S " followed by a filler whose length and letters depend on P and S. */
static size_t payload(char *out, int p, int s) {
  int n = snprintf(out, 32, "%d %d ", p, s);
  int fill = (s * 7 + p * 13) % 150;
  for (int i = 0; i < fill; i++) out[n + i] = (char)('a' + (p + s + i) % 26);
  return (size_t)(n + fill);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 3) {
    fprintf(stderr, "usage: prodcons producer QID P COUNT | consumer QID | stop QID N\n");
    return 2;
  }
  int q = atoi(argv[2]);
  struct item it;
  if (!strcmp(argv[1], "producer") && argc == 5) {
    int p = atoi(argv[3]), count = atoi(argv[4]);
    for (int s = 0; s < count; s++) {
      it.mtype = 1;
      size_t len = payload(it.text, p, s);
      if (msgsnd(q, &it, len, 0) < 0) {
        fprintf(stderr, "prodcons: producer %d: msgsnd seq %d: %s\n", p, s, strerror(errno));
        return 1;
      }
    }
    printf("sent %d %d\n", p, count);
    return 0;
  }
  if (!strcmp(argv[1], "consumer") && argc == 3) {
    int last[MAXPROD];
    for (int i = 0; i < MAXPROD; i++) last[i] = -1;
    long n = 0;
    for (;;) {
      ssize_t r = msgrcv(q, &it, sizeof it.text, 0, 0);
      if (r < 0) {
        fprintf(stderr, "prodcons: consumer: msgrcv after %ld items: %s\n", n, strerror(errno));
        return 1;
      }
      if (it.mtype == 2) break;
      int p = -1, s = -1;
      char want[256];
      if (it.mtype != 1 || sscanf(it.text, "%d %d ", &p, &s) != 2 || p < 0 || p >= MAXPROD || s < 0) {
        fprintf(stderr, "prodcons: consumer: malformed item (type %ld, %zd bytes)\n", it.mtype, r);
        return 1;
      }
      size_t wl = payload(want, p, s);
      if ((size_t)r != wl || memcmp(want, it.text, wl) != 0) {
        fprintf(stderr, "prodcons: consumer: corrupt payload for producer %d seq %d (%zd bytes, want %zu)\n", p, s, r,
                wl);
        return 1;
      }
      if (s <= last[p]) {
        fprintf(stderr, "prodcons: consumer: producer %d seq %d after seq %d (duplicate or reordered)\n", p, s, last[p]);
        return 1;
      }
      last[p] = s;
      printf("got %d %d\n", p, s);
      n++;
    }
    printf("stopped after %ld\n", n);
    return 0;
  }
  if (!strcmp(argv[1], "stop") && argc == 4) {
    for (int i = 0, n = atoi(argv[3]); i < n; i++) {
      it.mtype = 2;
      if (msgsnd(q, &it, 0, 0) < 0) {
        fprintf(stderr, "prodcons: stop: msgsnd: %s\n", strerror(errno));
        return 1;
      }
    }
    printf("stop sent\n");
    return 0;
  }
  fprintf(stderr, "prodcons: bad arguments\n");
  return 2;
}
