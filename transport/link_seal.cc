#include "transport/link_seal.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sodium.h>

#include <cstring>

namespace dipc::transport {

namespace {
// libsodium's AEAD wants non-null message pointers even for 0 bytes (an empty vector's data() may be null).
uint8_t g_empty[1];
uint8_t* or_empty(uint8_t* p) { return p ? p : g_empty; }
const uint8_t* or_empty(const uint8_t* p) { return p ? p : g_empty; }

// OpenSSL's Poly1305 (EVP_MAC "POLY1305"), fetched once per process; null when the library's providers lack it
// (e.g. a FIPS-only configuration), and then every seal uses libsodium's. Both compute RFC 8439 Poly1305, so the
// tags are the same bytes: the choice is local, never negotiated (tests/unit/conn_test.cc checks the equality).
// OPENSSL_INIT_NO_ATEXIT: libcrypto must not tear itself down at exit before the seals of objects with static storage
// (destroyed after the atexit handlers registered later than their construction) free their contexts.
EVP_MAC* poly1305() {
  static EVP_MAC* const mac = [] {
    OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, nullptr);
    return EVP_MAC_fetch(nullptr, "POLY1305", nullptr);
  }();
  return mac;
}
}  // namespace

FrameSeal::FrameSeal(LinkSecurity mode, const SessionKey& key) : mode_(mode), key_(key) {
  static_assert(crypto_aead_chacha20poly1305_ietf_NPUBBYTES == 12);
  static_assert(crypto_aead_chacha20poly1305_ietf_ABYTES == kSealTagSize);
  static_assert(crypto_onetimeauth_BYTES == kSealTagSize);
  static_assert(sizeof(SessionKey) == crypto_aead_chacha20poly1305_ietf_KEYBYTES);
  if (mode_ == LinkSecurity::kMac && poly1305()) poly_ = EVP_MAC_CTX_new(poly1305());
}

FrameSeal::~FrameSeal() {
  EVP_MAC_CTX_free(poly_);  // cleanses the last one-time key it held
  sodium_memzero(key_.data(), key_.size());
}

void FrameSeal::nonce(uint8_t out[12]) const {
  std::memset(out, 0, 4);
  for (int i = 0; i < 8; ++i) out[4 + i] = static_cast<uint8_t>(seq_ >> (56 - 8 * i));
}

void FrameSeal::mac(const uint8_t* header, std::span<const ByteView> parts, uint8_t* tag) {
  uint8_t n[12];
  nonce(n);
  uint8_t otk[crypto_onetimeauth_KEYBYTES];
  crypto_stream_chacha20_ietf(otk, sizeof otk, n, key_.data());
  // OpenSSL's Poly1305 has AVX2/AVX-512 code paths; libsodium 1.0.18's stops at SSE2: about 2x the bytes per
  // second on a bulk frame and no slower on a 64-byte one (docs/PERFORMANCE.md, "Bulk frames: the MAC").
  size_t len = 0;
  if (poly_ && EVP_MAC_init(poly_, otk, sizeof otk, nullptr) == 1 &&
      EVP_MAC_update(poly_, header, kFrameHeaderSize) == 1) {
    bool ok = true;
    for (ByteView p : parts)
      if (!p.empty() && ok) ok = EVP_MAC_update(poly_, p.data(), p.size()) == 1;
    if (ok && EVP_MAC_final(poly_, tag, &len, kSealTagSize) == 1 && len == kSealTagSize) {
      sodium_memzero(otk, sizeof otk);
      return;
    }
  }
  crypto_onetimeauth_state st;
  crypto_onetimeauth_init(&st, otk);
  crypto_onetimeauth_update(&st, header, kFrameHeaderSize);
  for (ByteView p : parts)
    if (!p.empty()) crypto_onetimeauth_update(&st, p.data(), p.size());
  crypto_onetimeauth_final(&st, tag);
  sodium_memzero(otk, sizeof otk);
  sodium_memzero(&st, sizeof st);
}

void FrameSeal::seal(const uint8_t* header, std::span<const ByteView> parts, Bytes* cipher, uint8_t* tag) {
  switch (mode_) {
    case LinkSecurity::kNone:
      break;
    case LinkSecurity::kMac:
      mac(header, parts, tag);
      break;
    case LinkSecurity::kEncrypt: {
      size_t len = 0;
      for (ByteView p : parts) len += p.size();
      Bytes plain;
      const uint8_t* m = nullptr;
      if (parts.size() == 1) {
        m = parts[0].data();
      } else {
        plain.reserve(len);
        for (ByteView p : parts) plain.insert(plain.end(), p.begin(), p.end());
        m = plain.data();
      }
      cipher->resize(len);
      uint8_t n[12];
      nonce(n);
      crypto_aead_chacha20poly1305_ietf_encrypt_detached(or_empty(cipher->data()), tag, nullptr, or_empty(m), len,
                                                         header, kFrameHeaderSize, nullptr, n, key_.data());
      break;
    }
  }
  ++seq_;
}

bool FrameSeal::open(const uint8_t* header, std::span<uint8_t> payload, const uint8_t* tag) {
  if (failed_) return false;
  bool ok = true;
  if (mode_ == LinkSecurity::kMac) {
    uint8_t want[kSealTagSize];
    ByteView part(payload.data(), payload.size());
    mac(header, std::span<const ByteView>(&part, 1), want);
    ok = crypto_verify_16(want, tag) == 0;
  } else if (mode_ == LinkSecurity::kEncrypt) {
    uint8_t n[12];
    nonce(n);
    uint8_t* p = or_empty(payload.data());
    ok = crypto_aead_chacha20poly1305_ietf_decrypt_detached(p, nullptr, p, payload.size(), tag, header,
                                                            kFrameHeaderSize, n, key_.data()) == 0;
  }
  if (!ok) {
    failed_ = true;
    return false;
  }
  ++seq_;
  return true;
}

}  // namespace dipc::transport
