// Result<T>: the error type of the whole data path.
//
// Result<T> is std::expected<T, Error>: success carries only the value and
// allocates nothing; an Error carries the errno that goes back to clients and a
// message with context, built only on the failure path (leveldb's Status, with
// nbdkit's errno). The code that sees a syscall fail creates the Error; layers
// above pass it up unchanged unless they know something new.
#pragma once

#include <cerrno>
#include <expected>
#include <string>
#include <string_view>
#include <utility>

namespace strata {

struct Error {
  int code = EIO;       // errno; what the NBD client receives
  std::string message;  // "context: detail", for logs
};

template <typename T = void>
using Result = std::expected<T, Error>;

// An unexpected<Error> converts to any Result<T>, so `return fail(...)` works
// in every function.
inline std::unexpected<Error> fail(int code, std::string message) {
  return std::unexpected<Error>(Error{code, std::move(message)});
}
inline std::unexpected<Error> fail(Error e) {
  return std::unexpected<Error>(std::move(e));
}

// "pread base.img@4096: Input/output error"
std::unexpected<Error> posix_error(std::string_view context, int err);

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
