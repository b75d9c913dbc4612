#include "targets/linear.h"

#include <fmt/core.h>

namespace strata {

Result<std::shared_ptr<Target>> LinearTarget::create(Params& p, Resolver& r) {
  std::string name = TRY(p.arg(0, "device"));
  uint64_t sectors = TRY(p.arg_u64(1, "offset_sectors"));
  TRY(p.finish(2));
  auto lower = r.device(name);
  if (!lower) return fail(lower.error().code, fmt::format("argument 1 (device): {}", lower.error().message));
  if (sectors > UINT64_MAX / 512) return fail(ERANGE, "argument 2 (offset_sectors): too large");
  uint64_t offset = sectors * 512;
  uint64_t lsize = (*lower)->size();
  if (!in_range(lsize, offset, p.length))
    return fail(EINVAL, fmt::format("device {} is too small: need {} bytes from offset {}, it has {}", name,
                                    p.length, offset, lsize));
  return std::shared_ptr<Target>(new LinearTarget(std::move(*lower), name, offset, p.length));
}

std::string LinearTarget::table_line() const { return fmt::format("linear {} {}", name_, offset_ / 512); }

}  // namespace strata
