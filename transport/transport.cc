#include "transport/transport.h"

#include "common/config.h"
#include "transport/tcp/tcp_transport.h"

namespace dipc::transport {

Result<std::unique_ptr<Transport>> make_transport(const Config& cfg, EventLoop& loop, const ClusterKey& key) {
  // The verbs transport arrives with the RDMA issue; until then "auto" means tcp.
  if (cfg.transport == "verbs") return Status::err(ENODEV);
  return std::unique_ptr<Transport>(make_tcp_transport(cfg, loop, key));
}

}  // namespace dipc::transport
