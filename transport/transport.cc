#include "transport/transport.h"

#include "common/config.h"
#include "common/log.h"
#include "transport/tcp/tcp_transport.h"
#include "transport/verbs/verbs_transport.h"

namespace dipc::transport {

Result<std::unique_ptr<Transport>> make_transport(const Config& cfg, EventLoop& loop, const ClusterKey& key) {
  if (cfg.transport == "verbs") return make_verbs_transport(cfg, loop, key);
  // "auto": verbs when this node's address has an RDMA device with an active port behind it, else tcp.
  if (cfg.transport == "auto" && cfg.nodes.size() > 1 && verbs_usable(cfg.me().address)) {
    auto t = make_verbs_transport(cfg, loop, key);
    if (t) return t;
    DIPC_LOG_WARN("transport auto: verbs unusable ({}); using tcp", t.status().str());
  }
  return std::unique_ptr<Transport>(make_tcp_transport(cfg, loop, key));
}

}  // namespace dipc::transport
