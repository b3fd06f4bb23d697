// Provider selection: the one place that knows the transport providers (transport/<name>/). dsm/ and ipc/ see only
// transport/transport.h.
#pragma once

#include <cstdint>
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

// Builds the transport the configuration asks for ("tcp", "verbs", or "auto": per peer, verbs when both nodes have a
// usable RDMA device, else tcp: transport/multi); each provider reads its own [transport.<name>] section. Errors: ENODEV when "verbs" is asked for and no
// RDMA device is usable; EINVAL with `error` naming the setting for a bad [transport.<name>] value.
Result<std::unique_ptr<transport::Transport>> make_transport(const Config& cfg, EventLoop& loop, const ClusterKey& key,
                                                             std::string* error);

// The smallest RLIMIT_MEMLOCK a pinning provider starts with: the frames of a few segments' chunks.
inline constexpr uint64_t kMinMemlockBytes = uint64_t{64} << 20;

// A provider that pins registered memory needs a memlock limit: ENOMEM with a message naming the setting when
// `limit` (bytes; UINT64_MAX: unlimited) is below kMinMemlockBytes. `limit` is RLIMIT_MEMLOCK's soft value.
Status check_memlock(const transport::Capabilities& caps, const char* provider, uint64_t limit, std::string* error);
// The current soft RLIMIT_MEMLOCK in bytes (UINT64_MAX: unlimited).
uint64_t memlock_limit();

// The RDMA device behind this node's address ("" when none): where the verbs transport runs.
std::string rdma_device(const Config& cfg);

}  // namespace dipc::daemon
