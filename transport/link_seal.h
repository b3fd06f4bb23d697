// Per-frame integrity, and optionally confidentiality, on an authenticated node link ([cluster] link_security),
// I/O-free and shared by the providers like conn.h. One FrameSeal per direction of one connection, keyed by that
// direction's session key (conn::Handshake::keys()), so no key ever serves two directions or two connections.
//
// Both ends count the frames of a direction from 0: the sequence number is implicit and is the AEAD nonce
// (4 zero bytes + u64 big-endian), so a replayed, dropped, reordered or injected frame fails to open.
//   "mac":     the frame travels in the clear, followed by a 16-byte Poly1305 tag over header ‖ payload under a
//              one-time key drawn from ChaCha20(session key, nonce) (RFC 8439 §2.6: the AEAD with the whole frame
//              as associated data and no plaintext), computed over the payload's pieces without copying them
//              (OpenSSL's Poly1305 where available, libsodium's otherwise: the same tag either way).
//   "encrypt": ChaCha20-Poly1305-IETF (libsodium) of the payload, with the 24-byte header as associated data; the
//              header (kind, op, id, status, length) stays readable, the payload does not.
//   "none":    nothing added.
// On the wire the tag follows the payload and the header's length field counts it (the reassembly is unchanged).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "common/auth.h"
#include "common/config.h"
#include "common/frame.h"
#include "common/wire.h"

struct evp_mac_ctx_st;  // OpenSSL's EVP_MAC_CTX

namespace dipc::transport {

inline constexpr size_t kSealTagSize = 16;

class FrameSeal {
 public:
  FrameSeal(LinkSecurity mode, const SessionKey& key);
  ~FrameSeal();
  FrameSeal(const FrameSeal&) = delete;
  FrameSeal& operator=(const FrameSeal&) = delete;

  LinkSecurity mode() const { return mode_; }
  // Bytes a sealed frame carries beyond its payload.
  size_t overhead() const { return mode_ == LinkSecurity::kNone ? 0 : kSealTagSize; }
  // Frames sealed or opened so far (the next frame's sequence number).
  uint64_t seq() const { return seq_; }

  // Sender, frames in stream order. `header`: the encoded header, its length field already counting overhead().
  // `parts`: the payload, in pieces. mac: writes the tag. encrypt: writes the payload's ciphertext to `cipher`
  // (the frame then carries it instead of `parts`) and the tag. none: nothing.
  void seal(const uint8_t* header, std::span<const ByteView> parts, Bytes* cipher, uint8_t* tag);

  // Receiver, frames in arrival order. `payload` without the tag; decrypted in place under encrypt. False when
  // the frame is not the next one this key sealed (forged, altered, replayed, reordered): close the connection;
  // the seal then refuses everything.
  [[nodiscard]] bool open(const uint8_t* header, std::span<uint8_t> payload, const uint8_t* tag);

 private:
  void nonce(uint8_t out[12]) const;
  void mac(const uint8_t* header, std::span<const ByteView> parts, uint8_t* tag);

  LinkSecurity mode_;
  SessionKey key_;
  uint64_t seq_ = 0;
  bool failed_ = false;
  evp_mac_ctx_st* poly_ = nullptr;  // mac: OpenSSL's Poly1305, re-keyed per frame; null: libsodium's
};

}  // namespace dipc::transport
