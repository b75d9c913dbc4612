// The one list of target types (no static registration: see STYLE.md): a new
// target adds one line to registry.cc.
#pragma once

#include <memory>
#include <span>
#include <string_view>

#include "targets/resolver.h"

namespace strata {

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

// A file on shared storage by its URL's scheme (nfs://): what a cow layer's
// remote parent link opens. One line per scheme in registry.cc.
Result<std::unique_ptr<RemoteFile>> open_remote_file(std::string_view url);

}  // namespace strata
