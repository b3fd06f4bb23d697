// dipcd: one per node. Serves the node's programs over a Unix socket and talks to the other nodes' daemons.
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <ctime>
#include <string>

#include "common/auth.h"
#include "common/config.h"
#include "common/event_loop.h"
#include "common/log.h"
#include "common/unix_socket.h"
#include "daemon/client_server.h"
#include "daemon/sched.h"
#include "daemon/placement.h"
#include "daemon/transports.h"
#include "dsm/segment.h"
#include "ipc/service.h"
#include "transport/transport.h"

namespace {

// This start's incarnation: one more than the last one recorded in $STATE_DIRECTORY (systemd) or /var/lib/dipc,
// per node name. Without a writable state directory, the clock's seconds stand in (and we say so): two starts
// 32 seconds apart could then share an incarnation.
std::string state_dir() {
  const char* env = getenv("STATE_DIRECTORY");
  std::string dir = env && *env ? std::string(env).substr(0, std::string(env).find(':')) : "/var/lib/dipc";
  mkdir(dir.c_str(), 0755);
  return dir;
}

uint32_t next_incarnation(const std::string& node) {
  std::string dir = state_dir();
  std::string path = dir + "/incarnation." + node;
  uint32_t last = 0;
  if (FILE* f = fopen(path.c_str(), "r")) {
    if (fscanf(f, "%u", &last) != 1) last = 0;
    fclose(f);
  }
  uint32_t inc = last + 1;
  std::string tmp = path + ".tmp";
  FILE* f = fopen(tmp.c_str(), "w");
  bool ok = f && fprintf(f, "%u\n", inc) > 0;
  if (f) ok = fclose(f) == 0 && ok;
  if (ok && rename(tmp.c_str(), path.c_str()) == 0) return inc;
  DIPC_LOG_WARN("cannot record the daemon's incarnation in {}: {}; using the clock instead", path, strerror(errno));
  return static_cast<uint32_t>(time(nullptr));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dipcd: the dipc node daemon (distributed System V IPC)"};
  std::string config_path, node, socket_name, log_level;
  app.add_option("-c,--config", config_path, "cluster configuration (TOML); default: a single-node cluster");
  app.add_option("-n,--node", node, "this node's name or id in the configuration (default: found by address)");
  app.add_option("-s,--socket", socket_name, "local client socket ('@name' = abstract); overrides the config");
  app.add_option("-l,--log-level", log_level, "trace, debug, info, warn, error, off");
  CLI11_PARSE(app, argc, argv);

  std::string err;
  dipc::Config cfg = dipc::default_config();
  if (!config_path.empty()) {
    auto r = dipc::load_config(config_path, &err);
    if (!r) {
      fprintf(stderr, "dipcd: %s: %s\n", config_path.c_str(), err.c_str());
      return 2;
    }
    cfg = std::move(*r);
  }
  if (!dipc::select_self(cfg, node, &err)) {
    fprintf(stderr, "dipcd: %s\n", err.c_str());
    return 2;
  }
  if (!socket_name.empty()) cfg.socket = socket_name;
  if (!log_level.empty()) cfg.log_level = log_level;
  dipc::log_init(cfg.log_level, cfg.me().name);

  dipc::ClusterKey key = dipc::ClusterKey::from_secret(dipc::ByteView());
  if (!cfg.secret_file.empty()) {
    auto k = dipc::ClusterKey::from_file(cfg.secret_file);
    if (!k) {
      DIPC_LOG_ERROR("cannot use secret file {}: {}", cfg.secret_file, k.status().str());
      return 2;
    }
    key = *k;
  } else if (cfg.nodes.size() > 1) {
    DIPC_LOG_ERROR("a cluster of several nodes needs cluster.secret_file");
    return 2;
  }

  if (auto s = dipc::apply_sched(cfg, &err); !s) {
    DIPC_LOG_ERROR("{}", err);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

  dipc::EventLoop loop;
  loop.set_busy_poll_us(static_cast<int>(cfg.busy_poll_us));
  auto tr = dipc::daemon::make_transport(cfg, loop, key, &err);
  if (!tr) {
    DIPC_LOG_ERROR("no usable transport '{}': {}{}{}", cfg.transport, tr.status().str(), err.empty() ? "" : ": ", err);
    return tr.status().code() == EINVAL ? 2 : 1;
  }
  if (auto s = dipc::daemon::check_memlock((*tr)->caps(), (*tr)->name(), dipc::daemon::memlock_limit(), &err); !s) {
    DIPC_LOG_ERROR("{}", err);
    return 1;
  }
  // The layers, wired here: each registers for its own op range (transport/ops.h); the DSM first, so it sees a
  // lost link before ipc/ does.
  dipc::dsm::Manager dsm(loop, tr->get(), cfg.self, cfg.block_size, cfg.quantum_us, cfg.answer_poll_us);
  dipc::ipc::Service service(cfg, loop, tr->get(), dsm, dipc::ipc::Limits::read_proc());
  service.set_incarnation(next_incarnation(cfg.me().name));
  // Semaphore sets homed here are kernel sets local programs operate on directly (DIPC_KERNEL_SEMS=0: every call
  // through dipcd); the sets a crashed start left are removed before any id is handed out.
  const char* ks = getenv("DIPC_KERNEL_SEMS");
  service.set_kernel_sems(!(ks && std::string(ks) == "0"), state_dir() + "/kernel-sems." + cfg.me().name);
  // Message queues the same way (DIPC_KERNEL_MSGS=0: every msgsnd/msgrcv through dipcd).
  const char* km = getenv("DIPC_KERNEL_MSGS");
  service.set_kernel_msgs(!(km && std::string(km) == "0"), state_dir() + "/kernel-msgs." + cfg.me().name);
  // Each layer sees a peer's frame only after the local programs' one-way notes are applied (ClientServer::drain_notes).
  std::function<void()> drain_notes;
  // A pushed grant (kOpPush) comes from the home of a segment homed elsewhere: no note of this node concerns it (notes
  // are for segments homed here), and it is on a read miss's critical path.
  dipc::NotesFirst dsm_notes_first(dsm, drain_notes, [](uint16_t op) { return op != dipc::dsm::kOpPush; });
  dipc::NotesFirst service_notes_first(service, drain_notes, [](uint16_t op) { return dipc::ipc::depends_on_shm_notes(op); });
  if (auto s = (*tr)->set_handler(dipc::transport::ops::kDsm, &dsm_notes_first); !s) return 1;
  if (auto s = (*tr)->set_handler(dipc::transport::ops::kIpc, &service_notes_first); !s) return 1;
  if (auto s = (*tr)->start(); !s) {
    DIPC_LOG_ERROR("transport {} failed to start: {}", (*tr)->name(), s.str());
    return 1;
  }
  // The loop thread (this one) and the frames memory go to the NUMA node of the RDMA device (no-op on one node).
  // ("auto" runs verbs beside tcp exactly when this node's address has a usable RDMA device.)
  if (std::string tname = tr->get()->name(); tname == "verbs" || tname == "auto") {
    if (std::string dev = dipc::daemon::rdma_device(cfg); !dev.empty())
      service.set_placement(dipc::daemon::place_near_rdma_device(dev));
  }
  dipc::ClientServer clients(loop, service, cfg);
  drain_notes = [&clients] { clients.drain_notes(); };
  if (auto s = clients.listen(cfg.socket); !s) {
    std::string holder = s.code() == EADDRINUSE ? dipc::unix_holder(cfg.socket) : "";
    if (!holder.empty())
      DIPC_LOG_ERROR("socket {} is already held by {}: another dipcd, or a local user squatting the name to read "
                     "programs' calls; refusing to start beside it", cfg.socket, holder);
    else
      DIPC_LOG_ERROR("cannot listen on {}: {}", cfg.socket, s.str());
    return 1;
  }
  dipc::Status watched = loop.add(sfd, EPOLLIN, [&](uint32_t) {
    signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) == sizeof si) loop.stop();
  });
  if (!watched) {
    DIPC_LOG_ERROR("cannot watch for signals: {}", watched.str());
    return 1;
  }
  DIPC_LOG_INFO("dipcd ready: node {} of {}, socket {}, transport {}", cfg.me().name, cfg.nodes.size(), cfg.socket,
                (*tr)->name());
  loop.run();
  drain_notes = nullptr;
  DIPC_LOG_INFO("dipcd stopping");
  (*tr)->stop();
  close(sfd);
  return 0;
}
