#include "control/commands.h"

#include <fmt/core.h>
#include <algorithm>
#include <filesystem>
#include <chrono>
#include <climits>
#include <future>
#include <cstdlib>

#include "control/metrics.h"
#include "control/sync.h"
#include "control/params.h"
#include "core/buffer.h"
#include "core/log.h"
#include "targets/cow/cow.h"

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

json device_summary(const Device& dev, const TableTarget& table) {
  return {{"name", dev.name},
          {"size", table.size()},
          {"read_only", dev.effective_read_only()},
          {"segments", table.segments().size()},
          {"suspended", dev.live->suspended()},
          {"inactive_table", dev.inactive != nullptr},
          {"moved", dev.dirty && dev.dirty->moved()}};
}

json device_status(const Device& dev) {
  auto table = dev.live->active();
  json j = device_summary(dev, *table);
  j["held_requests"] = dev.live->held_requests();
  if (dev.dirty) j["io"] = io_metrics_json(dev.dirty->metrics());
  json segs = json::array();
  for (const auto& s : table->segments()) {
    json info = json::object();
    JsonInfo sink(info);
    s.target->info(sink);
    json seg = {{"start_sector", s.start / kSectorSize},
                {"num_sectors", s.length / kSectorSize},
                {"table", s.target->table_line()},
                {"info", info}};
    if (const auto* cow = dynamic_cast<const CowTarget*>(s.target.get())) {
      json layers = json::array();
      for (const auto& l : cow->layer_status())
        layers.push_back({{"path", l.path},
                          {"uuid", l.uuid},
                          {"writable", l.writable},
                          {"chunks", l.chunks},
                          {"file_bytes", l.file_bytes},
                          {"allocated_bytes", l.allocated_bytes}});
      seg["layers"] = layers;
    }
    segs.push_back(std::move(seg));
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

// PARAM(var, reader.str("k")): var is the value, or the request fails with
// the reader's error.
#define PARAM(var, expr)                                 \
  auto var##_r = (expr);                                 \
  if (!var##_r) return err(var##_r.error().message);     \
  auto var = std::move(*var##_r)

std::shared_ptr<const Device> find_device(Daemon& d, const std::string& name, std::string* why) {
  auto dev = d.devices->find(name);
  if (!dev) *why = fmt::format("no device named '{}'", name);
  return dev;
}

json run_dirty(Daemon& d, const std::string& method, const json& params) {
  ParamReader pr(params);
  auto status_of = [](const std::string& dev, const DirtyTarget& t, json& out) {
    for (const auto& m : t.maps())
      out.push_back({{"device", dev},
                     {"name", m.name},
                     {"granularity", m.granularity},
                     {"dirty_blocks", m.dirty_blocks},
                     {"dirty_bytes", m.dirty_blocks * m.granularity},
                     {"consistent", m.consistent},
                     {"path", m.path}});
  };
  PARAM(device, pr.str("device", method != "dirty_status"));
  if (method == "dirty_status" && !device) {
    json out = json::array();
    for (const auto& dev : d.devices->list()) status_of(dev->name, *dev->dirty, out);
    return ok(out);
  }
  std::string why;
  auto dev = find_device(d, *device, &why);
  if (!dev) return err(why);
  auto& t = dev->dirty;
  if (method == "dirty_status") {
    json out = json::array();
    status_of(*device, *t, out);
    return ok(out);
  }
  PARAM(name, pr.str("name", true));
  if (method == "dirty_start") {
    PARAM(g, pr.uint("granularity"));
    PARAM(full, pr.boolean("full"));
    uint64_t gran = g.value_or(4096);
    auto r = t->start_map(*name, gran, full.value_or(false));
    if (!r) return err(r.error().message);
    return ok({{"device", *device}, {"name", *name}, {"granularity", gran}, {"full", full.value_or(false)}});
  }
  if (method == "dirty_stop") {
    auto r = t->stop_map(*name);
    if (!r) return err(r.error().message);
    return ok(json::object());
  }
  if (method == "dirty_list") {
    bool consistent = false;
    auto bits = t->map_bits(*name, &consistent);
    if (!bits) return err(bits.error().message);
    return ok(map_json(**bits, consistent));
  }
  if (method == "dirty_checkpoint" || method == "dirty_clear") {
    bool consistent = false;
    auto bits = t->checkpoint(*name, &consistent);
    if (!bits) return err(bits.error().message);
    return ok(method == "dirty_clear" ? json::object() : map_json(**bits, consistent));
  }
  return err(fmt::format("unknown method '{}'", method));
}

json jobs_json(Daemon& d) {
  json out = json::array();
  for (const auto& j : d.jobs->list()) out.push_back(j->to_json());
  return out;
}

const char* kKnown =
    "device_list, device_table, device_status, device_dump, server_status, device_create, device_remove, "
    "device_reload, device_suspend, device_resume, dirty_start, dirty_stop, dirty_status, dirty_list, dirty_clear, "
    "dirty_checkpoint, device_sync, device_snapshot, device_merge, device_flatten, job_list, job_wait, job_cancel, "
    "export_fuse_start, export_fuse_stop, export_fuse_list";

json run(Daemon& d, const json& req) {
  if (!req.is_object() || !req.contains("method") || !req["method"].is_string())
    return err("request must be a JSON object with a string \"method\"");
  const std::string method = req["method"];
  json params = req.contains("params") && !req["params"].is_null() ? req["params"] : json::object();
  if (!params.is_object()) return err("\"params\" must be an object");
  ParamReader pr(params);

  if (method == "device_list") {
    json out = json::array();
    for (const auto& dev : d.devices->list()) out.push_back(device_summary(*dev, *dev->live->active()));
    return ok(out);
  }
  if (method == "device_table" || method == "device_status") {
    PARAM(name, pr.str("name"));
    json out = json::array();
    for (const auto& dev : d.devices->list()) {
      if (name && dev->name != *name) continue;
      if (method == "device_table")
        out.push_back({{"name", dev->name}, {"read_only", dev->read_only}, {"table", dev->live->table_line()}});
      else
        out.push_back(device_status(*dev));
    }
    if (name && out.empty()) return err(fmt::format("no device named '{}'", *name));
    return ok(out);
  }
  if (method == "device_dump") {
    std::string text;
    for (const auto& dev : d.devices->list()) text += spec_text(dev->spec, dev->read_only);
    return ok({{"table", text}});
  }
  if (method == "server_status") {
    auto s = d.nbd->stats();
    json exports = json::array();
    // Read-only as NBD clients see it: by configuration or because the target cannot write.
    for (const auto& e : d.devices->list())
      exports.push_back({{"name", e->name}, {"read_only", e->read_only || !e->target->caps().can_write}});
    json servers = json::array();  // every export: its kind and where clients reach it
    for (const Export* x : d.exports()) servers.push_back({{"kind", x->kind()}, {"at", x->describe()}});
    auto up = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - d.started);
    return ok({{"connections", s.active},
               {"connections_total", s.total},
               {"connections_refused", s.refused},
               {"handshakes_evicted", s.evicted},
               {"handshake_timeouts", s.handshake_timeouts},
               {"uris", d.nbd->uris()},
               {"exports", exports},
               {"servers", servers},
               {"uptime_seconds", up.count()}});
  }
  if (method == "job_list") return ok(jobs_json(d));
  if (method == "job_cancel") {
    PARAM(id, pr.uint("id", true));
    auto j = d.jobs->find(*id);
    if (!j) return err(fmt::format("no job {}", *id));
    j->cancel();
    return ok(j->to_json());
  }
  if (method.starts_with("dirty_")) return run_dirty(d, method, params);
  if (method == "device_create" || method == "device_remove" || method == "device_reload" ||
      method == "device_suspend" || method == "device_resume")
    return run_device_change(d, method, params);
  if (method == "device_snapshot") {
    PARAM(dev, pr.str("device", true));
    std::string why;
    auto found = find_device(d, *dev, &why);
    if (!found) return err(why);
    std::vector<CowTarget*> cows;
    auto table = found->live->active();
    for (const auto& seg : table->segments())
      if (auto* c = dynamic_cast<CowTarget*>(seg.target.get())) cows.push_back(c);
    if (cows.empty()) return err(fmt::format("device '{}' has no cow segment to snapshot", *dev));
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
  if (method == "export_fuse_start") {
    PARAM(mp, pr.str("mountpoint", true));
    if (auto ap = allowed_path(d, *mp); !ap) return err(ap.error().message);
    auto shown = fuse::devices_of(d.devices->registry());
    auto e = std::make_unique<fuse::FuseExport>(d.queues, shown, d.fuse_options);
    auto r = e->start(*mp);
    if (!r) return err(r.error().message);
    std::string real = e->mountpoint();
    if (d.fuse_exports.count(real)) return err(fmt::format("{} is already exported", real));
    d.fuse_exports[real] = std::move(e);
    return ok({{"mountpoint", real}});
  }
  if (method == "export_fuse_stop") {
    PARAM(mp, pr.str("mountpoint", true));
    std::string m = *mp;
    char real[PATH_MAX];
    if (::realpath(m.c_str(), real)) m = real;
    auto it = d.fuse_exports.find(m);
    if (it == d.fuse_exports.end()) return err(fmt::format("no FUSE export at '{}'", m));
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
  return err(fmt::format("unknown method '{}' (known: {})", method, kKnown));
}

}  // namespace

Kind classify(const std::string& m) {
  if (m == "device_list" || m == "device_table" || m == "device_status" || m == "device_dump" ||
      m == "server_status" || m == "job_list" || m == "job_cancel" || m == "dirty_status" || m == "dirty_list")
    return Kind::kRead;
  if (m == "device_merge" || m == "device_flatten" || m == "device_sync") return Kind::kJob;
  if (m == "job_wait") return Kind::kWait;
  return Kind::kChange;
}

json error_reply(std::string_view message) { return {{"ok", false}, {"error", escape_controls(message)}}; }

json escape_reply(json reply) {
  if (reply.is_object()) {
    auto e = reply.find("error");
    if (e != reply.end() && e->is_string()) *e = escape_controls(e->get_ref<const std::string&>());
  }
  return reply;
}

std::string reply_line(const json& reply) {
  return reply.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

json dispatch(Daemon& d, const json& req) {
  // nlohmann-json throws on type errors; keep that at this boundary.
  try {
    return escape_reply(run(d, req));
  } catch (const std::exception& e) {
    return error_reply(fmt::format("bad request: {}", e.what()));
  }
}

json dispatch(Daemon& d, const std::string& line) {
  json req = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded()) return error_reply("request is not valid JSON");
  return dispatch(d, req);
}

namespace {

Result<std::shared_ptr<Job>> start_job_checked(Daemon& d, const std::string& method, const json& params) {
  ParamReader pr(params);
  TRY(pr.boolean("detach"));
  if (method == "device_sync") {
    auto device = TRY(pr.str("device", true));
    SyncOptions so;
    so.map = TRY(pr.str("map", true)).value();
    so.to = TRY(pr.str("to", true)).value();
    so.final = TRY(pr.boolean("final")).value_or(false);
    so.move = TRY(pr.boolean("move")).value_or(false);
    if (so.move) so.final = true;
    so.max_rounds = static_cast<int>(TRY(pr.uint("max_rounds")).value_or(8));
    auto dev = d.devices->find(*device);
    if (!dev) return fail(ENOENT, fmt::format("no device named '{}'", *device));
    if (so.to.find("://") == std::string::npos) so.to = TRY(allowed_path(d, so.to));
    TRY(dev->dirty->map_bits(so.map));  // the map exists
    if (dev->live->suspended())
      // Its reads and the map's checkpoint would wait for the writes held.
      return fail(EBUSY, fmt::format("device '{}' is suspended: a sync would wait for its resume (resume it "
                                     "first; `strata flatten` copies a suspended device)",
                                     *device));
    auto dirty = dev->dirty;
    Queue* q = d.queue;
    return d.jobs->start(*device, "sync", [dirty, q, so](Job& job) -> Result<json> {
      SyncOptions o = so;
      o.cancel = job.cancel_flag();
      auto r = sync_device(*dirty, *q, o, [&job](const json& p) {
        job.progress(p.value("copied_bytes", uint64_t{0}), p.value("total_bytes", uint64_t{0}), p);
      });
      if (!r) return fail(r.error());
      // A sync that did not converge is done (an incremental pass under
      // writes may well not); its result says so, and the CLI's exit status.
      return r;
    });
  }
  if (method == "device_merge") {
    auto device = TRY(pr.str("device", true));
    std::string layer = TRY(pr.str("layer")).value_or("");
    auto dev = d.devices->find(*device);
    if (!dev) return fail(ENOENT, fmt::format("no device named '{}'", *device));
    auto table = dev->live->active();  // kept alive by the job
    CowTarget* cow = nullptr;
    for (const auto& seg : table->segments())
      if (auto* c = dynamic_cast<CowTarget*>(seg.target.get())) cow = c;
    if (!cow) return fail(EINVAL, fmt::format("device '{}' has no cow segment to merge", *device));
    Queue* q = d.queue;
    return d.jobs->start(*device, "merge", [table, cow, q, layer](Job& job) -> Result<json> {
      auto t0 = std::chrono::steady_clock::now();
      auto report = [&job](uint64_t done, uint64_t total) {
        job.progress(done, total, {{"round", 1}, {"copied_bytes", done}, {"total_bytes", total}, {"unit", "chunks"}});
      };
      auto r = layer.empty() ? cow->merge(*q, report, job.cancel_flag())
                             : cow->merge_layer(*q, layer, report, job.cancel_flag());
      if (!r) return fail(r.error());
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
      return json{{"chunks_copied", *r}, {"milliseconds", ms}, {"layers", cow->layer_paths()}};
    });
  }
  if (method == "device_flatten") {
    auto device = TRY(pr.str("device", true));
    std::string to = TRY(pr.str("to", true)).value();
    auto dev = d.devices->find(*device);
    if (!dev) return fail(ENOENT, fmt::format("no device named '{}'", *device));
    to = TRY(allowed_path(d, to));
    auto dirty = dev->dirty;
    Queue* q = d.queue;
    auto live = dev->live;
    if (live->pin_suspended()) {
      // A suspended device is quiet: copy its active table as it is, beneath
      // the gate (through the device the reads would wait for the resume),
      // and keep it suspended until the copy ends.
      auto table = live->active();
      auto job = d.jobs->start(*device, "flatten", [live, table, q, to](Job& job) -> Result<json> {
        struct Unpin {
          LiveTarget& l;
          ~Unpin() { l.unpin(); }
        } unpin{*live};
        auto r = flatten_device(
            *table, *q, to,
            [&job](const json& p) {
              job.progress(p.value("copied_bytes", uint64_t{0}), p.value("total_bytes", uint64_t{0}), p);
            },
            job.cancel_flag());
        if (!r) return fail(r.error());
        return json{{"to", to}, {"bytes", *r}, {"suspended", true}};
      });
      if (!job) live->unpin();
      return job;
    }
    return d.jobs->start(*device, "flatten", [dirty, q, to](Job& job) -> Result<json> {
      // A point-in-time copy: the device as it was when the job began.
      uint64_t by_writes = 0;
      auto r = flatten_live(
          *dirty, *q, to,
          [&job](const json& p) {
            job.progress(p.value("copied_bytes", uint64_t{0}), p.value("total_bytes", uint64_t{0}), p);
          },
          &by_writes, job.cancel_flag());
      if (!r) return fail(r.error());
      return json{{"to", to}, {"bytes", *r}, {"copied_before_writes", by_writes}};
    });
  }
  return fail(EINVAL, fmt::format("{} is not a job", method));
}

}  // namespace

Result<std::shared_ptr<Job>> start_job(Daemon& d, const json& req) {
  const std::string method = req["method"];
  json params = req.contains("params") && !req["params"].is_null() ? req["params"] : json::object();
  if (!params.is_object()) return fail(EINVAL, "\"params\" must be an object");
  try {
    return start_job_checked(d, method, params);
  } catch (const std::exception& e) {
    return fail(EINVAL, fmt::format("bad request: {}", e.what()));
  }
}

Result<std::shared_ptr<Job>> find_job(Daemon& d, const json& req) {
  json params = req.contains("params") && !req["params"].is_null() ? req["params"] : json::object();
  if (!params.is_object()) return fail(EINVAL, "\"params\" must be an object");
  ParamReader pr(params);
  auto id = TRY(pr.uint("id", true));
  auto j = d.jobs->find(*id);
  if (!j) return fail(ENOENT, fmt::format("no job {}", *id));
  return j;
}

}  // namespace strata::control
