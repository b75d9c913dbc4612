#include "control/commands.h"

#include <fcntl.h>
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <future>

#include "control/metrics.h"
#include "control/params.h"
#include "control/sync.h"
#include "core/buffer.h"
#include "core/layer_stack.h"
#include "core/log.h"

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
    if (const auto* cow = s.target->layer_stack()) {
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
#define PARAM(var, expr)                             \
  auto var##_r = (expr);                             \
  if (!var##_r) return err(var##_r.error().message); \
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

// ---- the methods: one handler each (a family that shares a body shares one),
// listed in kMethods below.

// The handler of a method the control server answers with a reply: kRead
// (on the control thread) and kChange (on the worker). `method` is the
// name the request gave, `params` its params object.
using Handler = json (*)(Daemon& d, const std::string& method, const json& params);
// The handler of a method whose client follows a job: kJob starts it,
// kWait finds it (start_job, find_job).
using Follow = Result<std::shared_ptr<Job>> (*)(Daemon& d, const json& params);

json run_device_list(Daemon& d, const std::string&, const json&) {
  json out = json::array();
  for (const auto& dev : d.devices->list()) out.push_back(device_summary(*dev, *dev->live->active()));
  return ok(out);
}

// device_table, device_status
json run_device_table(Daemon& d, const std::string& method, const json& params) {
  ParamReader pr(params);
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

json run_device_dump(Daemon& d, const std::string&, const json&) {
  std::string text;
  for (const auto& dev : d.devices->list()) text += spec_text(dev->spec, dev->read_only);
  return ok({{"table", text}});
}

json run_server_status(Daemon& d, const std::string&, const json&) {
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

json run_server_methods(Daemon& d, const std::string& method, const json& params);  // after kMethods

json run_job_list(Daemon& d, const std::string&, const json&) { return ok(jobs_json(d)); }

json run_job_cancel(Daemon& d, const std::string&, const json& params) {
  ParamReader pr(params);
  PARAM(id, pr.uint("id", true));
  auto j = d.jobs->find(*id);
  if (!j) return err(fmt::format("no job {}", *id));
  j->cancel();
  return ok(j->to_json());
}

json run_device_snapshot(Daemon& d, const std::string&, const json& params) {
  ParamReader pr(params);
  PARAM(dev, pr.str("device", true));
  std::string why;
  auto found = find_device(d, *dev, &why);
  if (!found) return err(why);
  std::vector<LayerStack*> cows;
  auto table = found->live->active();
  for (const auto& seg : table->segments())
    if (auto* c = seg.target->layer_stack()) cows.push_back(c);
  if (cows.empty()) return err(fmt::format("device '{}' has no cow segment to snapshot", *dev));
  json out = json::array();
  for (auto* c : cows) {
    LayerStack::SnapshotStats st;
    auto r = c->snapshot(*d.queue, &st);
    if (!r) return err(r.error().message);
    // pause_us: how long writes were held; total_us: the whole operation
    // (flushes with writes flowing included).
    out.push_back({{"snapshot", *r},
                   {"pause_us", st.held_us},
                   {"total_us", st.total_us},
                   {"flush_rounds", st.flush_rounds},
                   {"seal_us", st.seal_us},
                   {"layers", c->layer_paths()}});
  }
  return ok(out);
}

json run_export_fuse_start(Daemon& d, const std::string&, const json& params) {
  ParamReader pr(params);
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

json run_export_fuse_stop(Daemon& d, const std::string&, const json& params) {
  ParamReader pr(params);
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

json run_export_fuse_list(Daemon& d, const std::string&, const json&) {
  json out = json::array();
  for (const auto& [mp, e] : d.fuse_exports)
    out.push_back({{"mountpoint", mp},
                   {"transport", e->io_uring() ? "io_uring" : "/dev/fuse"},
                   {"uring_requests", e->uring_requests()},
                   {"dev_requests", e->dev_requests()}});
  return ok(out);
}

// Jobs (below dispatch).
Result<std::shared_ptr<Job>> start_sync(Daemon& d, const json& params);
Result<std::shared_ptr<Job>> start_merge(Daemon& d, const json& params);
Result<std::shared_ptr<Job>> start_flatten(Daemon& d, const json& params);
Result<std::shared_ptr<Job>> wait_job(Daemon& d, const json& params);

// Every method of the control socket: dispatch, classify(), start_job(),
// find_job(), the "unknown method" error and server_methods read this table
// (docs/control.md). `run` is set for kRead and kChange, `follow` for kJob
// and kWait.
struct Method {
  std::string_view name;
  Kind kind;
  Handler run;
  Follow follow;
  std::string_view help;  // one line
};

constexpr Method kMethods[] = {
    {"device_list", Kind::kRead, run_device_list, nullptr, "Every device: name, size, read-only, segments, suspended"},
    {"device_table", Kind::kRead, run_device_table, nullptr, "The table of every device, or of `name`"},
    {"device_status", Kind::kRead, run_device_table, nullptr,
     "The status of every device, or of `name`: segments, cow layers, I/O counters"},
    {"device_dump", Kind::kRead, run_device_dump, nullptr, "A table file that re-creates every device"},
    {"server_status", Kind::kRead, run_server_status, nullptr, "Listeners, exports, connection counters, uptime"},
    {"server_methods", Kind::kRead, run_server_methods, nullptr, "Every method of the control socket, with its help"},
    {"device_create", Kind::kChange, run_device_change, nullptr,
     "Creates and serves a device from table text (`name`, `table`, `read_only`, `base_dir`)"},
    {"device_remove", Kind::kChange, run_device_change, nullptr, "Removes a device (`name`, `force`)"},
    {"device_reload", Kind::kChange, run_device_change, nullptr,
     "Loads an inactive table, swapped in by device_resume (`name`, `table`, `force`, `base_dir`)"},
    {"device_suspend", Kind::kChange, run_device_change, nullptr,
     "Flushes a device and holds its requests (`name`, `noflush`, `sync`)"},
    {"device_resume", Kind::kChange, run_device_change, nullptr,
     "Swaps in the inactive table, if any, and releases the requests held (`name`)"},
    {"dirty_start", Kind::kChange, run_dirty, nullptr, "Starts a dirty map (`device`, `name`, `granularity`, `full`)"},
    {"dirty_stop", Kind::kChange, run_dirty, nullptr, "Stops a dirty map (`device`, `name`)"},
    {"dirty_status", Kind::kRead, run_dirty, nullptr, "The dirty maps of `device`, or of every device"},
    {"dirty_list", Kind::kRead, run_dirty, nullptr, "The dirty extents of a map (`device`, `name`)"},
    {"dirty_clear", Kind::kChange, run_dirty, nullptr, "Clears a dirty map (`device`, `name`)"},
    {"dirty_checkpoint", Kind::kChange, run_dirty, nullptr,
     "The dirty extents of a map, which is cleared (`device`, `name`)"},
    {"device_sync", Kind::kJob, nullptr, start_sync,
     "Job: copies the blocks of a dirty map to a file or an NBD URI (`device`, `map`, `to`, `final`, `move`, "
     "`max_rounds`)"},
    {"device_snapshot", Kind::kChange, run_device_snapshot, nullptr,
     "Snapshots the top layer of each cow segment (`device`)"},
    {"device_merge", Kind::kJob, nullptr, start_merge,
     "Job: folds a cow layer into the one below it, by default the top (`device`, `layer`)"},
    {"device_flatten", Kind::kJob, nullptr, start_flatten,
     "Job: copies the device as it reads now into one raw file (`device`, `to`)"},
    {"job_list", Kind::kRead, run_job_list, nullptr, "Every job, running or ended in the last 10 minutes"},
    {"job_wait", Kind::kWait, nullptr, wait_job, "Follows a job until it ends (`id`)"},
    {"job_cancel", Kind::kRead, run_job_cancel, nullptr, "Cancels a job (`id`)"},
    {"export_fuse_start", Kind::kChange, run_export_fuse_start, nullptr,
     "Mounts a FUSE export of the devices (`mountpoint`)"},
    {"export_fuse_stop", Kind::kChange, run_export_fuse_stop, nullptr, "Unmounts a FUSE export (`mountpoint`)"},
    // A change: the FUSE exports belong to the worker thread (Daemon).
    {"export_fuse_list", Kind::kChange, run_export_fuse_list, nullptr, "The FUSE exports"},
};

const Method* find_method(std::string_view name) {
  for (const auto& m : kMethods)
    if (m.name == name) return &m;
  return nullptr;
}

const std::string& known_methods() {
  static const std::string known = [] {
    std::string s;
    for (const auto& m : kMethods) s += (s.empty() ? "" : ", ") + std::string(m.name);
    return s;
  }();
  return known;
}

std::string_view kind_name(Kind k) {
  switch (k) {
    case Kind::kRead:
      return "read";
    case Kind::kChange:
      return "change";
    case Kind::kJob:
      return "job";
    case Kind::kWait:
      return "wait";
  }
  return "";
}

json run_server_methods(Daemon&, const std::string&, const json&) {
  json out = json::array();
  for (const auto& m : kMethods) out.push_back({{"name", m.name}, {"kind", kind_name(m.kind)}, {"help", m.help}});
  return ok(out);
}

json run(Daemon& d, const json& req) {
  if (!req.is_object() || !req.contains("method") || !req["method"].is_string())
    return err("request must be a JSON object with a string \"method\"");
  const std::string method = req["method"];
  json params = req.contains("params") && !req["params"].is_null() ? req["params"] : json::object();
  if (!params.is_object()) return err("\"params\" must be an object");
  const Method* m = find_method(method);
  if (!m) return err(fmt::format("unknown method '{}' (known: {})", method, known_methods()));
  // A job's client follows it: the control server runs these (start_job, find_job).
  if (!m->run) return err(fmt::format("'{}' is not answered by dispatch: it runs as a job", method));
  return m->run(d, method, params);
}

}  // namespace

Kind classify(const std::string& m) {
  // An unknown method is a change: the worker answers it with the error.
  const Method* method = find_method(m);
  return method ? method->kind : Kind::kChange;
}

json error_reply(std::string_view message) { return {{"ok", false}, {"error", escape_controls(message)}}; }

json escape_reply(json reply) {
  if (reply.is_object()) {
    auto e = reply.find("error");
    if (e != reply.end() && e->is_string()) *e = escape_controls(e->get_ref<const std::string&>());
  }
  return reply;
}

std::string reply_line(const json& reply) { return reply.dump(-1, ' ', false, json::error_handler_t::replace) + "\n"; }

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

Result<std::shared_ptr<Job>> start_sync(Daemon& d, const json& params) {
  ParamReader pr(params);
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

Result<std::shared_ptr<Job>> start_merge(Daemon& d, const json& params) {
  ParamReader pr(params);
  auto device = TRY(pr.str("device", true));
  std::string layer = TRY(pr.str("layer")).value_or("");
  auto dev = d.devices->find(*device);
  if (!dev) return fail(ENOENT, fmt::format("no device named '{}'", *device));
  auto table = dev->live->active();  // kept alive by the job
  LayerStack* cow = nullptr;
  for (const auto& seg : table->segments())
    if (auto* c = seg.target->layer_stack()) cow = c;
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

Result<std::shared_ptr<Job>> start_flatten(Daemon& d, const json& params) {
  ParamReader pr(params);
  auto device = TRY(pr.str("device", true));
  std::string to = TRY(pr.str("to", true)).value();
  const uint64_t rate = TRY(pr.uint("rate")).value_or(0);
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
  return d.jobs->start(*device, "flatten", [dirty, q, to, rate](Job& job) -> Result<json> {
    // A point-in-time copy: the device as it was when the job began.
    uint64_t by_writes = 0;
    auto r = flatten_live(
        *dirty, *q, to,
        [&job](const json& p) {
          job.progress(p.value("copied_bytes", uint64_t{0}), p.value("total_bytes", uint64_t{0}), p);
        },
        &by_writes, job.cancel_flag(), rate);
    if (!r) return fail(r.error());
    return json{{"to", to},
                {"bytes", *r},
                {"copied_before_writes", by_writes},
                {"point_in_time", job.detail().value("point_in_time", "")}};
  });
}

// job_wait
Result<std::shared_ptr<Job>> wait_job(Daemon& d, const json& params) {
  ParamReader pr(params);
  auto id = TRY(pr.uint("id", true));
  auto j = d.jobs->find(*id);
  if (!j) return fail(ENOENT, fmt::format("no job {}", *id));
  return j;
}

// The job a kJob method starts or a kWait method follows.
Result<std::shared_ptr<Job>> follow(Daemon& d, const json& req, Kind kind) {
  const std::string method = req["method"];
  json params = req.contains("params") && !req["params"].is_null() ? req["params"] : json::object();
  if (!params.is_object()) return fail(EINVAL, "\"params\" must be an object");
  const Method* m = find_method(method);
  if (!m || m->kind != kind || !m->follow) {
    if (kind == Kind::kJob) return fail(EINVAL, fmt::format("{} is not a job", method));
    return fail(EINVAL, fmt::format("{} does not follow a job", method));
  }
  try {
    if (kind == Kind::kJob) {
      ParamReader pr(params);
      TRY(pr.boolean("detach"));
    }
    return m->follow(d, params);
  } catch (const std::exception& e) {
    return fail(EINVAL, fmt::format("bad request: {}", e.what()));
  }
}

}  // namespace

Result<std::shared_ptr<Job>> start_job(Daemon& d, const json& req) { return follow(d, req, Kind::kJob); }

Result<std::shared_ptr<Job>> find_job(Daemon& d, const json& req) { return follow(d, req, Kind::kWait); }

}  // namespace strata::control
