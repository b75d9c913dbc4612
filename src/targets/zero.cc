#include "targets/zero.h"

#include <cstring>

namespace strata {

Result<std::shared_ptr<Target>> ZeroTarget::create(Params& p, Resolver& r) {
  (void)r;
  TRY(p.finish(0));
  return std::make_shared<ZeroTarget>(p.length);
}

Caps ZeroTarget::caps() const {
  Caps c;
  c.can_trim = true;
  c.can_fast_zero = true;
  c.can_extents = true;
  return c;
}

Task<Result<>> ZeroTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  (void)q, (void)offset;
  std::memset(buf.data(), 0, buf.size());
  co_return Result<>{};
}

Task<Result<>> ZeroTarget::write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  (void)q, (void)buf, (void)offset, (void)f;
  co_return Result<>{};
}

Task<Result<>> ZeroTarget::flush(Queue& q) {
  (void)q;
  co_return Result<>{};
}

Task<Result<>> ZeroTarget::trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  (void)q, (void)offset, (void)length, (void)f;
  co_return Result<>{};
}

Task<Result<>> ZeroTarget::zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  (void)q, (void)offset, (void)length, (void)f;
  co_return Result<>{};
}

Task<Result<Extents>> ZeroTarget::extents(Queue& q, uint64_t offset, uint64_t length) {
  (void)q, (void)offset;
  Extents e;
  append_extent(e, length, Extent::kHole | Extent::kZero);
  co_return e;
}

}  // namespace strata
