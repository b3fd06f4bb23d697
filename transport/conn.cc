#include "transport/conn.h"

#include <cstring>
#include <optional>
#include <string>

#include <fmt/format.h>

namespace dipc::transport::conn {

namespace {

template <size_t N>
void get(Decoder& d, std::array<uint8_t, N>& a) {
  ByteView v = d.raw(N);
  if (d.ok()) std::memcpy(a.data(), v.data(), N);
}

// The mode on the wire; anything else is a malformed hello.
std::optional<LinkSecurity> mode_of(uint8_t v) {
  if (v > static_cast<uint8_t>(LinkSecurity::kEncrypt)) return std::nullopt;
  return static_cast<LinkSecurity>(v);
}

std::string mismatch(NodeId peer, LinkSecurity theirs, LinkSecurity mine) {
  return fmt::format(
      "link_security mismatch: node {} runs link_security = \"{}\", this node \"{}\" ([cluster] link_security "
      "must be the same on every node)",
      peer, link_security_name(theirs), link_security_name(mine));
}

}  // namespace

Handshake::Handshake(const ClusterKey& key, NodeId self, Role role, NodeId peer, KnownFn known, LinkSecurity mode)
    : key_(key),
      self_(self),
      role_(role),
      peer_(role == Role::kDialer ? peer : 0),
      known_(std::move(known)),
      mode_(mode),
      state_(role == Role::kDialer ? State::kIdle : State::kWaitClientHello) {}

Handshake::Result Handshake::fail(std::string why) {
  state_ = State::kFailed;
  error_ = std::move(why);
  return Result::kFailed;
}

HelloMsg Handshake::start() {
  mine_ = key_.random_nonce();
  state_ = State::kWaitServerHello;
  Encoder e;
  e.u16(self_);
  e.raw(mine_);
  e.u8(static_cast<uint8_t>(mode_));
  return HelloMsg{kClientHello, e.take()};
}

LinkKeys Handshake::keys() const {
  bool dialer = role_ == Role::kDialer;
  const Nonce& nc = dialer ? mine_ : theirs_;
  const Nonce& ns = dialer ? theirs_ : mine_;
  NodeId d = dialer ? self_ : peer_, a = dialer ? peer_ : self_;
  auto m = static_cast<uint8_t>(mode_);
  SessionKey kd = key_.session_key('D', nc, ns, d, a, m), ka = key_.session_key('A', nc, ns, d, a, m);
  return dialer ? LinkKeys{kd, ka} : LinkKeys{ka, kd};
}

Handshake::Result Handshake::on_message(uint16_t op, ByteView body, std::vector<HelloMsg>& out) {
  if (body.size() > kMaxHelloPayload) return fail("oversized handshake message");
  Decoder d(body);
  switch (state_) {
    case State::kWaitClientHello: {
      if (op != kClientHello) break;
      NodeId node = d.u16();
      get(d, theirs_);
      std::optional<LinkSecurity> mode = mode_of(d.u8());
      if (!d.done() || !mode) return fail("malformed client hello");
      if (node == self_ || !known_ || !known_(node)) return fail(fmt::format("hello from unknown node {}", node));
      if (!dials(node, self_)) return fail(fmt::format("node {} dials us but we dial it (lower id dials)", node));
      peer_ = node;
      mine_ = key_.random_nonce();
      Encoder e;
      e.u16(self_);
      e.raw(mine_);
      e.u8(static_cast<uint8_t>(mode_));
      e.raw(key_.prove('S', mine_, theirs_, self_, peer_, static_cast<uint8_t>(mode_)));
      out.push_back(HelloMsg{kServerHello, e.take()});
      if (*mode != mode_) return fail(mismatch(node, *mode, mode_));
      state_ = State::kWaitProof;
      return Result::kContinue;
    }
    case State::kWaitServerHello: {
      if (op != kServerHello) break;
      NodeId node = d.u16();
      Mac mac{};
      get(d, theirs_);
      uint8_t raw_mode = d.u8();
      std::optional<LinkSecurity> mode = mode_of(raw_mode);
      get(d, mac);
      if (!d.done() || !mode) return fail("malformed server hello");
      if (node != peer_) return fail(fmt::format("answered by node {}", node));
      if (!key_.verify('S', theirs_, mine_, node, self_, raw_mode, mac))
        return fail("authentication failed (wrong cluster secret?)");
      if (*mode != mode_) return fail(mismatch(node, *mode, mode_));
      Encoder e;
      e.raw(key_.prove('C', mine_, theirs_, self_, peer_, static_cast<uint8_t>(mode_)));
      out.push_back(HelloMsg{kClientProof, e.take()});
      state_ = State::kWaitOk;
      return Result::kContinue;
    }
    case State::kWaitProof: {
      if (op != kClientProof) break;
      Mac mac{};
      get(d, mac);
      if (!d.done()) return fail("malformed client proof");
      if (!key_.verify('C', theirs_, mine_, peer_, self_, static_cast<uint8_t>(mode_), mac))
        return fail("authentication failed (wrong cluster secret?)");
      out.push_back(HelloMsg{kHelloOk, {}});
      state_ = State::kDone;
      return Result::kDone;
    }
    case State::kWaitOk:
      if (op != kHelloOk || !body.empty()) break;
      state_ = State::kDone;
      return Result::kDone;
    case State::kIdle:
    case State::kDone:
    case State::kFailed:
      break;
  }
  return fail(fmt::format("unexpected handshake message (op {})", op));
}

}  // namespace dipc::transport::conn
