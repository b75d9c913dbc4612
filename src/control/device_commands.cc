// Devices at runtime: device_create, device_reload, device_suspend,
// device_resume, device_remove, and the whole-configuration apply of serve's
// start-up and SIGHUP. All of them run on the control server's worker, one
// at a time (commands.h, Kind::kChange); every table is built and checked
// before anything that clients see changes.
#include <fmt/core.h>

#include <thread>

#include "control/commands.h"
#include "control/params.h"
#include "core/log.h"

namespace strata::control {
namespace {

using json = nlohmann::json;

json ok(json result) { return {{"ok", true}, {"result", std::move(result)}}; }
json err(std::string msg) { return {{"ok", false}, {"error", std::move(msg)}}; }

std::string state_dir_of(const Daemon& d, const std::string& name) {
  return d.state_dir.empty() ? "" : d.state_dir + "/" + (name.empty() ? "_default" : name);
}

// One device spec out of table text (segment lines, or one [name] section).
Result<DeviceSpec> parse_one(const std::string& name, const std::string& text, std::string_view source) {
  auto specs = TRY(parse_config(text, source, name));
  if (specs.size() != 1)
    return fail(EINVAL, fmt::format("{}: {} devices in the table; give the segments of one device", source,
                                    specs.size()));
  if (specs[0].name != name)
    return fail(EINVAL, fmt::format("{}: the table defines device '{}', not '{}'", source, specs[0].name, name));
  return specs[0];
}

Result<std::shared_ptr<Device>> build_device(Daemon& d, const DeviceSpec& spec, bool read_only, std::string_view source,
                                             RegistryResolver& res) {
  res.set_self(spec.name);
  auto table = TRY(build_table(spec, source, read_only, res));
  auto dev = std::make_shared<Device>();
  dev->name = spec.name;
  dev->read_only = read_only;
  dev->spec = spec;
  dev->uses = res.take_used();
  dev->live = std::make_shared<LiveTarget>(std::move(table));
  auto dirty = DirtyTarget::create(dev->live, spec.name, state_dir_of(d, spec.name));
  if (!dirty) return fail(dirty.error().code, fmt::format("device '{}': {}", spec.name, dirty.error().message));
  dev->dirty = std::move(*dirty);
  dev->target = dev->dirty;
  return dev;
}

// Attaches a built device to every queue, then serves it.
Result<> serve_device(Daemon& d, const std::shared_ptr<Device>& dev) {
  for (Queue* q : d.queues) {
    auto r = q->call([&]() -> Task<Result<>> { co_return dev->dirty->attach_queue(*q); });
    if (!r) return fail(r.error().code, fmt::format("device '{}': {}", dev->name, r.error().message));
  }
  d.devices->put(dev);  // NBD clients find it from now on
  return {};
}

// Loads `spec` as the inactive table of `cur`, checked (EBUSY for a size
// change under NBD clients without force, or with dirty maps).
Result<std::shared_ptr<Device>> load_inactive(Daemon& d, const std::shared_ptr<const Device>& cur,
                                              const DeviceSpec& spec, std::string_view source, bool force) {
  RegistryResolver res(*d.devices, cur->name);
  auto table = TRY(build_table(spec, source, cur->read_only, res));
  if (table->size() != cur->live->size()) {
    std::size_t n = d.nbd->connections_to(cur->dirty.get());
    if (n > 0 && !force)
      return fail(EBUSY, fmt::format("reload of '{}' changes its size ({} -> {} bytes) while {} NBD client(s) are "
                                     "connected, which cannot learn the new size (--force to reload anyway)",
                                     cur->name, cur->live->size(), table->size(), n));
    if (!cur->dirty->maps().empty())
      return fail(EBUSY, fmt::format("reload of '{}' changes its size ({} -> {} bytes) but it has dirty maps, "
                                     "which are sized for the device: stop them first",
                                     cur->name, cur->live->size(), table->size()));
  }
  TRY(cur->live->load(table));
  auto next = std::make_shared<Device>(*cur);
  next->inactive = std::make_shared<const DeviceSpec>(spec);
  next->inactive_uses = res.take_used();
  return next;
}

// Resumes a device; a swapped-in table becomes its spec.
void resume_device(Daemon& d, const std::shared_ptr<const Device>& cur) {
  if (cur->live->pinned()) return;  // resume() would refuse: the record stays as it is
  bool swapped = cur->live->resume(d.nbd->next_connection_id());
  if (!swapped && !cur->inactive) return;
  auto next = std::make_shared<Device>(*cur);
  if (swapped && cur->inactive) {
    next->spec = *cur->inactive;
    next->uses = cur->inactive_uses;
  }
  next->inactive.reset();
  next->inactive_uses.clear();
  d.devices->put(next);
}

Result<> remove_device(Daemon& d, const std::string& name, bool force) {
  auto dev = d.devices->find(name);
  if (!dev) return fail(ENOENT, fmt::format("no device named '{}'", name));
  if (d.jobs->running_on(name)) return fail(EBUSY, fmt::format("a job is running on device '{}'", name));
  auto users = d.devices->users_of(name);
  if (!users.empty()) return fail(EBUSY, fmt::format("device '{}' is used by device '{}'", name, users[0]));
  const Target* t = dev->dirty.get();
  // Users an export cannot end (a FUSE mount showing it) refuse it even with
  // --force; NBD clients refuse it without.
  auto exports = d.exports();
  for (bool endable : {false, true})
    for (const Export* x : exports) {
      auto u = x->users_of(t);
      if (u.count > 0 && u.can_end == endable && (!endable || !force))
        return fail(EBUSY, fmt::format("device '{}' {} ({})", name, u.what, endable ? "--force ends them" : "stop it first"));
    }
  auto clients = [&] {
    std::size_t n = 0;
    for (const Export* x : exports) n += x->users_of(t).count;
    return n;
  };
  d.devices->erase(name);  // new NBD connections no longer find it
  std::size_t n = clients();
  if (!force && n > 0) {  // one finished its handshake meanwhile
    d.devices->put(dev);
    for (const Export* x : exports)
      if (auto u = x->users_of(t); u.count > 0)
        return fail(EBUSY, fmt::format("device '{}' {} (--force ends them)", name, u.what));
  }
  if (force && n > 0) {
    LOG_INFO("remove '{}': ending {} client(s) after their requests", name, n);
    for (int i = 0; i < 3000 && clients() > 0; ++i) {
      for (Export* x : exports) x->end_users_of(t);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  if (dev->live->suspended()) dev->live->resume(d.nbd->next_connection_id());
  if (!dev->read_only && dev->live->caps().can_flush) {
    Queue* q = d.queue;
    auto r = q->call([&] { return dev->dirty->flush(*q); });
    if (!r) LOG_WARN("remove '{}': flush: {}", name, r.error().message);
  }
  dev->dirty->close_clean();
  LOG_INFO("removed device '{}'", name);
  return {};
}

}  // namespace

Result<json> device_create(Daemon& d, const std::string& name, const std::string& text, bool read_only,
                           std::string_view source, std::string_view base_dir) {
  if (!valid_device_name(name))
    return fail(EINVAL, fmt::format("device name '{}' may only hold letters, digits, '-', '_' and '.'", name));
  if (d.devices->find(name)) return fail(EEXIST, fmt::format("device '{}' exists", name));
  auto spec = TRY(parse_one(name, text, source));
  if (!base_dir.empty()) resolve_paths(spec, base_dir);
  RegistryResolver res(*d.devices, name);
  auto dev = TRY(build_device(d, spec, read_only || spec.read_only || d.all_read_only, source, res));
  TRY(serve_device(d, dev));
  LOG_INFO("created device '{}' ({} bytes)", name, dev->live->size());
  return json{{"name", name}, {"size", dev->live->size()}, {"read_only", dev->effective_read_only()}};
}

json run_device_change(Daemon& d, const std::string& method, const json& params) {
  ParamReader pr(params);
  auto name_r = pr.str("name", true);
  if (!name_r) return err(name_r.error().message);
  const std::string name = **name_r;
  auto force_r = pr.boolean("force");
  if (!force_r) return err(force_r.error().message);
  const bool force = force_r->value_or(false);
  if (method == "device_create" || method == "device_reload") {
    auto table = pr.str("table", true);
    if (!table) return err(table.error().message);
    auto ro = pr.boolean("read_only");
    if (!ro) return err(ro.error().message);
    // The directory the table's relative paths are relative to: the CLI
    // sends its table file's (or, for stdin, its working directory).
    auto base_dir = pr.str("base_dir");
    if (!base_dir) return err(base_dir.error().message);
    if (*base_dir && ((*base_dir)->empty() || (**base_dir)[0] != '/'))
      return err("\"base_dir\" must be an absolute path");
    const std::string dir = base_dir->value_or("");
    std::string source = fmt::format("{} {}", method == "device_create" ? "create" : "reload", name);
    if (method == "device_create") {
      auto r = device_create(d, name, **table, ro->value_or(false), source, dir);
      return r ? ok(*r) : err(r.error().message);
    }
    auto cur = d.devices->find(name);
    if (!cur) return err(fmt::format("no device named '{}'", name));
    if (d.jobs->running_on(name)) return err(fmt::format("a job is running on device '{}'", name));
    auto spec = parse_one(name, **table, source);
    if (!spec) return err(spec.error().message);
    if (!dir.empty()) resolve_paths(*spec, dir);
    auto next = load_inactive(d, cur, *spec, source, force);
    if (!next) return err(next.error().message);
    d.devices->put(*next);
    return ok({{"name", name}, {"loaded", true}});
  }
  auto cur = d.devices->find(name);
  if (!cur) return err(fmt::format("no device named '{}'", name));
  if (method == "device_suspend") {
    auto nf = pr.boolean("noflush");
    if (!nf) return err(nf.error().message);
    auto sy = pr.boolean("sync");
    if (!sy) return err(sy.error().message);
    if (nf->value_or(false) && sy->value_or(false)) return err("noflush and sync exclude each other");
    const SuspendFlush how = nf->value_or(false)   ? SuspendFlush::kNone
                             : sy->value_or(false) ? SuspendFlush::kHeld
                                                   : SuspendFlush::kFirst;
    auto t0 = std::chrono::steady_clock::now();
    auto r = cur->live->suspend(how);
    if (!r) return err(r.error().message);
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
    return ok({{"name", name},
               {"suspend_us", us},
               {"preflush_us", cur->live->last_preflush_us()},
               {"drain_us", cur->live->last_drain_us()},
               {"flush_us", cur->live->last_flush_us()}});
  }
  if (method == "device_resume") {
    if (cur->inactive && d.jobs->running_on(name)) return err(fmt::format("a job is running on device '{}'", name));
    if (cur->live->pinned())
      return err(fmt::format("device '{}' is being flattened while suspended: resume once the job ends (strata "
                             "job wait), or cancel it",
                             name));
    const bool was_suspended = cur->live->suspended() || cur->inactive;
    resume_device(d, cur);
    auto now = d.devices->find(name);
    json out{{"name", name}, {"size", now->live->size()}, {"table", now->live->table_line()}};
    if (was_suspended) out["held_us"] = now->live->last_hold_us();
    return ok(out);
  }
  if (method == "device_remove") {
    auto r = remove_device(d, name, force);
    return r ? ok(json::object()) : err(r.error().message);
  }
  return err(fmt::format("unknown method '{}'", method));
}

Result<json> apply_config(Daemon& d, const std::vector<DeviceSpec>& specs, std::string_view source,
                          bool remove_missing) {
  // 1. Build and check everything, changing nothing clients see.
  RegistryResolver res(*d.devices, "");
  std::vector<std::shared_ptr<Device>> created;
  std::vector<std::shared_ptr<const Device>> reloads;  // with the inactive table loaded
  std::vector<std::shared_ptr<const Device>> loaded_on;  // to clear on failure
  auto undo = [&] {
    for (const auto& dev : loaded_on) dev->live->clear_inactive();
  };
  for (const auto& spec : specs) {
    bool ro = spec.read_only || d.all_read_only;
    auto cur = d.devices->find(spec.name);
    if (!cur) {
      auto dev = build_device(d, spec, ro, source, res);
      if (!dev) {
        undo();
        return fail(dev.error());
      }
      res.add_pending(spec.name, (*dev)->live);
      created.push_back(*dev);
      continue;
    }
    if (spec_text(spec, ro) == spec_text(cur->spec, cur->read_only)) continue;
    if (ro != cur->read_only) {
      undo();
      return fail(EINVAL, fmt::format("{}: device '{}': a reload cannot change read-only (remove and create it)",
                                      source, spec.name));
    }
    if (d.jobs->running_on(spec.name)) {
      undo();
      return fail(EBUSY, fmt::format("{}: a job is running on device '{}'", source, spec.name));
    }
    auto next = load_inactive(d, cur, spec, source, false);
    if (!next) {
      undo();
      return fail(next.error());
    }
    loaded_on.push_back(cur);
    reloads.push_back(*next);
  }
  // 2. Apply: new devices, then reloads, then removals.
  json out = {{"created", json::array()}, {"reloaded", json::array()}, {"removed", json::array()},
              {"kept", json::array()}};
  for (const auto& dev : created) {
    if (auto r = serve_device(d, dev); !r) return fail(r.error());
    out["created"].push_back(dev->name);
  }
  for (const auto& dev : reloads) {
    d.devices->put(dev);
    resume_device(d, dev);
    out["reloaded"].push_back(dev->name);
  }
  if (remove_missing) {
    for (const auto& dev : d.devices->list()) {
      bool listed = std::any_of(specs.begin(), specs.end(), [&](const DeviceSpec& s) { return s.name == dev->name; });
      if (listed) continue;
      if (auto r = remove_device(d, dev->name, false); !r) {
        LOG_WARN("{}: device '{}' is gone from the table but stays: {}", source, dev->name, r.error().message);
        out["kept"].push_back(dev->name);
      } else {
        out["removed"].push_back(dev->name);
      }
    }
  }
  return out;
}

void resume_all(Daemon& d) {
  for (const auto& dev : d.devices->list()) {
    dev->live->clear_inactive();
    dev->live->resume(d.nbd->next_connection_id());
  }
}

void reap_tables(Daemon& d) {
  uint64_t oldest = d.nbd->oldest_connection_id();
  for (const auto& dev : d.devices->list()) dev->live->reap(oldest);
}

int close_devices(Daemon& d) {
  int rc = 0;
  for (const auto& dev : d.devices->list()) {
    if (!dev->read_only && dev->live->caps().can_flush) {
      Queue* q = d.queue;
      // A device moved to another host (sync --move) fails every request
      // from the move on; its local copy is still flushed, below that fence.
      auto r = dev->dirty->moved() ? q->call([&] { return dev->live->flush(*q); })
                                   : q->call([&] { return dev->dirty->flush(*q); });
      if (!r) {
        LOG_ERROR("flush '{}' at exit: {}", dev->name, r.error().message);
        rc = 1;
      }
    }
    dev->dirty->close_clean();
  }
  return rc;
}

}  // namespace strata::control
