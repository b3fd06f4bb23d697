#include "daemon/transports.h"

#include "common/config.h"
#include "transport/tcp/tcp_transport.h"

namespace dipc::daemon {

Result<std::unique_ptr<transport::Transport>> make_transport(const Config& cfg, EventLoop& loop,
                                                             const ClusterKey& key) {
  // The verbs provider arrives with the RDMA issue; until then "auto" means tcp.
  if (cfg.transport == "verbs") return Status::err(ENODEV);
  return transport::make_tcp_transport(cfg, loop, key);
}

}  // namespace dipc::daemon
