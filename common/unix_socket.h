// Unix stream sockets named like "@name" (Linux abstract namespace: one per network namespace, so each simulated
// node has its own) or by a filesystem path.
#pragma once

#include <string>

#include "common/status.h"

namespace dipc {

// Returns a connected, blocking, close-on-exec socket, or an errno.
Result<int> unix_connect(const std::string& name);
// Returns a listening, non-blocking, close-on-exec socket, or EADDRINUSE while something listens on the name. A path
// socket is created mode 0666 (access to objects is checked per call with the caller's credentials) in a directory
// made 0755 if missing; a stale socket file left by a dead daemon is replaced.
Result<int> unix_listen(const std::string& name);
// Who listens on `name` ("pid P (uid U)"), or "" when nobody does.
std::string unix_holder(const std::string& name);
// The daemon socket name programs and tools use: $DIPC_SOCKET, else "@dipc".
std::string default_socket_name();

}  // namespace dipc
