#include "transport/conn.h"

#include <cstring>

#include <fmt/format.h>

namespace dipc::transport::conn {

namespace {

template <size_t N>
void get(Decoder& d, std::array<uint8_t, N>& a) {
  ByteView v = d.raw(N);
  if (d.ok()) std::memcpy(a.data(), v.data(), N);
}

}  // namespace

Handshake::Handshake(const ClusterKey& key, NodeId self, Role role, NodeId peer, KnownFn known)
    : key_(key),
      self_(self),
      role_(role),
      peer_(role == Role::kDialer ? peer : 0),
      known_(std::move(known)),
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
  return HelloMsg{kClientHello, e.take()};
}

Handshake::Result Handshake::on_message(uint16_t op, ByteView body, std::vector<HelloMsg>& out) {
  if (body.size() > kMaxHelloPayload) return fail("oversized handshake message");
  Decoder d(body);
  switch (state_) {
    case State::kWaitClientHello: {
      if (op != kClientHello) break;
      NodeId node = d.u16();
      get(d, theirs_);
      if (!d.done()) return fail("malformed client hello");
      if (node == self_ || !known_ || !known_(node)) return fail(fmt::format("hello from unknown node {}", node));
      if (!dials(node, self_))
        return fail(fmt::format("node {} dials us but we dial it (lower id dials)", node));
      peer_ = node;
      mine_ = key_.random_nonce();
      Encoder e;
      e.u16(self_);
      e.raw(mine_);
      e.raw(key_.prove('S', mine_, theirs_, self_, peer_));
      out.push_back(HelloMsg{kServerHello, e.take()});
      state_ = State::kWaitProof;
      return Result::kContinue;
    }
    case State::kWaitServerHello: {
      if (op != kServerHello) break;
      NodeId node = d.u16();
      Mac mac{};
      get(d, theirs_);
      get(d, mac);
      if (!d.done()) return fail("malformed server hello");
      if (node != peer_) return fail(fmt::format("answered by node {}", node));
      if (!key_.verify('S', theirs_, mine_, node, self_, mac))
        return fail("authentication failed (wrong cluster secret?)");
      Encoder e;
      e.raw(key_.prove('C', mine_, theirs_, self_, peer_));
      out.push_back(HelloMsg{kClientProof, e.take()});
      state_ = State::kWaitOk;
      return Result::kContinue;
    }
    case State::kWaitProof: {
      if (op != kClientProof) break;
      Mac mac{};
      get(d, mac);
      if (!d.done()) return fail("malformed client proof");
      if (!key_.verify('C', theirs_, mine_, peer_, self_, mac))
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
