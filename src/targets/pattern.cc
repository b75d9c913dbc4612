#include "targets/pattern.h"

namespace strata {

Result<std::shared_ptr<Target>> PatternTarget::create(Params& p, Resolver& r) {
  (void)r;
  TRY(p.finish(0));
  return std::make_shared<PatternTarget>(p.length);
}

Caps PatternTarget::caps() const {
  Caps c;
  c.can_write = false;
  c.can_zero = false;
  c.can_fua = false;
  return c;
}

std::byte PatternTarget::byte_at(uint64_t offset) {
  uint64_t word = offset & ~uint64_t{7};
  return static_cast<std::byte>(word >> (8 * (7 - (offset & 7))));
}

Task<Result<>> PatternTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  (void)q;
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = byte_at(offset + i);
  co_return Result<>{};
}

Task<Result<>> PatternTarget::write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  (void)q, (void)buf, (void)f;
  co_return fail(EPERM, "pattern target is read-only (write at " + std::to_string(offset) + ")");
}

Task<Result<>> PatternTarget::flush(Queue& q) {
  (void)q;
  co_return Result<>{};
}

}  // namespace strata
