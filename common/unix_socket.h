// Unix stream sockets named like "@name" (Linux abstract namespace: one per network namespace, so each simulated
// node has its own) or by a filesystem path.
#pragma once

#include <string>

#include "common/status.h"

namespace dipc {

// Returns a connected, blocking, close-on-exec socket, or an errno.
Result<int> unix_connect(const std::string& name);
// Returns a listening, non-blocking, close-on-exec socket. A path socket is created mode 0666 (access to objects is
// checked per call with the caller's credentials).
Result<int> unix_listen(const std::string& name);
// The daemon socket name programs and tools use: $DIPC_SOCKET, else "@dipc".
std::string default_socket_name();

}  // namespace dipc
