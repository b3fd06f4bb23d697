// Node authentication: mutual challenge-response keyed by the cluster secret, built on libsodium.
// The key is BLAKE2b(secret file contents); each side proves knowledge of it with HMAC-SHA-256 over both nonces and
// both node ids (and the link_security setting each side runs), so a transcript cannot be replayed or reflected. Once
// both are proven, each direction of the connection gets its own session key, BLAKE2b keyed by the cluster key over
// both nonces, ids, the setting and the direction: no key serves two directions or two connections. No home-made
// crypto.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "common/status.h"
#include "common/wire.h"

namespace dipc {

inline constexpr size_t kNonceSize = 32;
inline constexpr size_t kMacSize = 32;
using Nonce = std::array<uint8_t, kNonceSize>;
using Mac = std::array<uint8_t, kMacSize>;
using SessionKey = std::array<uint8_t, 32>;

class ClusterKey {
 public:
  // Derives the key from a secret file (at least 16 bytes). Errors: ENOENT, EACCES, EINVAL (too short).
  static Result<ClusterKey> from_file(const std::string& path);
  static ClusterKey from_secret(ByteView secret);

  Nonce random_nonce() const;
  // role: 'C' for the connecting side, 'S' for the accepting side; link_mode: the prover's link_security.
  Mac prove(char role, const Nonce& mine, const Nonce& theirs, uint16_t my_node, uint16_t their_node,
            uint8_t link_mode) const;
  bool verify(char role, const Nonce& theirs, const Nonce& mine, uint16_t their_node, uint16_t my_node,
              uint8_t link_mode, const Mac& mac) const;
  // The key of one direction of an authenticated connection: dir 'D' for frames the dialer sends, 'A' for frames
  // the acceptor sends.
  SessionKey session_key(char dir, const Nonce& dialer_nonce, const Nonce& acceptor_nonce, uint16_t dialer,
                         uint16_t acceptor, uint8_t link_mode) const;

 private:
  std::array<uint8_t, 32> key_{};
};

// Writes a fresh random secret (64 hex characters) to `path` with mode 0600.
Status write_new_secret(const std::string& path);

}  // namespace dipc
