// Provider selection: the one place that knows the transport providers (transport/<name>/). dsm/ and ipc/ see only
// transport/transport.h.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "transport/transport.h"

namespace dipc {
class EventLoop;
class ClusterKey;
struct Config;
}  // namespace dipc

namespace dipc::daemon {

// Builds the transport the configuration asks for ("tcp", "verbs", or "auto": verbs when a device is usable, else
// tcp); each provider reads its own [transport.<name>] section. Errors: ENODEV when "verbs" is asked for and no
// RDMA device is usable.
Result<std::unique_ptr<transport::Transport>> make_transport(const Config& cfg, EventLoop& loop,
                                                             const ClusterKey& key);

// The RDMA device behind this node's address ("" when none): where the verbs transport runs.
std::string rdma_device(const Config& cfg);

}  // namespace dipc::daemon
