// dipc: the administration tool. `dipc status`, `dipc ipcs`, `dipc on`, `dipc off`, `dipc secret FILE`.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <thread>

#include "common/auth.h"
#include "common/config.h"
#include "common/event_loop.h"
#include "common/frame.h"
#include "common/unix_socket.h"
#include "ipc/protocol.h"

namespace {

// One synchronous request to the daemon; returns the response status and body, or -errno on a socket failure.
int ask(const std::string& sock, uint16_t op, const dipc::Bytes& body, dipc::Bytes& out, int timeout_ms) {
  auto fd = dipc::unix_connect(sock);
  if (!fd) return -fd.status().code();
  dipc::Bytes req;
  dipc::append_frame(req, dipc::FrameHeader{dipc::FrameKind::kRequest, op, 1, 0, 0}, body);
  if (send(*fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    close(*fd);
    return -EIO;
  }
  dipc::FrameParser parser;
  dipc::FrameParser::Frame f;
  int64_t deadline = dipc::EventLoop::now_ms() + timeout_ms;
  int rc = -ETIMEDOUT;
  while (dipc::EventLoop::now_ms() < deadline) {
    pollfd p{*fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(deadline - dipc::EventLoop::now_ms())) <= 0) continue;
    uint8_t buf[65536];
    ssize_t n = recv(*fd, buf, sizeof buf, 0);
    if (n <= 0) {
      rc = -ECONNRESET;
      break;
    }
    parser.feed(buf, static_cast<size_t>(n));
    if (parser.next(f)) {
      out = std::move(f.payload);
      rc = f.header.status;
      break;
    }
    if (parser.failed()) {
      rc = -EPROTO;
      break;
    }
  }
  close(*fd);
  return rc;
}

int status(const std::string& sock, double wait_s) {
  int64_t deadline = dipc::EventLoop::now_ms() + static_cast<int64_t>(wait_s * 1000);
  for (;;) {
    dipc::Bytes out;
    int rc = ask(sock, dipc::ipc::kAdminStatus, {}, out, 5000);
    dipc::ipc::AdminStatusResp r;
    bool ok = rc == 0 && dipc::ipc::decode_body(out, r);
    bool ready = ok && r.peers_up == r.peers_total;
    if (ready || dipc::EventLoop::now_ms() >= deadline) {
      if (!ok) {
        fprintf(stderr, "dipc: no daemon answers on %s (%s)\n", sock.c_str(), strerror(rc < 0 ? -rc : rc));
        return 1;
      }
      fputs(r.text.c_str(), stdout);
      if (wait_s > 0 && !ready) {
        fprintf(stderr, "dipc: only %u of %u peers connected\n", r.peers_up, r.peers_total);
        return 1;
      }
      return 0;
    }
    // Polling the daemon at a fixed interval until the bounded deadline.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// `dipc ipcs`: every object of the cluster, laid out like ipcs(1), plus the node that hosts each one.
int ipcs(const std::string& sock, const std::string& config_path) {
  dipc::Bytes out;
  int rc = ask(sock, dipc::ipc::kAdminObjects, {}, out, 10000);
  dipc::ipc::ObjListResp r;
  if (rc != 0 || !dipc::ipc::decode_body(out, r)) {
    fprintf(stderr, "dipc: no daemon answers on %s (%s)\n", sock.c_str(),
            rc ? strerror(rc < 0 ? -rc : rc) : "malformed answer");
    return 1;
  }
  // Node names from the cluster configuration when it can be read; node ids otherwise.
  std::map<uint16_t, std::string> names;
  std::string err;
  if (auto cfg = dipc::load_config(config_path, &err))
    for (const auto& n : cfg->nodes) names[n.id] = n.name;
  auto node = [&](uint16_t id) { return names.count(id) ? names[id] : std::to_string(id); };
  using dipc::ipc::ObjType;
  auto section = [&](ObjType t, const char* title, const char* header) {
    printf("\n------ %s --------\n%s\n", title, header);
    for (const auto& e : r.entries) {
      if (e.type != t) continue;
      printf("0x%08x %-10d %-10u %-10o ", static_cast<unsigned>(e.key), e.id, e.uid, e.mode & 0777u);
      unsigned long long a = e.a, b = e.b;
      if (t == ObjType::kSem) printf("%-10llu ", a);
      if (t == ObjType::kMsg) printf("%-12llu %-10llu ", b, a);
      if (t == ObjType::kShm) {
        std::string st = (e.mode & 01000) ? "dest" : "";
        if (e.mode & 02000) st += st.empty() ? "locked" : " locked";
        printf("%-10llu %-10llu %-10s ", a, b, st.c_str());
      }
      printf("%s\n", node(e.home).c_str());
    }
  };
  section(ObjType::kSem, "Semaphore Arrays", "key        semid      owner      perms      nsems      home");
  section(ObjType::kMsg, "Message Queues", "key        msqid      owner      perms      used-bytes   messages   home");
  section(ObjType::kShm, "Shared Memory Segments",
          "key        shmid      owner      perms      bytes      nattch     status     home");
  if (!r.unreachable.empty()) {
    printf("\n");
    for (uint16_t n : r.unreachable) printf("unreachable: %s (its objects are not listed)\n", node(n).c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dipc: administer the dipc daemon of this node"};
  app.require_subcommand(1);
  std::string sock = dipc::default_socket_name();
  app.add_option("-s,--socket", sock, "daemon socket (default $DIPC_SOCKET or @dipc)");
  double wait_s = 0;
  auto* st = app.add_subcommand("status", "show this node, its peers and link state, and the objects it hosts");
  st->add_option("-w,--wait", wait_s, "wait up to this many seconds until all peers are connected");
  const char* env_cfg = getenv("DIPC_CONFIG");
  std::string config_path = env_cfg && *env_cfg ? env_cfg : "/etc/dipc/dipc.toml";
  auto* ip = app.add_subcommand("ipcs", "list every semaphore set, message queue and segment of the cluster");
  ip->add_option("-c,--config", config_path, "cluster configuration, for node names (default $DIPC_CONFIG or "
                                             "/etc/dipc/dipc.toml)");
  auto* on = app.add_subcommand("on", "distribute new keys again");
  auto* off = app.add_subcommand("off", "send new *get calls to the local kernel; running programs are unaffected");
  std::string secret_path;
  auto* secret = app.add_subcommand("secret", "write a new random cluster secret (mode 0600)");
  secret->add_option("file", secret_path)->required();
  CLI11_PARSE(app, argc, argv);

  if (*st) return status(sock, wait_s);
  if (*ip) return ipcs(sock, config_path);
  if (*on || *off) {
    dipc::Bytes out;
    int rc = ask(sock, dipc::ipc::kAdminEnable, dipc::ipc::encode_body(dipc::ipc::AdminEnableReq{bool(*on)}), out,
                 5000);
    if (rc != 0) {
      fprintf(stderr, "dipc: %s\n", strerror(rc < 0 ? -rc : rc));
      return 1;
    }
    printf("distribution %s\n", *on ? "on" : "off");
    return 0;
  }
  if (*secret) {
    if (auto s = dipc::write_new_secret(secret_path); !s) {
      fprintf(stderr, "dipc: %s: %s\n", secret_path.c_str(), s.str().c_str());
      return 1;
    }
    return 0;
  }
  return 0;
}
