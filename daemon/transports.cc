#include "daemon/transports.h"

#include "common/config.h"
#include "common/log.h"
#include "transport/tcp/tcp_transport.h"
#include "transport/verbs/verbs_transport.h"

namespace dipc::daemon {

Result<std::unique_ptr<transport::Transport>> make_transport(const Config& cfg, EventLoop& loop,
                                                             const ClusterKey& key) {
  if (cfg.transport == "verbs") return transport::make_verbs_transport(cfg, loop, key);
  // "auto": verbs when this node's address has an RDMA device with an active port behind it, else tcp.
  if (cfg.transport == "auto" && cfg.nodes.size() > 1 && transport::verbs_usable(cfg.me().address)) {
    auto t = transport::make_verbs_transport(cfg, loop, key);
    if (t) return t;
    DIPC_LOG_WARN("transport auto: verbs not usable ({}); using tcp", t.status().str());
  }
  return transport::make_tcp_transport(cfg, loop, key);
}

std::string rdma_device(const Config& cfg) {
  transport::VerbsDeviceInfo info;
  return transport::verbs_usable(cfg.me().address, &info) ? info.device : std::string();
}

}  // namespace dipc::daemon
