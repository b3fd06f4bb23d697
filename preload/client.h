// The preload's connection to the node's dipcd: one per thread, made lazily, dropped in a fork()ed child.
#pragma once

#include <cstdint>

#include "common/wire.h"
#include "ipc/control.h"

namespace dipc::preload {

// The control page, once a daemon has been reached; nullptr when no daemon answers.
const ipc::ControlPage* control();

struct Reply {
  int status = 0;  // errno of the call (0: success), or EIO on a broken connection
  Bytes body;
};

// Sends one request and waits for its answer. `deadline_ms` < 0 waits without limit; a signal (EINTR from poll) or
// the deadline cancels the request; the answer is then whatever the daemon says: the result if the operation
// completed first, else ECANCELED. `interrupted` tells which of the two stopped the wait.
// Returns false when no daemon could be reached at all.
enum class Stop { kNone, kSignal, kDeadline };
bool call(uint16_t op, const Bytes& body, Reply& out, int64_t deadline_ms = -1, Stop* stopped = nullptr);

int64_t now_ms();

}  // namespace dipc::preload
