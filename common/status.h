// Status and Result: errno-valued outcomes for the data path and across process boundaries.
// 0 is success; any other value is a positive errno. "Try again" (EAGAIN, EINTR) stays apart from fatal errors
// because callers compare the code. Exceptions are used at most during setup (config parsing).
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace dipc {

class [[nodiscard]] Status {
 public:
  constexpr Status() = default;
  static constexpr Status ok() { return Status(); }
  static constexpr Status err(int e) { return Status(e); }
  constexpr bool is_ok() const { return code_ == 0; }
  constexpr explicit operator bool() const { return code_ == 0; }
  constexpr int code() const { return code_; }
  constexpr bool retryable() const { return code_ == EAGAIN || code_ == EINTR; }
  std::string str() const;

 private:
  constexpr explicit Status(int e) : code_(e) {}
  int code_ = 0;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T v) : v_(std::move(v)) {}  // NOLINT(google-explicit-constructor)
  Result(Status s) : v_(s) {}        // NOLINT(google-explicit-constructor)
  bool is_ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return is_ok(); }
  Status status() const { return is_ok() ? Status::ok() : std::get<Status>(v_); }
  T& value() { return std::get<T>(v_); }
  const T& value() const { return std::get<T>(v_); }
  T* operator->() { return &value(); }
  T& operator*() { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace dipc
