#include "daemon/transports.h"

#include <fmt/format.h>
#include <sys/resource.h>

#include "common/config.h"
#include "common/log.h"
#include "transport/tcp/tcp_transport.h"
#include "transport/verbs/verbs_transport.h"

namespace dipc::daemon {

Result<std::unique_ptr<transport::Transport>> make_transport(const Config& cfg, EventLoop& loop,
                                                             const ClusterKey& key, std::string* error) {
  // link_security (README "Security"): verbs applies no per-frame seal (one-sided RDMA cannot carry one), so
  // "encrypt" needs tcp and "auto" then picks it; "mac" on verbs authenticates each connection at its handshake only.
  bool encrypt = cfg.link_security == LinkSecurity::kEncrypt;
  if (cfg.transport == "verbs" && encrypt) {
    if (error)
      *error = "link_security = \"encrypt\" needs transport = \"tcp\": verbs moves memory by one-sided RDMA, "
               "which cannot be encrypted or carry a MAC (see README, Security)";
    return Status::err(EINVAL);
  }
  if (cfg.transport == "auto" && encrypt && cfg.nodes.size() > 1)
    DIPC_LOG_INFO("transport auto: link_security \"encrypt\" needs tcp; not considering verbs");
  if (cfg.transport == "verbs" || (cfg.transport == "auto" && !encrypt && cfg.nodes.size() > 1 &&
                                   transport::verbs_usable(cfg.me().address))) {
    transport::VerbsOptions vopt;
    if (Status s = transport::parse_verbs_options(cfg, vopt, error); !s) return s;
    auto t = transport::make_verbs_transport(cfg, loop, key, vopt);
    if (t || cfg.transport == "verbs") {
      if (!t && error) *error = "no usable RDMA device with an active port behind " + cfg.me().address;
      if (t && cfg.link_security == LinkSecurity::kMac)
        DIPC_LOG_WARN("transport verbs: link_security \"mac\" authenticates each connection at its handshake; "
                      "frames after it carry no MAC on verbs (see README, Security): use a fabric you trust");
      return t;
    }
    // "auto": verbs when this node's address has an RDMA device with an active port behind it, else tcp.
    DIPC_LOG_WARN("transport auto: verbs not usable ({}); using tcp", t.status().str());
  }
  transport::TcpOptions opt;
  if (Status s = transport::parse_tcp_options(cfg, opt, error); !s) return s;
  return transport::make_tcp_transport(cfg, loop, key, opt);
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
