/* dipc: distributed System V IPC.
 *
 * OR IPC_DIPC into the flags of shmget(2), semget(2) or msgget(2) to make the key distributed across the cluster.
 * The values are the original DIPC's, still reserved by Linux in <linux/ipc.h>, so programs written for DIPC
 * build unchanged. Without dipc the kernel ignores the bit for semget/msgget and reads it as the harmless
 * SHM_NORESERVE for shmget.
 */
#ifndef DIPC_DIPC_H
#define DIPC_DIPC_H

#ifndef IPC_DIPC
#define IPC_DIPC 00010000 /* make it distributed */
#endif
#ifndef IPC_OWN
#define IPC_OWN 00020000 /* this machine is the DIPC owner */
#endif

/* Identifiers of distributed objects have this bit set (see docs/ARCHITECTURE.md, "Identifiers"). */
#define DIPC_ID_BIT 0x40000000

#endif
