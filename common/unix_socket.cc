#include "common/unix_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace dipc {

namespace {
bool make_addr(const std::string& name, sockaddr_un& a, socklen_t& len) {
  std::memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  if (name.empty() || name.size() >= sizeof a.sun_path) return false;
  std::memcpy(a.sun_path, name.data(), name.size());
  if (name[0] == '@') a.sun_path[0] = '\0';
  len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + (name[0] == '@' ? 0 : 1));
  return true;
}
}  // namespace

Result<int> unix_connect(const std::string& name) {
  sockaddr_un a;
  socklen_t len;
  if (!make_addr(name, a, len)) return Status::err(EINVAL);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::err(errno);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), len) != 0) {
    int e = errno;
    close(fd);
    return Status::err(e);
  }
  return fd;
}

Result<int> unix_listen(const std::string& name) {
  sockaddr_un a;
  socklen_t len;
  if (!make_addr(name, a, len)) return Status::err(EINVAL);
  if (name[0] != '@') {
    // A live listener keeps its name (another daemon, or a squatter: the caller says which); a stale one goes.
    if (!unix_holder(name).empty()) return Status::err(EADDRINUSE);
    std::string dir = name.substr(0, name.rfind('/'));
    if (!dir.empty()) mkdir(dir.c_str(), 0755);  // e.g. /run/dipc: only its owner may make names in it
    unlink(name.c_str());
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::err(errno);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(fd, 256) != 0) {
    int e = errno;
    close(fd);
    return Status::err(e);
  }
  if (name[0] != '@') chmod(name.c_str(), 0666);
  return fd;
}

std::string unix_holder(const std::string& name) {
  auto fd = unix_connect(name);
  if (!fd) return "";
  ucred uc{};
  socklen_t len = sizeof uc;
  std::string who = "someone";
  if (getsockopt(*fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) == 0)
    who = "pid " + std::to_string(uc.pid) + " (uid " + std::to_string(uc.uid) + ")";
  close(*fd);
  return who;
}

std::string default_socket_name() {
  const char* e = getenv("DIPC_SOCKET");
  return (e && *e) ? std::string(e) : std::string("@dipc");
}

}  // namespace dipc
