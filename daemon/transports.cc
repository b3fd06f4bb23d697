#include "daemon/transports.h"

#include <fmt/format.h>
#include <sys/resource.h>

#include "common/config.h"
#include "transport/tcp/tcp_transport.h"

namespace dipc::daemon {

Result<std::unique_ptr<transport::Transport>> make_transport(const Config& cfg, EventLoop& loop,
                                                             const ClusterKey& key, std::string* error) {
  // The verbs provider arrives with the RDMA issue; until then "auto" means tcp.
  if (cfg.transport == "verbs") {
    if (error) *error = "no usable RDMA device (the verbs transport is not built in)";
    return Status::err(ENODEV);
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

}  // namespace dipc::daemon
