/* difftest SEED kernel|dipc STEPS: a seeded random sequence of SysV calls, including their edge cases and errors,
 * printing one line per call with its result, errno and out-data (never ids, times or pids). Run once against the
 * kernel and once against dipc: the transcripts must be identical. Nothing blocks (IPC_NOWAIT or a zero timeout). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <time.h>

#include <dipc/dipc.h>

#define SLOTS 3
static unsigned long long rng;
static int rnd(int n) { /* splitmix64 */
  rng += 0x9e3779b97f4a7c15ULL;
  unsigned long long z = rng;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return (int)((z ^ (z >> 31)) % (unsigned long long)n);
}
static const char *res(long r) {
  static char buf[64];
  if (r < 0) snprintf(buf, sizeof buf, "-1 %s", strerrorname_np(errno));
  else snprintf(buf, sizeof buf, "%ld", r);
  return buf;
}

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  rng = strtoull(argv[1], NULL, 0);
  int dflag = strcmp(argv[2], "dipc") == 0 ? IPC_DIPC : 0;
  int steps = atoi(argv[3]);
  key_t base = (key_t)(0x4400000 + (rng % 4096) * 16);
  int sems[SLOTS], msgs[SLOTS];
  for (int i = 0; i < SLOTS; i++) sems[i] = msgs[i] = -1;
  for (int step = 0; step < steps; step++) {
    int s = rnd(SLOTS), what = rnd(16);
    int sid = sems[s], mid = msgs[s]; /* -1 until created: EINVAL everywhere */
    errno = 0;
    printf("%d: ", step);
    switch (what) {
      case 0: {
        int nsems = (int[]){-1, 0, 1, 3, 3, 40000}[rnd(6)];
        int fl = (int[]){0, IPC_CREAT, IPC_CREAT | IPC_EXCL, IPC_CREAT}[rnd(4)] | (rnd(4) ? 0600 : 0400);
        int r = semget(base + s, nsems, fl | dflag);
        if (r >= 0) sems[s] = r;
        printf("semget slot%d nsems=%d flags=%o -> %s\n", s, nsems, fl, r >= 0 ? "ok" : res(r));
        break;
      }
      case 1: case 2: case 3: {
        struct sembuf sops[4];
        int n = rnd(4);
        for (int i = 0; i < n; i++) {
          sops[i].sem_num = (unsigned short)rnd(4);
          sops[i].sem_op = (short)(rnd(5) - 2);
          sops[i].sem_flg = (short)(IPC_NOWAIT | (rnd(2) ? SEM_UNDO : 0));
        }
        if (what == 3 && n > 0) {
          for (int i = 0; i < n; i++) sops[i].sem_flg &= (short)~IPC_NOWAIT;
          struct timespec ts = {0, 0};
          printf("semtimedop slot%d n=%d -> %s\n", s, n, res(semtimedop(sid, sops, (size_t)n, &ts)));
        } else {
          printf("semop slot%d n=%d -> %s\n", s, n, res(semop(sid, sops, (size_t)n)));
        }
        break;
      }
      case 4: {
        int cmd = (int[]){GETVAL, GETNCNT, GETZCNT, 99}[rnd(4)];
        int num = rnd(5) - 1;
        printf("semctl slot%d cmd=%d num=%d -> %s\n", s, cmd, num, res(semctl(sid, num, cmd)));
        break;
      }
      case 5: {
        int val = (int[]){-1, 0, 1, 2, 5, 40000}[rnd(6)];
        int num = rnd(4);
        printf("setval slot%d num=%d val=%d -> %s\n", s, num, val, res(semctl(sid, num, SETVAL, val)));
        break;
      }
      case 6: {
        unsigned short v[8] = {0};
        struct semid_ds ds;
        long r = semctl(sid, 0, IPC_STAT, &ds);
        printf("semstat slot%d -> %s", s, res(r));
        if (r == 0) {
          printf(" mode=%o nsems=%lu", ds.sem_perm.mode & 0777, (unsigned long)ds.sem_nsems);
          r = semctl(sid, 0, GETALL, v);
          printf(" getall=%s", res(r));
          for (unsigned long i = 0; r == 0 && i < ds.sem_nsems && i < 8; i++) printf(" %u", v[i]);
        }
        printf("\n");
        break;
      }
      case 7: {
        unsigned short v[3] = {(unsigned short)rnd(3), (unsigned short)rnd(3), (unsigned short)(rnd(2) ? 1 : 40000)};
        struct semid_ds ds;
        if (semctl(sid, 0, IPC_STAT, &ds) == 0 && ds.sem_nsems == 3)
          printf("setall slot%d -> %s\n", s, res(semctl(sid, 0, SETALL, v)));
        else
          printf("setall slot%d skipped\n", s);
        break;
      }
      case 8:
        if (rnd(3) == 0) {
          int r = semctl(sid, 0, IPC_RMID);
          printf("semrm slot%d -> %s\n", s, res(r));
        } else {
          printf("noop\n");
        }
        break;
      case 9: {
        int fl = (int[]){0, IPC_CREAT, IPC_CREAT | IPC_EXCL, IPC_CREAT}[rnd(4)] | 0600;
        int r = msgget(base + 8 + s, fl | dflag);
        if (r >= 0) msgs[s] = r;
        printf("msgget slot%d flags=%o -> %s\n", s, fl, r >= 0 ? "ok" : res(r));
        break;
      }
      case 10: case 11: {
        struct { long mtype; char text[128]; } m;
        m.mtype = rnd(4);
        int len = rnd(60);
        for (int i = 0; i < len; i++) m.text[i] = (char)('a' + rnd(26));
        printf("msgsnd slot%d type=%ld len=%d -> %s\n", s, m.mtype, len, res(msgsnd(mid, &m, (size_t)len, IPC_NOWAIT)));
        break;
      }
      case 12: case 13: {
        struct { long mtype; char text[128]; } m;
        long typ = rnd(7) - 3;
        int fl = IPC_NOWAIT | (rnd(2) ? MSG_NOERROR : 0) | (rnd(4) == 0 ? MSG_EXCEPT : 0);
        size_t max = (size_t)rnd(64);
        ssize_t r = msgrcv(mid, &m, max, typ, fl);
        printf("msgrcv slot%d typ=%ld max=%zu fl=%o -> %s", s, typ, max, fl, res(r));
        if (r >= 0) printf(" type=%ld text=%.*s", m.mtype, (int)r, m.text);
        printf("\n");
        break;
      }
      case 14: {
        struct msqid_ds ds;
        long r = msgctl(mid, IPC_STAT, &ds);
        printf("msgstat slot%d -> %s", s, res(r));
        if (r == 0) {
          printf(" qnum=%lu cbytes=%lu qbytes=%lu mode=%o", (unsigned long)ds.msg_qnum, (unsigned long)ds.__msg_cbytes,
                 (unsigned long)ds.msg_qbytes, ds.msg_perm.mode & 0777);
          if (rnd(3) == 0) {
            ds.msg_qbytes = (msglen_t)(int[]){40, 100, 16384}[rnd(3)];
            printf(" set qbytes=%lu -> %s", (unsigned long)ds.msg_qbytes, res(msgctl(mid, IPC_SET, &ds)));
          }
        }
        printf("\n");
        break;
      }
      default:
        if (rnd(4) == 0) printf("msgrm slot%d -> %s\n", s, res(msgctl(mid, IPC_RMID, NULL)));
        else printf("noop\n");
    }
  }
  for (int i = 0; i < SLOTS; i++) {
    if (sems[i] >= 0) semctl(sems[i], 0, IPC_RMID);
    if (msgs[i] >= 0) msgctl(msgs[i], IPC_RMID, NULL);
  }
  return 0;
}
