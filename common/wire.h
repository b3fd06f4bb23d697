// Fixed-byte-order encoding of every protocol field (big-endian, "network order"), so nodes of different
// architectures and byte orders interoperate. Message bodies and page contents travel as opaque bytes.
// Decoder is strict: every read is bounds-checked and a short or oversized field marks the whole decode failed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dipc {

using Bytes = std::vector<uint8_t>;
using ByteView = std::span<const uint8_t>;

class Encoder {
 public:
  Encoder() = default;
  explicit Encoder(Bytes& out) : out_(&out) {}
  void u8(uint8_t v) { buf().push_back(v); }
  void u16(uint16_t v) { put_be(v, 2); }
  void u32(uint32_t v) { put_be(v, 4); }
  void u64(uint64_t v) { put_be(v, 8); }
  void i32(int32_t v) { u32(static_cast<uint32_t>(v)); }
  void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
  void boolean(bool v) { u8(v ? 1 : 0); }
  // Length-prefixed (u32) opaque bytes.
  void bytes(ByteView v) {
    u32(static_cast<uint32_t>(v.size()));
    raw(v);
  }
  void str(std::string_view s) { bytes(ByteView(reinterpret_cast<const uint8_t*>(s.data()), s.size())); }
  void raw(ByteView v) { buf().insert(buf().end(), v.begin(), v.end()); }
  Bytes& buf() { return out_ ? *out_ : own_; }
  Bytes take() { return std::move(buf()); }
  size_t size() const { return out_ ? out_->size() : own_.size(); }

 private:
  void put_be(uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i) buf().push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  Bytes own_;
  Bytes* out_ = nullptr;
};

class Decoder {
 public:
  explicit Decoder(ByteView in) : in_(in) {}
  uint8_t u8() { return static_cast<uint8_t>(get_be(1)); }
  uint16_t u16() { return static_cast<uint16_t>(get_be(2)); }
  uint32_t u32() { return static_cast<uint32_t>(get_be(4)); }
  uint64_t u64() { return get_be(8); }
  int32_t i32() { return static_cast<int32_t>(u32()); }
  int64_t i64() { return static_cast<int64_t>(u64()); }
  bool boolean() {
    uint8_t v = u8();
    if (v > 1) fail();
    return v == 1;
  }
  // Length-prefixed bytes, at most `max` long; the view points into the input.
  ByteView bytes(size_t max) {
    uint32_t n = u32();
    if (failed_ || n > max || n > remaining()) {
      fail();
      return {};
    }
    ByteView v = in_.subspan(pos_, n);
    pos_ += n;
    return v;
  }
  std::string str(size_t max) {
    ByteView v = bytes(max);
    return std::string(reinterpret_cast<const char*>(v.data()), v.size());
  }
  ByteView raw(size_t n) {
    if (failed_ || n > remaining()) {
      fail();
      return {};
    }
    ByteView v = in_.subspan(pos_, n);
    pos_ += n;
    return v;
  }
  // A count of elements that follow, each at least `min_elem_size` bytes: rejects counts the input cannot hold.
  uint32_t count(size_t max, size_t min_elem_size) {
    uint32_t n = u32();
    if (failed_ || n > max || (min_elem_size && n > remaining() / min_elem_size)) {
      fail();
      return 0;
    }
    return n;
  }
  size_t remaining() const { return in_.size() - pos_; }
  bool ok() const { return !failed_; }
  // True when decoding succeeded and consumed the whole input (trailing bytes are an error).
  bool done() const { return !failed_ && pos_ == in_.size(); }
  void fail() { failed_ = true; }

 private:
  uint64_t get_be(size_t n) {
    if (failed_ || n > remaining()) {
      fail();
      return 0;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v = (v << 8) | in_[pos_ + i];
    pos_ += n;
    return v;
  }
  ByteView in_;
  size_t pos_ = 0;
  bool failed_ = false;
};

}  // namespace dipc
