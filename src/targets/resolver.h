// What a target's constructor gets besides its parameters: the Resolver
// through which a target finds another device by name (linear, cow's base=,
// cache), and the signature every target type's create() has. The list of
// target types is table/registry.h.
#pragma once

#include <memory>
#include <string_view>

#include "core/params.h"
#include "core/result.h"
#include "core/target.h"
#include "targets/remote_file.h"

namespace strata {

class Resolver {
 public:
  virtual ~Resolver() = default;
  // A device defined earlier in the same configuration.
  virtual Result<std::shared_ptr<Target>> device(std::string_view name) = 0;
  // A file on shared storage, by URL (a cow layer's nfs:// parent link),
  // opened read-only. Resolvers that know no scheme refuse.
  virtual Result<std::unique_ptr<RemoteFile>> remote_file(std::string_view url) {
    return fail(ENOTSUP, "'" + std::string(url) + "': remote files are not available here");
  }
};

using CreateFn = Result<std::shared_ptr<Target>> (*)(Params& p, Resolver& r);

}  // namespace strata
