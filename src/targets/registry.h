// The one list of target types (no static registration: see STYLE.md), and
// the Resolver through which a target finds another device by name (linear,
// and later cow's lower=).
#pragma once

#include <memory>
#include <span>
#include <string_view>

#include "core/params.h"
#include "core/result.h"
#include "core/target.h"

namespace strata {

class Resolver {
 public:
  virtual ~Resolver() = default;
  // A device defined earlier in the same configuration.
  virtual Result<std::shared_ptr<Target>> device(std::string_view name) = 0;
};

using CreateFn = Result<std::shared_ptr<Target>> (*)(Params& p, Resolver& r);

struct TargetType {
  std::string_view name;
  std::string_view help;  // synopsis, shown by `strata serve --help-targets`
  CreateFn create;
};

std::span<const TargetType> target_types();
const TargetType* find_target_type(std::string_view name);
// "file, linear, zero, ..." for error messages.
std::string target_type_names();

}  // namespace strata
