// Connection setup shared by the providers, as I/O-free pieces in the style of dsm/coherence.h: no sockets, no
// clock reads, no event loop. A provider (tcp: sockets; verbs: rdma_cm + the first SENDs) carries the bytes and the
// timers; these decide.
//  - dials(): which side of a pair connects (the lower id dials, so two nodes never race two links);
//  - Backoff: redial delays, doubling from a minimum to a maximum, reset once a link is up;
//  - Handshake: the mutual challenge-response (common/auth.h) before anything else flows:
//      dialer   -> acceptor  kClientHello {u16 node, nonce_c, u8 mode_c}
//      acceptor -> dialer    kServerHello {u16 node, nonce_s, u8 mode_s, prove('S', nonce_s, nonce_c, acceptor,
//                                          dialer, mode_s)}
//      dialer   -> acceptor  kClientProof {prove('C', nonce_c, nonce_s, dialer, acceptor, mode_c)}
//      acceptor -> dialer    kHelloOk     {}
//    mode is [cluster] link_security. Both sides must run the same: the acceptor that reads another mode in the
//    hello still answers its server hello (so the dialer can name both settings in its log) and fails; the dialer
//    fails on a proven server hello with another mode. Each message is (op, payload), at most kMaxHelloPayload
//    bytes; the provider frames it. A peer that fails it never gets past it, so it never learns a key or reaches a
//    handler. Once done, keys() gives the connection's two session keys (common/auth.h, transport/link_seal.h).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/auth.h"
#include "common/config.h"
#include "common/wire.h"

namespace dipc::transport::conn {

using NodeId = uint16_t;

// True when `self` connects to `peer` (the lower id dials); the other side accepts.
constexpr bool dials(NodeId self, NodeId peer) { return self < peer; }

class Backoff {
 public:
  Backoff(int64_t min_ms, int64_t max_ms) : min_(min_ms), max_(max_ms < min_ms ? min_ms : max_ms) {}
  // The delay before the next attempt: min, 2*min, 4*min ... max.
  int64_t next() {
    cur_ = cur_ ? (cur_ > max_ / 2 ? max_ : 2 * cur_) : min_;
    return cur_;
  }
  void reset() { cur_ = 0; }
  int64_t current() const { return cur_; }

 private:
  int64_t min_, max_, cur_ = 0;
};

enum HelloOp : uint16_t { kClientHello = 1, kServerHello = 2, kClientProof = 3, kHelloOk = 4 };
inline constexpr uint32_t kMaxHelloPayload = 128;

// One connection's session keys, as this side sees them.
struct LinkKeys {
  SessionKey tx;  // frames we send
  SessionKey rx;  // frames we receive
};

struct HelloMsg {
  uint16_t op = 0;
  Bytes payload;
};

class Handshake {
 public:
  enum class Role : uint8_t { kDialer, kAcceptor };
  enum class Result : uint8_t { kContinue, kDone, kFailed };
  // Is `node` a configured node other than ourselves?
  using KnownFn = std::function<bool(NodeId)>;

  // Dialer: `peer` is the node dialled. Acceptor: `peer` is ignored (learnt from the client hello). `mode`: this
  // node's [cluster] link_security, which the peer must share.
  Handshake(const ClusterKey& key, NodeId self, Role role, NodeId peer, KnownFn known, LinkSecurity mode);

  // Dialer only, once the transport is connected: the client hello to send.
  HelloMsg start();
  // A handshake message from the other side; `out` gets what to send (possibly nothing). kFailed: close the
  // connection and log error() (after sending `out` if the provider can: the acceptor's answer to a hello with
  // another link_security); kDone: authenticated (the acceptor may still have to send `out`, the final ok).
  Result on_message(uint16_t op, ByteView payload, std::vector<HelloMsg>& out);

  NodeId peer() const { return peer_; }
  bool done() const { return state_ == State::kDone; }
  LinkSecurity mode() const { return mode_; }
  // The session keys; only once done().
  LinkKeys keys() const;
  const std::string& error() const { return error_; }

 private:
  enum class State : uint8_t { kIdle, kWaitServerHello, kWaitClientHello, kWaitProof, kWaitOk, kDone, kFailed };
  Result fail(std::string why);

  const ClusterKey& key_;
  NodeId self_;
  Role role_;
  NodeId peer_;
  KnownFn known_;
  LinkSecurity mode_;
  State state_;
  Nonce mine_{}, theirs_{};
  std::string error_;
};

}  // namespace dipc::transport::conn
