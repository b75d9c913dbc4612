// Result<T>: the error type of the whole data path.
//
// Result<T> is std::expected<T, Error> (see compat below for clang 14): success carries only the value and
// allocates nothing; an Error carries the errno that goes back to clients and a
// message with context, built only on the failure path (leveldb's Status, with
// nbdkit's errno). The code that sees a syscall fail creates the Error; layers
// above pass it up unchanged unless they know something new.
#pragma once

#include <cerrno>
#include <string>
#include <string_view>
#include <utility>
#if __has_include(<expected>)
#include <expected>
#endif
#if !defined(__cpp_lib_expected)
#include <type_traits>
#include <variant>
#endif

namespace strata {

struct Error {
  int code = EIO;       // errno; what the NBD client receives
  std::string message;  // "context: detail", for logs
};

#if defined(__cpp_lib_expected)
template <typename T = void>
using Result = std::expected<T, Error>;
using Failure = std::unexpected<Error>;
#else
// clang 14 with libstdc++ 12 has no std::expected (its concepts are too old
// for <expected>): the fuzzers and the -Wthread-safety check build with this
// subset of it, which is all strata uses. g++ builds use std::expected.
namespace compat {
class Failure {
 public:
  explicit Failure(Error e) : e_(std::move(e)) {}
  Error& error() & { return e_; }
  const Error& error() const& { return e_; }
  Error&& error() && { return std::move(e_); }

 private:
  Error e_;
};

template <typename T>
class Expected {
 public:
  Expected() : v_(std::in_place_index<0>) {}
  template <typename U = T, typename = std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                                        !std::is_same_v<std::decay_t<U>, Expected> &&
                                                        !std::is_same_v<std::decay_t<U>, Failure>>>
  Expected(U&& v) : v_(std::in_place_index<0>, std::forward<U>(v)) {}
  Expected(Failure f) : v_(std::in_place_index<1>, std::move(f).error()) {}
  template <typename U, typename = std::enable_if_t<!std::is_same_v<U, T> && std::is_constructible_v<T, U&&>>>
  Expected(Expected<U>&& o) : v_(std::in_place_index<1>) {
    if (o) v_.template emplace<0>(std::move(*o));
    else v_.template emplace<1>(std::move(o).error());
  }
  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return std::get<0>(v_); }
  const T& operator*() const& { return std::get<0>(v_); }
  T&& operator*() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  Error& error() & { return std::get<1>(v_); }
  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }
  template <typename U>
  T value_or(U&& d) const& { return has_value() ? value() : static_cast<T>(std::forward<U>(d)); }
  template <typename U>
  T value_or(U&& d) && { return has_value() ? std::move(value()) : static_cast<T>(std::forward<U>(d)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class Expected<void> {
 public:
  Expected() = default;
  Expected(Failure f) : e_(std::move(f).error()), ok_(false) {}
  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  void value() const {}
  void operator*() const {}
  Error& error() & { return e_; }
  const Error& error() const& { return e_; }
  Error&& error() && { return std::move(e_); }

 private:
  Error e_;
  bool ok_ = true;
};
}  // namespace compat

template <typename T = void>
using Result = compat::Expected<T>;
using Failure = compat::Failure;
#endif

// A Failure converts to any Result<T>, so `return fail(...)` works in every
// function.
inline Failure fail(int code, std::string message) { return Failure(Error{code, std::move(message)}); }
inline Failure fail(Error e) { return Failure(std::move(e)); }

// "pread base.img@4096: Input/output error"
Failure posix_error(std::string_view context, int err);

// Adds context in front of an error's message, keeping its code.
inline Error with_context(Error e, std::string_view context) {
  e.message = std::string(context) + ": " + e.message;
  return e;
}

}  // namespace strata

// TRY(expr): evaluates a Result; on error returns it from the enclosing
// function. Usable as a statement or, for Result<T> with T != void, as an
// expression yielding the value (GNU statement expression).
#define STRATA_CAT2(a, b) a##b
#define STRATA_CAT(a, b) STRATA_CAT2(a, b)
#define TRY(expr)                                                   \
  ({                                                                \
    auto&& STRATA_CAT(try_r_, __LINE__) = (expr);                   \
    if (!STRATA_CAT(try_r_, __LINE__))                              \
      return ::strata::fail(std::move(STRATA_CAT(try_r_, __LINE__)).error()); \
    std::move(STRATA_CAT(try_r_, __LINE__)).value();               \
  })
// In coroutines. g++ 12 miscompiles co_await inside a statement expression
// (ICE) and inside an if condition or if-initializer (the awaited Task is
// destroyed at the wrong time: a crash on resume). So these are plain
// statements: CO_TRY(co_await f()) returns the error, CO_TRY_ASSIGN(auto v,
// co_await g()) also declares v. Never write `if (co_await ...)`.
#define CO_TRY(expr)                                                       \
  do {                                                                     \
    auto co_try_r_ = (expr);                                               \
    if (!co_try_r_) co_return ::strata::fail(std::move(co_try_r_).error()); \
  } while (0)
#define CO_TRY_ASSIGN(lhs, expr)                                             \
  auto STRATA_CAT(co_try_r_, __LINE__) = (expr);                         \
  if (!STRATA_CAT(co_try_r_, __LINE__))                                      \
    co_return ::strata::fail(std::move(STRATA_CAT(co_try_r_, __LINE__)).error()); \
  lhs = std::move(*STRATA_CAT(co_try_r_, __LINE__))
