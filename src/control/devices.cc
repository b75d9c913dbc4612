#include "control/devices.h"

#include <algorithm>

#include <fmt/core.h>

#include "core/log.h"
#include "core/params.h"
#include "table/registry.h"

namespace strata::control {

std::vector<std::shared_ptr<const Device>> Devices::list() const {
  std::vector<std::shared_ptr<const Device>> out;
  for (auto& d : registry_.list()) out.push_back(std::static_pointer_cast<const Device>(std::move(d)));
  return out;
}

std::shared_ptr<const Device> Devices::find(std::string_view name) const {
  return std::static_pointer_cast<const Device>(registry_.find(name));
}

std::vector<std::string> Devices::users_of(std::string_view name) const {
  std::vector<std::string> out;
  for (const auto& d : list()) {
    bool uses = std::find(d->uses.begin(), d->uses.end(), name) != d->uses.end() ||
                std::find(d->inactive_uses.begin(), d->inactive_uses.end(), name) != d->inactive_uses.end();
    if (uses && d->name != name) out.push_back(d->name);
  }
  return out;
}

Result<std::unique_ptr<RemoteFile>> RegistryResolver::remote_file(std::string_view url) {
  return open_remote_file(url);
}

Result<std::shared_ptr<Target>> RegistryResolver::device(std::string_view name) {
  if (name == self_) return fail(EINVAL, fmt::format("device '{}' cannot refer to itself", name));
  for (const auto& [n, t] : pending_)
    if (n == name) {
      used_.emplace_back(name);
      return t;
    }
  auto d = devices_.find(name);
  if (!d) return fail(ENOENT, fmt::format("no device named '{}'", name));
  used_.emplace_back(name);
  return std::shared_ptr<Target>(d->live);
}

Result<std::shared_ptr<TableTarget>> build_table(const DeviceSpec& spec, std::string_view source, bool read_only,
                                                 Resolver& resolver) {
  std::vector<TableTarget::Segment> segs;
  for (const auto& s : spec.segments) {
    const TargetType* type = find_target_type(s.target);
    if (!type) return fail(EINVAL, fmt::format("{}:{}: unknown target '{}'", source, s.line, s.target));
    Params p(s.args);
    p.length = s.num_sectors * kSectorSize;
    p.read_only = read_only;
    auto t = type->create(p, resolver);
    if (!t) return fail(t.error().code, fmt::format("{}:{}: {}: {}", source, s.line, s.target, t.error().message));
    uint32_t align = (*t)->block_sizes().minimum;
    uint64_t start = s.start_sector * kSectorSize;
    if (align > 1 && (start % align || p.length % align))
      return fail(EINVAL, fmt::format("{}:{}: {}: the segment must start and end on a multiple of {} bytes", source,
                                      s.line, s.target, align));
    segs.push_back({start, p.length, std::move(*t)});
  }
  if (segs.empty()) return fail(EINVAL, fmt::format("{}: device '{}' has no segments", source, spec.name));
  return std::make_shared<TableTarget>(std::move(segs));
}

std::string spec_text(const DeviceSpec& spec, bool read_only) {
  std::string out = fmt::format("[{}{}]\n", spec.name, read_only ? " ro" : "");
  for (const auto& s : spec.segments) {
    out += fmt::format("{} {} {}", s.start_sector, s.num_sectors, s.target);
    for (const auto& a : s.args) out += " " + a;
    out += "\n";
  }
  return out;
}

bool valid_device_name(std::string_view n) {
  if (n.empty() || n.size() > 128) return false;
  return std::all_of(n.begin(), n.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'; });
}

}  // namespace strata::control
