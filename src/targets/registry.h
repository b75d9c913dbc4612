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
  // The arguments that name local files, so that a table's relative paths
  // are taken from the table file's directory (resolve_paths, table.h): a
  // positional argument (0-based; -1 for none) and option keys.
  int path_arg = -1;
  std::span<const std::string_view> path_options = {};
};

std::span<const TargetType> target_types();
const TargetType* find_target_type(std::string_view name);
// "file, linear, zero, ..." for error messages.
std::string target_type_names();

}  // namespace strata
