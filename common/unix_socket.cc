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
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::err(errno);
  if (name[0] != '@') unlink(name.c_str());
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(fd, 256) != 0) {
    int e = errno;
    close(fd);
    return Status::err(e);
  }
  if (name[0] != '@') chmod(name.c_str(), 0666);
  return fd;
}

std::string default_socket_name() {
  const char* e = getenv("DIPC_SOCKET");
  return (e && *e) ? std::string(e) : std::string("@dipc");
}

}  // namespace dipc
