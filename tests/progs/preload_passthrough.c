/* A program written for dipc (IPC_DIPC in its *get flags) runs unchanged without dipc: the kernel ignores the bit
 * for semget/msgget. Exercises the calls and removes what it made; prints "ok". */
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <unistd.h>

#include <dipc/dipc.h>

#define CHECK(x) do { if (!(x)) { perror(#x); return 1; } } while (0)

int main(void) {
  int sem = semget(IPC_PRIVATE, 2, IPC_CREAT | IPC_DIPC | 0600);
  CHECK(sem >= 0);
  CHECK(semctl(sem, 0, SETVAL, 3) == 0);
  struct sembuf op = {0, -2, 0};
  CHECK(semop(sem, &op, 1) == 0);
  CHECK(semctl(sem, 0, GETVAL) == 1);
  int q = msgget(IPC_PRIVATE, IPC_CREAT | IPC_DIPC | 0600);
  CHECK(q >= 0);
  struct { long mtype; char text[16]; } m = {7, "hello"};
  CHECK(msgsnd(q, &m, 6, 0) == 0);
  memset(&m, 0, sizeof m);
  CHECK(msgrcv(q, &m, sizeof m.text, 0, 0) == 6 && m.mtype == 7 && strcmp(m.text, "hello") == 0);
  struct msqid_ds ds;
  CHECK(msgctl(q, IPC_STAT, &ds) == 0 && ds.msg_qnum == 0);
  CHECK(msgctl(q, IPC_RMID, NULL) == 0);
  CHECK(semctl(sem, 0, IPC_RMID) == 0);
  printf("ok\n");
  return 0;
}
