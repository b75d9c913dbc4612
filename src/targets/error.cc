#include "targets/error.h"

#include <fmt/core.h>

namespace strata {
namespace {
Failure eio(const char* op, uint64_t offset) {
  return fail(EIO, fmt::format("error target: {} at {}", op, offset));
}
}  // namespace

Result<std::shared_ptr<Target>> ErrorTarget::create(Params& p, Resolver& r) {
  (void)r;
  TRY(p.finish(0));
  return std::make_shared<ErrorTarget>(p.length);
}

Caps ErrorTarget::caps() const {
  Caps c;
  c.can_trim = true;
  c.can_fast_zero = true;
  c.can_extents = true;
  return c;
}

Task<Result<>> ErrorTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  (void)q, (void)buf;
  co_return eio("read", offset);
}
Task<Result<>> ErrorTarget::write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  (void)q, (void)buf, (void)f;
  co_return eio("write", offset);
}
// A flush has nothing to make durable here, and failing it would fail every
// device-wide FLUSH of a table that holds an error segment (dm-error does
// not fail flushes either).
Task<Result<>> ErrorTarget::flush(Queue& q) {
  (void)q;
  co_return Result<>{};
}
Task<Result<>> ErrorTarget::trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  (void)q, (void)length, (void)f;
  co_return eio("trim", offset);
}
Task<Result<>> ErrorTarget::zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  (void)q, (void)length, (void)f;
  co_return eio("write zeroes", offset);
}
Task<Result<Extents>> ErrorTarget::extents(Queue& q, uint64_t offset, uint64_t length) {
  (void)q, (void)length;
  co_return eio("block status", offset);
}

}  // namespace strata
