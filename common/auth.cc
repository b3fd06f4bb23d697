#include "common/auth.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <vector>

namespace dipc {

namespace {
struct SodiumInit {
  SodiumInit() {
    if (sodium_init() < 0) abort();
  }
};
void ensure_sodium() { static SodiumInit once; }
}  // namespace

Result<ClusterKey> ClusterKey::from_file(const std::string& path) {
  ensure_sodium();
  std::ifstream f(path, std::ios::binary);
  if (!f) return Status::err(access(path.c_str(), F_OK) == 0 ? EACCES : ENOENT);
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  while (!data.empty() && (data.back() == '\n' || data.back() == '\r' || data.back() == ' ')) data.pop_back();
  if (data.size() < 16) return Status::err(EINVAL);
  return from_secret(data);
}

ClusterKey ClusterKey::from_secret(ByteView secret) {
  ensure_sodium();
  ClusterKey k;
  static const char kContext[] = "dipc cluster key v1";
  crypto_generichash_state st;
  crypto_generichash_init(&st, nullptr, 0, k.key_.size());
  crypto_generichash_update(&st, reinterpret_cast<const uint8_t*>(kContext), sizeof kContext);
  crypto_generichash_update(&st, secret.data(), secret.size());
  crypto_generichash_final(&st, k.key_.data(), k.key_.size());
  return k;
}

Nonce ClusterKey::random_nonce() const {
  Nonce n;
  randombytes_buf(n.data(), n.size());
  return n;
}

Mac ClusterKey::prove(char role, const Nonce& mine, const Nonce& theirs, uint16_t my_node, uint16_t their_node,
                      uint8_t link_mode) const {
  Encoder e;
  e.u8(static_cast<uint8_t>(role));
  e.raw(mine);
  e.raw(theirs);
  e.u16(my_node);
  e.u16(their_node);
  e.u8(link_mode);
  Mac m;
  crypto_auth_hmacsha256(m.data(), e.buf().data(), e.buf().size(), key_.data());
  return m;
}

bool ClusterKey::verify(char role, const Nonce& theirs, const Nonce& mine, uint16_t their_node, uint16_t my_node,
                        uint8_t link_mode, const Mac& mac) const {
  Encoder e;
  e.u8(static_cast<uint8_t>(role));
  e.raw(theirs);
  e.raw(mine);
  e.u16(their_node);
  e.u16(my_node);
  e.u8(link_mode);
  return crypto_auth_hmacsha256_verify(mac.data(), e.buf().data(), e.buf().size(), key_.data()) == 0;
}

SessionKey ClusterKey::session_key(char dir, const Nonce& dialer_nonce, const Nonce& acceptor_nonce, uint16_t dialer,
                                   uint16_t acceptor, uint8_t link_mode) const {
  static const char kContext[] = "dipc link key v1";
  Encoder e;
  e.raw(ByteView(reinterpret_cast<const uint8_t*>(kContext), sizeof kContext));
  e.u8(static_cast<uint8_t>(dir));
  e.raw(dialer_nonce);
  e.raw(acceptor_nonce);
  e.u16(dialer);
  e.u16(acceptor);
  e.u8(link_mode);
  SessionKey k;
  crypto_generichash(k.data(), k.size(), e.buf().data(), e.buf().size(), key_.data(), key_.size());
  return k;
}

Status write_new_secret(const std::string& path) {
  ensure_sodium();
  uint8_t raw[32];
  randombytes_buf(raw, sizeof raw);
  char hex[65];
  sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Status::err(errno);
  std::string s = std::string(hex) + "\n";
  ssize_t w = write(fd, s.data(), s.size());
  int e = errno;
  close(fd);
  if (w != static_cast<ssize_t>(s.size())) return Status::err(w < 0 ? e : EIO);
  return Status::ok();
}

}  // namespace dipc
