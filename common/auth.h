// Node authentication: mutual challenge-response keyed by the cluster secret, built on libsodium.
// The key is BLAKE2b(secret file contents); each side proves knowledge of it with HMAC-SHA-256 over both nonces and
// both node ids, so a transcript cannot be replayed or reflected. No home-made crypto.
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

class ClusterKey {
 public:
  // Derives the key from a secret file (at least 16 bytes). Errors: ENOENT, EACCES, EINVAL (too short).
  static Result<ClusterKey> from_file(const std::string& path);
  static ClusterKey from_secret(ByteView secret);

  Nonce random_nonce() const;
  // role: 'C' for the connecting side, 'S' for the accepting side.
  Mac prove(char role, const Nonce& mine, const Nonce& theirs, uint16_t my_node, uint16_t their_node) const;
  bool verify(char role, const Nonce& theirs, const Nonce& mine, uint16_t their_node, uint16_t my_node,
              const Mac& mac) const;

 private:
  std::array<uint8_t, 32> key_{};
};

// Writes a fresh random secret (64 hex characters) to `path` with mode 0600.
Status write_new_secret(const std::string& path);

}  // namespace dipc
