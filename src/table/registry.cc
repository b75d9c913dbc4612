#include "table/registry.h"

#include "targets/cache/cache.h"
#include "targets/cow/cow.h"
#include "targets/error.h"
#include "targets/file.h"
#include "targets/linear.h"
#include "targets/memory.h"
#include "targets/nfs/nfs.h"
#include "targets/nfs/nfs_remote.h"
#include "targets/pattern.h"
#include "targets/rbd/rbd.h"
#include "targets/zero.h"

namespace strata {
namespace {

constexpr std::string_view kRbdPathOptions[] = {"conf", "keyring"};

const TargetType kTargetTypes[] = {
    {"file", FileTarget::kHelp, &FileTarget::create, 0},
    {"linear", LinearTarget::kHelp, &LinearTarget::create},
    {"zero", ZeroTarget::kHelp, &ZeroTarget::create},
    {"error", ErrorTarget::kHelp, &ErrorTarget::create},
    {"memory", MemoryTarget::kHelp, &MemoryTarget::create},
    {"pattern", PatternTarget::kHelp, &PatternTarget::create},
    {"cow", CowTarget::kHelp, &CowTarget::create, 0},
    {"nfs", NfsTarget::kHelp, &NfsTarget::create},
    {"rbd", RbdTarget::kHelp, &RbdTarget::create, -1, kRbdPathOptions},
    {"cache", CacheTarget::kHelp, &CacheTarget::create, 1},
};

struct RemoteScheme {
  std::string_view prefix;
  Result<std::unique_ptr<RemoteFile>> (*open)(std::string_view url);
};
const RemoteScheme kRemoteSchemes[] = {
    {"nfs://", &open_nfs_remote_file},
};

}  // namespace

Result<std::unique_ptr<RemoteFile>> open_remote_file(std::string_view url) {
  for (const auto& s : kRemoteSchemes)
    if (url.rfind(s.prefix, 0) == 0) return s.open(url);
  std::string known;
  for (const auto& s : kRemoteSchemes) known += (known.empty() ? "" : ", ") + std::string(s.prefix);
  return fail(EINVAL, "'" + std::string(url) + "': no remote file scheme matches (known: " + known + ")");
}

std::span<const TargetType> target_types() { return kTargetTypes; }

const TargetType* find_target_type(std::string_view name) {
  for (const auto& t : kTargetTypes)
    if (t.name == name) return &t;
  return nullptr;
}

std::string target_type_names() {
  std::string s;
  for (const auto& t : kTargetTypes) {
    if (!s.empty()) s += ", ";
    s += t.name;
  }
  return s;
}

}  // namespace strata
