#include "core/result.h"

#include <cstring>

namespace strata {

Failure posix_error(std::string_view context, int err) {
  std::string msg(context);
  msg += ": ";
  msg += std::strerror(err);
  return fail(err, std::move(msg));
}

}  // namespace strata
