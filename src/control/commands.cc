#include "control/commands.h"

#include <fmt/core.h>
#include <algorithm>
#include <filesystem>
#include <chrono>
#include <climits>
#include <future>
#include <cstdlib>

#include "control/sync.h"
#include "core/buffer.h"
#include "targets/cow.h"

#include <fcntl.h>
#include <unistd.h>

namespace strata::control {
namespace {

using json = nlohmann::json;

class JsonInfo final : public InfoSink {
 public:
  explicit JsonInfo(json& j) : j_(j) {}
  void add(std::string_view key, uint64_t v) override { j_[std::string(key)] = v; }
  void add(std::string_view key, std::string_view v) override { j_[std::string(key)] = std::string(v); }

 private:
  json& j_;
};

json device_summary(const DeviceSet::Device& dev) {
  return {{"name", dev.name},
          {"size", dev.table->size()},
          {"read_only", dev.read_only || !dev.table->caps().can_write},
          {"segments", dev.table->segments().size()}};
}

json device_status(const DeviceSet::Device& dev) {
  json j = device_summary(dev);
  json segs = json::array();
  for (const auto& s : dev.table->segments()) {
    json info = json::object();
    JsonInfo sink(info);
    s.target->info(sink);
    segs.push_back({{"start_sector", s.start / kSectorSize},
                    {"num_sectors", s.length / kSectorSize},
                    {"table", s.target->table_line()},
                    {"info", info}});
  }
  j["segments"] = segs;
  return j;
}

json ok(json result) { return {{"ok", true}, {"result", std::move(result)}}; }
json err(std::string msg) { return {{"ok", false}, {"error", std::move(msg)}}; }

// A path a client gave, resolved (symlinks of the part that exists, then
// lexically), if it lies under a directory the operator allowed.
Result<std::string> allowed_path(const Daemon& d, const std::string& p) {
  std::error_code ec;
  auto full = std::filesystem::weakly_canonical(std::filesystem::absolute(p, ec), ec);
  if (ec || p.empty()) return fail(EINVAL, fmt::format("bad path '{}'", p));
  for (const auto& dir : d.allowed_paths) {
    auto root = std::filesystem::weakly_canonical(dir, ec);
    if (ec) continue;
    auto rel = full.lexically_relative(root);
    if (!rel.empty() && *rel.begin() != "..") return full.string();
  }
  return fail(EACCES, fmt::format("path {} is outside the directories this server lets clients name "
                                  "(strata serve --allow-path DIR)",
                                  full.string()));
}

json map_json(const DirtyMap& bits, bool consistent) {
  json ext = json::array();
  uint64_t bytes = 0;
  for (const auto& [off, len] : bits.ranges()) {
    ext.push_back({off, len});
    bytes += len;
  }
  return {{"granularity", bits.granularity()}, {"consistent", consistent}, {"dirty_bytes", bytes}, {"extents", ext}};
}

json run_dirty(Daemon& d, const std::string& method, const json& params, const ProgressFn& progress) {
  auto str = [&](const char* k) -> std::string {
    return params.contains(k) && params[k].is_string() ? params[k].get<std::string>() : std::string();
  };
  auto status_of = [](const std::string& dev, const TrackTarget& t, json& out) {
    for (const auto& m : t.maps())
      out.push_back({{"device", dev},
                     {"name", m.name},
                     {"granularity", m.granularity},
                     {"dirty_blocks", m.dirty_blocks},
                     {"dirty_bytes", m.dirty_blocks * m.granularity},
                     {"consistent", m.consistent},
                     {"path", m.path}});
  };
  if (method == "dirty_status" && !params.contains("device")) {
    json out = json::array();
    for (const auto& [dev, t] : d.tracks) status_of(dev, *t, out);
    return ok(out);
  }
  std::string dev = str("device");
  auto it = d.tracks.find(dev);
  if (it == d.tracks.end()) return err(fmt::format("no device named '{}'", dev));
  auto& t = it->second;
  std::string name = str("name");
  if (method == "dirty_status") {
    json out = json::array();
    status_of(dev, *t, out);
    return ok(out);
  }
  if (method == "dirty_start") {
    uint64_t g = params.value("granularity", uint64_t{4096});
    auto r = t->start_map(name, g);
    if (!r) return err(r.error().message);
    return ok({{"device", dev}, {"name", name}, {"granularity", g}});
  }
  if (method == "dirty_stop") {
    auto r = t->stop_map(name);
    if (!r) return err(r.error().message);
    return ok(json::object());
  }
  if (method == "dirty_list") {
    bool consistent = false;
    auto bits = t->map_bits(name, &consistent);
    if (!bits) return err(bits.error().message);
    return ok(map_json(**bits, consistent));
  }
  if (method == "dirty_checkpoint" || method == "dirty_clear") {
    bool consistent = false;
    auto bits = t->checkpoint(name, &consistent);
    if (!bits) return err(bits.error().message);
    return ok(method == "dirty_clear" ? json::object() : map_json(**bits, consistent));
  }
  if (method == "device_sync") {
    SyncOptions so;
    so.map = str("map");
    so.to = str("to");
    bool uri = so.to.find("://") != std::string::npos;
    if (!uri) {
      auto ap = allowed_path(d, so.to);
      if (!ap) return err(ap.error().message);
      so.to = *ap;
    }
    so.final = params.value("final", false);
    so.max_rounds = params.value("max_rounds", 8);
    auto r = sync_device(*t, *d.queue, so, progress);
    if (!r) return err(r.error().message);
    return ok(*r);
  }
  return err(fmt::format("unknown method '{}'", method));
}

json run(Daemon& d, const json& req, const ProgressFn& progress) {
  if (!req.is_object() || !req.contains("method") || !req["method"].is_string())
    return err("request must be a JSON object with a string \"method\"");
  const std::string method = req["method"];
  json params = req.value("params", json::object());
  if (!params.is_object()) return err("\"params\" must be an object");
  auto name_param = [&]() -> std::optional<std::string> {
    if (!params.contains("name")) return std::nullopt;
    if (!params["name"].is_string()) return std::nullopt;
    return params["name"].get<std::string>();
  };

  if (method == "device_list") {
    json out = json::array();
    for (const auto& dev : d.devices->devices()) out.push_back(device_summary(dev));
    return ok(out);
  }
  if (method == "device_table" || method == "device_status") {
    auto name = name_param();
    json out = json::array();
    for (const auto& dev : d.devices->devices()) {
      if (name && dev.name != *name) continue;
      if (method == "device_table")
        out.push_back({{"name", dev.name}, {"read_only", dev.read_only}, {"table", dev.table->table_line()}});
      else
        out.push_back(device_status(dev));
    }
    if (name && out.empty()) return err(fmt::format("no device named '{}'", *name));
    return ok(out);
  }
  if (method == "server_status") {
    auto s = d.nbd->stats();
    json exports = json::array();
    // Read-only as NBD clients see it: by configuration or because the target cannot write.
    for (const auto& e : d.nbd->exports())
      exports.push_back({{"name", e->name}, {"read_only", e->read_only || !e->target->caps().can_write}});
    auto up = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - d.started);
    return ok({{"connections", s.active},
               {"connections_total", s.total},
               {"connections_refused", s.refused},
               {"uris", d.nbd->uris()},
               {"exports", exports},
               {"uptime_seconds", up.count()}});
  }
  if (method.starts_with("dirty_") || method == "device_sync") return run_dirty(d, method, params, progress);
  if (method == "device_snapshot") {
    std::string dev = params.value("device", std::string());
    const DeviceSet::Device* found = nullptr;
    for (const auto& x : d.devices->devices())
      if (x.name == dev) found = &x;
    if (!found) return err(fmt::format("no device named '{}'", dev));
    std::vector<CowTarget*> cows;
    for (const auto& seg : found->table->segments())
      if (auto* c = dynamic_cast<CowTarget*>(seg.target.get())) cows.push_back(c);
    if (cows.empty()) return err(fmt::format("device '{}' has no cow segment to snapshot", dev));
    json out = json::array();
    for (auto* c : cows) {
      CowTarget::SnapshotStats st;
      auto r = c->snapshot(*d.queue, &st);
      if (!r) return err(r.error().message);
      // pause_us: how long writes were held; total_us: the whole operation
      // (flushes with writes flowing included).
      out.push_back({{"snapshot", *r},
                     {"pause_us", st.held_us},
                     {"total_us", st.total_us},
                     {"flush_rounds", st.flush_rounds},
                     {"layers", c->layer_paths()}});
    }
    return ok(out);
  }
  if (method == "device_merge") {
    std::string dev = params.value("device", std::string());
    const DeviceSet::Device* found = nullptr;
    for (const auto& x : d.devices->devices())
      if (x.name == dev) found = &x;
    if (!found) return err(fmt::format("no device named '{}'", dev));
    CowTarget* cow = nullptr;
    for (const auto& seg : found->table->segments())
      if (auto* c = dynamic_cast<CowTarget*>(seg.target.get())) cow = c;
    if (!cow) return err(fmt::format("device '{}' has no cow segment to merge", dev));
    auto t0 = std::chrono::steady_clock::now();
    auto report = [&](uint64_t done, uint64_t total) {
      if (progress) progress({{"round", 1}, {"copied_bytes", done}, {"total_bytes", total}, {"unit", "chunks"}});
    };
    std::string layer = params.value("layer", std::string());
    auto r = layer.empty() ? cow->merge(*d.queue, report) : cow->merge_layer(*d.queue, layer, report);
    if (!r) return err(r.error().message);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
    return ok({{"chunks_copied", *r}, {"milliseconds", ms}, {"layers", cow->layer_paths()}});
  }
  if (method == "device_flatten") {
    // The whole device into one raw file.
    std::string dev = params.value("device", std::string());
    std::string to = params.value("to", std::string());
    auto it = d.tracks.find(dev);
    if (it == d.tracks.end()) return err(fmt::format("no device named '{}'", dev));
    if (to.empty()) return err("device_flatten: \"to\" is required");
    if (auto ap = allowed_path(d, to); !ap)
      return err(ap.error().message);
    else
      to = *ap;
    // A point-in-time copy: the device as it was when this request began.
    uint64_t by_writes = 0;
    auto r = flatten_live(*it->second, *d.queue, to, progress, &by_writes);
    if (!r) return err(r.error().message);
    uint64_t size = *r;
    return ok({{"to", to}, {"bytes", size}, {"copied_before_writes", by_writes}});
  }
  if (method == "export_fuse_start") {
    std::string mp = params.value("mountpoint", std::string());
    if (mp.empty()) return err("export_fuse_start: \"mountpoint\" is required");
    if (auto ap = allowed_path(d, mp); !ap) return err(ap.error().message);
    auto e = std::make_unique<fuse::FuseExport>(d.queues, d.fuse_devices, d.fuse_options);
    auto r = e->start(mp);
    if (!r) return err(r.error().message);
    std::string real = e->mountpoint();
    if (d.fuse_exports.count(real)) return err(fmt::format("{} is already exported", real));
    d.fuse_exports[real] = std::move(e);
    return ok({{"mountpoint", real}});
  }
  if (method == "export_fuse_stop") {
    std::string mp = params.value("mountpoint", std::string());
    char real[PATH_MAX];
    if (::realpath(mp.c_str(), real)) mp = real;
    auto it = d.fuse_exports.find(mp);
    if (it == d.fuse_exports.end()) return err(fmt::format("no FUSE export at '{}'", mp));
    if (!it->second->stop()) d.fuse_detached.push_back(std::move(it->second));
    d.fuse_exports.erase(it);
    return ok(json::object());
  }
  if (method == "export_fuse_list") {
    json out = json::array();
    for (const auto& [mp, e] : d.fuse_exports)
      out.push_back({{"mountpoint", mp},
                     {"transport", e->io_uring() ? "io_uring" : "/dev/fuse"},
                     {"uring_requests", e->uring_requests()},
                     {"dev_requests", e->dev_requests()}});
    return ok(out);
  }
  return err(fmt::format("unknown method '{}' (known: device_list, device_table, device_status, server_status, "
                         "dirty_start, dirty_stop, dirty_status, dirty_list, dirty_clear, dirty_checkpoint, "
                         "device_sync, device_snapshot, device_merge, device_flatten, export_fuse_start, export_fuse_stop, "
                         "export_fuse_list)",
                         method));
}

}  // namespace

json dispatch(Daemon& d, const std::string& line, const ProgressFn& progress) {
  json req = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded()) return err("request is not valid JSON");
  // nlohmann-json throws on type errors; keep that at this boundary.
  try {
    return run(d, req, progress);
  } catch (const std::exception& e) {
    return err(fmt::format("bad request: {}", e.what()));
  }
}

}  // namespace strata::control
