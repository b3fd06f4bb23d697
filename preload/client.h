// The preload's connection to the node's dipcd: one per thread, made lazily, remade when the thread's effective
// uid/gid change (the daemon learns them from SO_PEERCRED), dropped without a word in a fork()ed child.
// The daemon's control page (ipc/control.h) arrives with the kHello response and is mapped once per process.
#pragma once

#include <signal.h>

#include <cstdint>
#include <functional>

#include "common/wire.h"
#include "ipc/control.h"
#include "ipc/shm_table.h"

namespace dipc::preload {

// The control page, or nullptr while no daemon answers. Without a page, tries to connect on the calling thread (at
// most one attempt per second in the whole process).
const ipc::ControlPage* control();
// Non-zero (EPROTO) once a daemon answered but cannot be used: its control page is of another byte order or
// version, or it speaks another protocol version (said once on stderr). *get calls then fail with this errno
// instead of going to the kernel, since the node's policy cannot be read.
int daemon_incompatible();
// The daemon's segment table (ipc/shm_table.h), or nullptr: none, or this thread's connection to the daemon is
// gone or not made yet (a dead daemon's table must not answer; a restarted daemon's comes with its new connection).
// `check_alive` false: without the liveness check (one poll), for a caller whose next step speaks to the daemon and
// fails if it is gone (the one-way attach's note).
const ipc::ShmTable* shm_table(bool check_alive = true);

// How a request may end before its answer.
struct Wait {
  bool interruptible = false;  // a signal handler running cancels it (semop, msgsnd, msgrcv that may block)
  int64_t deadline_ns = -1;    // CLOCK_MONOTONIC; >= 0: reaching it cancels it (semtimedop)
};

struct Reply {
  int status = 0;  // errno of the call; EINTR / EAGAIN when cancelled by a signal / the deadline; EIO: broken link
  Bytes body;
  bool interrupted = false;  // a signal handler ran while an interruptible call waited (its answer came anyway)
  bool unknown_id() const;  // EINVAL with kUnknownIdMarker: the kernel should answer instead
};

// Checks the body of a successful (status 0) response; false makes it a protocol error (EIO).
using Accept = std::function<bool(ByteView body)>;

// Sends one request and waits for its one response. When no daemon can be reached, keeps trying for $DIPC_RETRY_MS
// (default 1000) and then answers EIO: a call on a distributed object never goes to the kernel instead.
// A cancelled request still gets its answer: the result if the operation
// completed first (returned as is), else ECANCELED (returned as EINTR or EAGAIN).
void call(uint16_t op, const Bytes& body, Reply& out, const Wait& wait = {}, const Accept& accept = {});

// One system call made of several requests (semop: the set's kernel id, then the operation): signals stay blocked
// from the first request to the last answer and are let in only while a request waits (ppoll), so a signal that
// arrives anywhere in the call interrupts it, as the kernel's check before it sleeps does, instead of running its
// handler between two requests and leaving the second one asleep. Nested: a call() from a handler that runs inside
// another call's wait ignores it. Not for a call that goes on into a kernel system call: release() first.
class CallGate {
 public:
  CallGate();
  ~CallGate() { release(); }
  CallGate(const CallGate&) = delete;
  CallGate& operator=(const CallGate&) = delete;
  // Signals let in again (a pending one's handler runs now).
  void release();
  // A signal with a handler arrived since the gate closed and waits to be delivered.
  bool signal_pending() const;

 private:
  sigset_t old_{};
  bool blocked_ = false;
};

int64_t now_ns();
// DIPC_SPIN_US in nanoseconds: how long a program polls for its daemon's answer before it sleeps, when a CPU is
// spare (common/spare_cpu.h).
int64_t answer_spin_ns();

// A blocking, close-on-exec connection to the node's dipcd ($DIPC_SOCKET, default "@dipc"; '@' = abstract), or -1.
// The listener must be root, the caller's effective uid or $DIPC_DAEMON_UID (SO_PEERCRED); else -1 and a line on
// stderr (once): a squatter never sees a call.
int connect_socket();

}  // namespace dipc::preload
