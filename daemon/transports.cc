#include "daemon/transports.h"

#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <vector>

#include "common/config.h"
#include "common/log.h"
#include "transport/multi/multi_transport.h"
#include "transport/tcp/tcp_transport.h"
#include "transport/verbs/verbs_transport.h"

namespace dipc::daemon {

Result<std::unique_ptr<transport::Transport>> make_transport(const Config& cfg, EventLoop& loop,
                                                             const ClusterKey& key, std::string* error) {
  // link_security (README "Security", docs/ARCHITECTURE.md "Link security on verbs"): verbs seals every message
  // but moves shared-memory blocks by one-sided RDMA, which carries no MAC and cannot be encrypted, so "encrypt"
  // needs tcp and "auto" then uses tcp to every peer.
  bool encrypt = cfg.link_security == LinkSecurity::kEncrypt;
  constexpr const char* kNoMacOnVerbs =
      "link_security \"mac\" authenticates every verbs message, but not the shared-memory blocks moved by "
      "one-sided RDMA (see README, Security): use a fabric you trust";
  if (cfg.transport == "verbs" && encrypt) {
    if (error)
      *error = "link_security = \"encrypt\" needs transport = \"tcp\": verbs moves shared-memory blocks by "
               "one-sided RDMA, which cannot be encrypted or carry a MAC (see README, Security)";
    return Status::err(EINVAL);
  }
  transport::TcpOptions opt;
  if (Status s = transport::parse_tcp_options(cfg, opt, error); !s) return s;
  if (cfg.transport == "verbs") {
    transport::VerbsOptions vopt;
    if (Status s = transport::parse_verbs_options(cfg, vopt, error); !s) return s;
    auto t = transport::make_verbs_transport(cfg, loop, key, vopt);
    if (!t && error) *error = "no usable RDMA device with an active port behind " + cfg.me().address;
    if (t && cfg.link_security == LinkSecurity::kMac) DIPC_LOG_WARN("transport verbs: {}", kNoMacOnVerbs);
    return t;
  }
  if (cfg.transport != "auto" || cfg.nodes.size() < 2) return transport::make_tcp_transport(cfg, loop, key, opt);
  if (encrypt) {
    DIPC_LOG_INFO("transport auto: link_security \"encrypt\" needs tcp; tcp to every peer");
    return transport::make_tcp_transport(cfg, loop, key, opt);
  }
  // "auto": per peer (transport/multi): verbs to the peers that have RDMA too, tcp to the others. Every node runs
  // tcp; verbs beside it when this node's address has an RDMA device with an active port behind it.
  transport::VerbsOptions vopt;
  if (Status s = transport::parse_verbs_options(cfg, vopt, error); !s) return s;
  std::unique_ptr<transport::Transport> fast;
  if (transport::verbs_usable(cfg.me().address)) {
    auto v = transport::make_verbs_transport(cfg, loop, key, vopt);
    if (v) {
      fast = std::move(*v);
      if (cfg.link_security == LinkSecurity::kMac) DIPC_LOG_WARN("transport auto: {}", kNoMacOnVerbs);
    } else
      DIPC_LOG_WARN("transport auto: verbs not usable ({}); tcp to every peer", v.status().str());
  } else {
    DIPC_LOG_INFO("transport auto: no RDMA device behind {}; tcp to every peer", cfg.me().address);
  }
  std::vector<transport::NodeId> peers;
  for (const auto& n : cfg.nodes)
    if (n.id != cfg.self) peers.push_back(n.id);
  return transport::make_multi_transport(loop, std::move(peers), std::move(fast),
                                         transport::make_tcp_transport(cfg, loop, key, opt),
                                         std::max(opt.connect_timeout_ms, vopt.connect_timeout_ms));
}

Status check_memlock(const transport::Capabilities& caps, const char* provider, uint64_t limit, std::string* error) {
  if (!caps.pins_memory || limit >= kMinMemlockBytes) return Status::ok();
  if (error)
    *error = fmt::format(
        "the {} transport pins registered memory, but the memlock limit (RLIMIT_MEMLOCK) is {} KiB, below the {} KiB "
        "it needs: set LimitMEMLOCK=infinity in dipcd.service (or `ulimit -l unlimited` before starting dipcd)",
        provider, limit / 1024, kMinMemlockBytes / 1024);
  return Status::err(ENOMEM);
}

uint64_t memlock_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return UINT64_MAX;
  return rl.rlim_cur;
}

std::string rdma_device(const Config& cfg) {
  transport::VerbsDeviceInfo info;
  return transport::verbs_usable(cfg.me().address, &info) ? info.device : std::string();
}

}  // namespace dipc::daemon
