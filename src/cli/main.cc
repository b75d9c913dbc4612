// strata: the command line. `serve` runs the server in the foreground; the
// other commands are thin clients of a running server's control socket.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/help.h"
#include "cli/live.h"
#include "cli/progress.h"
#include "cli/top.h"
#include "daemon/serve.h"
#include "daemon/state_dir.h"
#include "control/client.h"
#include "control/sync.h"
#include "core/queue.h"
#include "table/table.h"
#include "table/registry.h"
#include "targets/dirty/dirty.h"
#include "targets/cow/layer.h"
#include "core/params.h"
#include "core/log.h"

#include <signal.h>
#include <unistd.h>

namespace {

using json = nlohmann::json;

using strata::cli::human_size;

int client(const std::string& ctl, const std::string& method, const json& params, bool as_json,
           void (*print)(const json&)) {
  auto r = strata::control::call(ctl.empty() ? strata::control::default_control_path() : ctl, method, params);
  if (!r) {
    fmt::print(stderr, "strata: {}\n", r.error().message);
    return 1;
  }
  if (as_json)
    fmt::print("{}\n", r->dump(2));
  else
    print(*r);
  return 0;
}

void print_list(const json& r) {
  for (const auto& d : r)
    fmt::print("{:<20} {:>12} {:<10} {} segment(s)\n", d["name"].get<std::string>().empty() ? "\"\"" : d["name"].get<std::string>(),
               human_size(d["size"].get<uint64_t>()), d["read_only"].get<bool>() ? "read-only" : "read-write",
               d["segments"].get<uint64_t>());
}

void print_table(const json& r) {
  bool many = r.size() > 1;
  for (const auto& d : r) {
    // `[name ro]` as in the table file, so that the output loads back as it was.
    if (many) fmt::print("[{}{}]\n", d["name"].get<std::string>(), d.value("read_only", false) ? " ro" : "");
    fmt::print("{}", d["table"].get<std::string>());
  }
}

void print_status(const json& r) {
  for (const auto& d : r) {
    fmt::print("device '{}': {} ({} bytes), {}\n", d["name"].get<std::string>(), human_size(d["size"].get<uint64_t>()),
               d["size"].get<uint64_t>(), d["read_only"].get<bool>() ? "read-only" : "read-write");
    for (const auto& s : d["segments"]) {
      fmt::print("  {} {} {}\n", s["start_sector"].get<uint64_t>(), s["num_sectors"].get<uint64_t>(),
                 s["table"].get<std::string>());
      std::string info;
      for (const auto& [k, v] : s["info"].items()) info += fmt::format(" {}={}", k, v.is_string() ? v.get<std::string>() : v.dump());
      if (!info.empty()) fmt::print("   {}\n", info);
      if (!s.contains("layers")) continue;
      // A cow stack, bottom to top, as `strata merge --layer` names them.
      fmt::print("    layers (bottom to top):\n");
      int i = 0;
      for (const auto& l : s["layers"])
        fmt::print("    {} {} {} {} chunks, {} on disk{}\n", i++, l["path"].get<std::string>(),
                   l["uuid"].get<std::string>(), l["chunks"].get<uint64_t>(),
                   human_size(l["allocated_bytes"].get<uint64_t>()), l["writable"].get<bool>() ? ", writable" : "");
    }
  }
}

strata::Result<json> call_with_progress(const std::string& ctl, const std::string& method, const json& params,
                                        const std::string& label) {
  // Ctrl-C ends this client, and the server cancels the job it follows
  // (even when started in the background of a script, where SIGINT is ignored).
  ::signal(SIGINT, SIG_DFL);
  // A long request (sync, merge, flatten): its progress on stderr (cli/progress.h).
  strata::cli::Progress progress(label, ::isatty(STDERR_FILENO));
  auto r = strata::control::call(ctl.empty() ? strata::control::default_control_path() : ctl, method, params,
                                 [&](const json& pr) { progress.update(pr); });
  progress.finish(r.has_value());
  return r;
}

// --detach: the job's id on stdout.
int start_detached(const std::string& ctl, const std::string& method, json params) {
  params["detach"] = true;
  auto r = strata::control::call(ctl.empty() ? strata::control::default_control_path() : ctl, method, params);
  if (!r) {
    fmt::print(stderr, "strata: {}\n", r.error().message);
    return 1;
  }
  fmt::print("{}\n", (*r)["job"].get<uint64_t>());
  return 0;
}

// `strata flatten DEVICE --to RAW --table T`: no server; the table is loaded
// here read-only (a layer a server holds for writing is refused by its lock).
int flatten_offline(const std::vector<std::string>& tables, const std::string& device, const std::string& to,
                    bool as_json) {
  strata::daemon::ServeOptions o;
  o.tables = tables;
  o.read_only = true;
  auto devs = strata::daemon::load_devices(o);
  if (!devs) {
    fmt::print(stderr, "strata: {}\n", devs.error().message);
    return 1;
  }
  const strata::DeviceSet::Device* dev = nullptr;
  for (const auto& d : (*devs)->devices())
    if (d.name == device) dev = &d;
  if (!dev) {
    fmt::print(stderr, "strata: no device named '{}' in the table\n", device);
    return 1;
  }
  strata::Queue q(0);
  if (auto r = q.start(); !r) {
    fmt::print(stderr, "strata: {}\n", r.error().message);
    return 1;
  }
  strata::cli::Progress progress("flatten", ::isatty(STDERR_FILENO));
  auto r = strata::control::flatten_device(*dev->table, q, to, [&](const json& pr) { progress.update(pr); });
  progress.finish(r.has_value());
  q.stop();
  if (!r) {
    fmt::print(stderr, "strata: {}\n", r.error().message);
    return 1;
  }
  fmt::print("{}\n", as_json ? json{{"to", to}, {"bytes", *r}}.dump(2) : fmt::format("flattened {} bytes into {}", *r, to));
  return 0;
}

}  // namespace

// A layer to look at: a local file, or a shared layer on remote storage (nfs://).
static strata::Result<std::unique_ptr<strata::LayerFile>> open_layer_to_read(const std::string& path) {
  if (!strata::is_remote_url(path)) return strata::LayerFile::open(path, false, false);
  auto f = strata::open_remote_file(path);
  if (!f) return strata::fail(f.error());
  return strata::LayerFile::open_remote(std::move(*f));
}

int main(int argc, char** argv) {
  CLI::App app{"strata: a userspace block-device engine (device-mapper in user space, exported over NBD)"};
  strata::cli::setup_help(app);
  app.require_subcommand(1);

  strata::daemon::ServeOptions so;
  auto* serve = app.add_subcommand("serve", "Serve devices over NBD in the foreground");
  serve->add_option("--table", so.tables, "Table file: dmsetup lines, devices under [name] headers; relative paths from its directory")
      ->check(CLI::ExistingFile);
  serve->add_option("--file", so.file, "Serve one file (shorthand for a one-segment `file` table)");
  serve->add_option("--offset", so.offset, "With --file: byte offset into the file");
  serve->add_flag("--direct", so.direct, "With --file: O_DIRECT (no page cache)");
  serve->add_option("--export", so.export_name, "Export name for --file or a table without [name] headers")
      ->default_str("");
  serve->add_option("--unix", so.unix_paths, "Listen on this Unix socket (repeatable)");
  serve->add_option("--tcp", so.tcp, "Listen on HOST:PORT (repeatable; default 127.0.0.1:10809 when no --unix)");
  serve->add_flag("--read-only,-r", so.read_only, "Export every device read-only");
  serve->add_option("--control", so.control, "Control socket path (default: $STRATA_CONTROL or /run/strata/control.sock)");
  serve->add_option("--queues", so.queues, "I/O threads (default: number of CPUs, at most 4)");
  serve->add_option("--max-connections", so.max_connections, "Most clients at once")->default_val(256);
  serve->add_option("--max-handshakes", so.max_handshakes,
                    "Clients in the handshake at once, apart from --max-connections; a new one evicts the "
                    "oldest that has sent nothing")
      ->default_val(128);
  serve->add_option("--max-memory", so.max_memory,
                    "Request and reply buffers of all NBD clients at most (e.g. 512M; default min(1G, RAM/4))");
  serve->add_option("--handshake-timeout", so.handshake_timeout, "Seconds a client has to finish the handshake")
      ->default_val(10);
  serve->add_option("--pidfile", so.pidfile, "Write the server's pid here once it is ready");
  serve->add_flag("--verbose,-v", so.verbose, "Debug logging");
  serve->add_option("--allow-path", so.allow_paths,
                    "A directory under which control clients may name files (sync --to, flatten --to, fuse start); "
                    "repeatable; none by default");
  serve->add_option("--fuse", so.fuse, "Also show every device as a file in a FUSE mount here (repeatable)");
  serve->add_option("--fuse-io-uring", so.fuse_io_uring,
                    "FUSE over io_uring where the kernel has it (on: turns on the fuse module's enable_uring as root)")
      ->transform(CLI::CheckedTransformer(std::map<std::string, std::string>{{"on", "1"}, {"off", "0"}}))
      ->default_str("on");
  serve->add_option("--sched", so.sched_batch,
                    "Scheduling of the I/O threads: batch (SCHED_BATCH: a completion does not preempt the client or "
                    "server running on the CPU) or normal")
      ->transform(CLI::CheckedTransformer(std::map<std::string, std::string>{{"batch", "1"}, {"normal", "0"}}))
      ->default_str("batch");
  serve->add_option("--state-dir", so.state_dir,
                    "Where dirty maps persist (default: $STRATA_STATE_DIR, else as root /var/lib/strata, or /var/lib/strata/@CONTROL-PATH for a server on another --control)");
  serve->add_option("--tls", so.tls, "TLS: off, on (offered), require (plaintext refused)")
      ->check(CLI::IsMember({"off", "on", "require"}))
      ->default_val("off");
  serve->add_option("--tls-certificates", so.tls_certificates,
                    "Directory with ca-cert.pem, server-cert.pem, server-key.pem")
      ->check(CLI::ExistingDirectory);
  serve->add_option("--tls-psk", so.tls_psk, "Pre-shared keys file (psktool's username:hexkey lines)")
      ->check(CLI::ExistingFile);
  serve->add_flag("--tls-verify-peer", so.tls_verify_peer, "Require client certificates signed by the CA");
  serve->add_flag("--empty", so.empty, "Start with no device: create them at runtime (strata create)");
  serve->add_option("--metrics", so.metrics, "Serve Prometheus metrics at http://HOST:PORT/metrics");
  bool help_targets = false;
  serve->add_flag("--help-targets", help_targets, "Describe every target type and exit");

  std::string ctl;
  bool as_json = false;
  std::string name;
  auto* list = app.add_subcommand("list", "List the devices of a running server");
  auto* table = app.add_subcommand("table", "Print the table of a device (or all) of a running server");
  auto* status = app.add_subcommand("status", "Show status and counters of a device (or all) of a running server");
  auto* server = app.add_subcommand("server", "Show the server's listeners and connections");
  for (auto* c : {list, table, status, server}) {
    c->add_option("--control", ctl, "Control socket of the server");
    c->add_flag("--json", as_json, "Print the raw JSON reply");
  }
  table->add_option("device", name, "Device name");
  status->add_option("device", name, "Device name");

  std::string to;
  // Dirty maps (write tracking) and incremental sync.
  auto* dirty = app.add_subcommand("dirty", "Dirty maps: the blocks written since a checkpoint");
  dirty->require_subcommand(1);
  std::string device, map;
  uint64_t granularity = 4096;
  bool offline = false;
  std::string state_dir;
  auto add_dm = [&](CLI::App* c, bool need_map) {
    c->add_option("--control", ctl, "Control socket of the server");
    c->add_flag("--json", as_json, "Print the raw JSON reply");
    c->add_option("device", device, "Device name")->required(need_map);
    if (need_map) c->add_option("name", map, "Map name")->required();
  };
  auto* d_start = dirty->add_subcommand("start", "Start a map (blocks of --granularity bytes)");
  add_dm(d_start, true);
  d_start->add_option("--granularity", granularity, "Block size of the map, a power of two >= 512")
      ->default_val(4096);
  bool full_map = false;
  d_start->add_flag("--full", full_map,
                    "Every block starts dirty: the first sync copies the whole device (a new replica, a disk "
                    "moving to another host)");
  auto* d_stop = dirty->add_subcommand("stop", "Stop a map and delete it");
  add_dm(d_stop, true);
  auto* d_status = dirty->add_subcommand("status", "Maps of a device (or all): dirty blocks, consistency");
  add_dm(d_status, false);
  auto* d_list = dirty->add_subcommand("list", "Dirty extents of a map (offset length per line)");
  add_dm(d_list, true);
  d_list->add_flag("--offline", offline, "Read the persisted map; no server needed");
  d_list->add_option("--state-dir", state_dir, "With --offline: the server's --state-dir");
  auto* d_clear = dirty->add_subcommand("clear", "Forget every dirty block of a map");
  add_dm(d_clear, true);
  auto* d_ckpt = dirty->add_subcommand("checkpoint", "Hand back the map and start a fresh one, atomically");
  add_dm(d_ckpt, true);

  auto* sync = app.add_subcommand("sync", "Copy the dirty blocks of a device to a replica, then forget them");
  bool final_pass = false;
  int max_rounds = 8;
  sync->add_option("device", device, "Device name")->required();
  sync->add_option("--map", map, "Dirty map to follow")->required();
  sync->add_option("--to", to, "Replica: a file path or an NBD URI")->required();
  sync->add_flag("--final", final_pass, "Hold writes for the last pass: the replica is then an exact copy");
  bool move_pass = false;
  sync->add_flag("--move", move_pass,
                 "Move the device to the replica's host: --final, then every request here (the writes held by the "
                 "last pass included) fails with ESHUTDOWN so clients reconnect to the replica");
  sync->add_option("--max-rounds", max_rounds, "Passes before giving up on converging")->default_val(8);
  sync->add_option("--control", ctl, "Control socket of the server");
  sync->add_flag("--json", as_json, "Print the raw JSON reply");
  bool detach = false;

  auto* fusecmd = app.add_subcommand("fuse", "FUSE exports of a running server");
  fusecmd->require_subcommand(1);
  std::string mountpoint;
  auto* f_start = fusecmd->add_subcommand("start", "Show every device as a file in a FUSE mount at MOUNTPOINT");
  auto* f_stop = fusecmd->add_subcommand("stop", "Unmount a FUSE export");
  auto* f_list = fusecmd->add_subcommand("list", "List the FUSE exports");
  for (auto* c : {f_start, f_stop, f_list}) {
    c->add_option("--control", ctl, "Control socket of the server");
    c->add_flag("--json", as_json, "Print the raw JSON reply");
  }
  f_start->add_option("mountpoint", mountpoint, "Directory to mount on")->required();
  f_stop->add_option("mountpoint", mountpoint, "The mountpoint")->required();

  // cow layers: offline tools, and online snapshot / flatten.
  auto* layer = app.add_subcommand("layer", "cow layer files (offline)");
  layer->require_subcommand(1);
  std::string lpath, lsize, lchunk, lparent;
  bool repair = false;
  auto* l_create = layer->add_subcommand("create", "Create an empty layer (over a parent layer or the base)");
  l_create->add_option("path", lpath, "Layer file")->required();
  l_create->add_option("--size", lsize, "Virtual size (e.g. 1G); defaults to the parent's");
  l_create->add_option("--chunk-size", lchunk, "Chunk size, a power of two from 512 to 1M (default: the parent's, else 4096)");
  l_create->add_option("--parent", lparent, "Parent layer (stored relative to the new layer)");
  l_create->add_flag("--json", as_json, "JSON");
  auto* l_info = layer->add_subcommand("info", "Show a layer's header and chunk counts");
  l_info->add_option("path", lpath, "Layer file")->required();
  l_info->add_flag("--json", as_json, "JSON");
  auto* l_check = layer->add_subcommand("check", "Check a layer; change nothing unless --repair");
  l_check->add_option("path", lpath, "Layer file")->required();
  l_check->add_flag("--repair", repair, "Fix what can be fixed (bits past the end, checksum)");
  l_check->add_flag("--json", as_json, "JSON: {path, ok, problems, repaired, remaining}");

  auto* snap = app.add_subcommand("snapshot", "Online: make the top layer of a cow device read-only, put a new one on it");
  snap->add_option("device", device, "Device name")->required();
  snap->add_option("--control", ctl, "Control socket of the server");
  snap->add_flag("--json", as_json, "Print the raw JSON reply");
  auto* merge = app.add_subcommand("merge", "Online: fold the top layer of a cow device into its parent (or --layer L into the layer below it)");
  merge->add_option("device", device, "Device name")->required();
  std::string merge_layer;
  merge->add_option("--layer", merge_layer,
                    "Fold this read-only layer (a path, as `strata status` lists them) into the layer below "
                    "it instead of the top into its parent");
  merge->add_option("--control", ctl, "Control socket of the server");
  merge->add_flag("--json", as_json, "Print the raw JSON reply");
  auto* flat = app.add_subcommand("flatten", "The whole device as it reads now into one raw file (online, or "
                                              "offline with --table)");
  flat->add_option("device", device, "Device name")->required();
  flat->add_option("--to", to, "Raw file to write")->required();
  std::vector<std::string> flat_tables;
  flat->add_option("--table", flat_tables, "Offline: load this table here (read-only) instead of asking a server");
  flat->add_option("--control", ctl, "Control socket of the server");
  std::string flat_rate;
  flat->add_option("--rate", flat_rate,
                   "Online: copy at most this many bytes per second (K/M/G suffixes; a write that must copy its "
                   "block first is not held to it); default: as fast as the storage goes");
  flat->add_flag("--json", as_json, "Print the raw JSON reply");
  for (auto* c : {sync, merge, flat})
    c->add_flag("--detach", detach,
                "Start the job, print its id and return (else follow it; Ctrl-C cancels it; see `strata jobs`)");
  strata::cli::LiveCommands live;
  strata::cli::add_live_commands(app, live);
  strata::cli::TopOptions top;
  strata::cli::add_top_command(app, top);

  if (auto rc = strata::cli::parse_command_line(app, argc, argv)) return *rc;
  if (auto rc = strata::cli::run_live_commands(live)) return *rc;
  if (top.cmd->parsed()) return strata::cli::run_top(top);
  if (so.state_dir.empty()) {
    if (const char* e = std::getenv("STRATA_STATE_DIR"); e && *e)
      so.state_dir = e;
    else  // as root, one per control socket: two servers never share one
      so.state_dir =
          strata::daemon::default_state_dir(so.control.empty() ? strata::control::default_control_path() : so.control);
  }

  json params = json::object();
  if (!name.empty()) params["name"] = name;
  if (serve->parsed()) {
    if (help_targets) {
      for (const auto& t : strata::target_types()) fmt::print("{}\n\n", t.help);
      return 0;
    }
    return strata::daemon::serve(so);
  }
  if (list->parsed()) return client(ctl, "device_list", params, as_json, print_list);
  if (table->parsed()) return client(ctl, "device_table", params, as_json, print_table);
  if (status->parsed()) return client(ctl, "device_status", params, as_json, print_status);
  if (dirty->parsed()) {
    json p = {{"device", device}, {"name", map}};
    auto print_map = [](const json& r) {
      if (!r.value("consistent", true))
        fmt::print(stderr, "strata: warning: the map is INCONSISTENT (see `strata dirty status`): copy everything\n");
      for (const auto& e : r["extents"]) fmt::print("{} {}\n", e[0].get<uint64_t>(), e[1].get<uint64_t>());
    };
    if (d_list->parsed() && offline) {
      const std::string server = ctl.empty() ? strata::control::default_control_path() : ctl;
      std::string dir = !state_dir.empty()                ? state_dir
                        : std::getenv("STRATA_STATE_DIR") ? std::getenv("STRATA_STATE_DIR")
                                                          : strata::daemon::default_state_dir(server);
      std::string path = dir + "/" + (device.empty() ? "_default" : device) + "/" + map + ".dmap";
      bool consistent = false;
      std::string why;
      auto f = strata::MapFile::open(path, /*read_only=*/true, consistent, why);
      if (!f) {
        fmt::print(stderr, "strata: {}\n", f.error().message);
        return 1;
      }
      auto bits = (*f)->slot((*f)->header().active_slot);
      // Offline, a map still marked in use from this boot is either held by a
      // running server or left by one that was killed: both are complete.
      json r = {{"granularity", bits->granularity()}, {"consistent", consistent}, {"extents", json::array()}};
      uint64_t bytes = 0;
      for (const auto& [o, l] : bits->ranges()) {
        r["extents"].push_back({o, l});
        bytes += l;
      }
      r["dirty_bytes"] = bytes;
      if (!why.empty()) r["note"] = why;
      if (as_json)
        fmt::print("{}\n", r.dump(2));
      else
        print_map(r);
      return 0;
    }
    if (d_start->parsed()) {
      p["granularity"] = granularity;
      p["full"] = full_map;
      return client(ctl, "dirty_start", p, as_json, [](const json& r) {
        fmt::print("started map '{}' on '{}' ({} byte blocks)\n", r["name"].get<std::string>(),
                   r["device"].get<std::string>(), r["granularity"].get<uint64_t>());
      });
    }
    if (d_stop->parsed()) return client(ctl, "dirty_stop", p, as_json, [](const json&) {});
    if (d_clear->parsed()) return client(ctl, "dirty_clear", p, as_json, [](const json&) {});
    if (d_list->parsed()) return client(ctl, "dirty_list", p, as_json, print_map);
    if (d_ckpt->parsed()) return client(ctl, "dirty_checkpoint", p, as_json, print_map);
    json sp = json::object();
    if (!device.empty()) sp["device"] = device;
    return client(ctl, "dirty_status", sp, as_json, [](const json& r) {
      for (const auto& m : r)
        fmt::print("{:<16} {:<16} {:>8} B blocks {:>12} dirty  {}\n", m["device"].get<std::string>(),
                   m["name"].get<std::string>(), m["granularity"].get<uint64_t>(),
                   human_size(m["dirty_bytes"].get<uint64_t>()),
                   m["consistent"].get<bool>() ? "consistent" : "INCONSISTENT");
    });
  }
  if (sync->parsed()) {
    json p = {{"device", device}, {"map", map},        {"to", to},
              {"final", final_pass}, {"move", move_pass}, {"max_rounds", max_rounds}};
    if (detach) return start_detached(ctl, "device_sync", p);
    auto r = call_with_progress(ctl, "device_sync", p, "");
    if (!r) {
      fmt::print(stderr, "strata: {}\n", r.error().message);
      return 1;
    }
    if (as_json)
      fmt::print("{}\n", r->dump(2));
    else
      fmt::print("synced {} in {} round(s), {} ms{}; {} still dirty{}\n",
                 human_size((*r)["copied_bytes"].get<uint64_t>()), (*r)["rounds"].get<int>(),
                 (*r)["milliseconds"].get<int64_t>(), (*r)["converged"].get<bool>() ? ", converged" : ", NOT converged",
                 human_size((*r)["dirty_bytes_left"].get<uint64_t>()),
                 (*r).value("moved", false)
                     ? fmt::format("; moved (writes held {:.1f} ms): clients reconnect to the replica",
                                   (*r).value("held_us", uint64_t{0}) / 1000.0)
                     : std::string());
    // Not converged: blocks are still dirty. --json callers read "converged".
    return !as_json && !(*r)["converged"].get<bool>() ? 2 : 0;
  }
  if (layer->parsed()) {
    if (l_create->parsed()) {
      std::unique_ptr<strata::LayerFile> parent;
      if (!lparent.empty()) {
        auto p = open_layer_to_read(lparent);
        if (!p) {
          fmt::print(stderr, "strata: {}\n", p.error().message);
          return 1;
        }
        parent = std::move(*p);
      }
      auto size = lsize.empty() ? strata::Result<uint64_t>(parent ? parent->header().size : 0)
                                : strata::parse_size(lsize);
      if (lchunk.empty()) lchunk = parent ? std::to_string(parent->header().chunk_size) : "4096";
      auto chunk = strata::parse_size(lchunk);
      if (!size || !chunk || *size == 0) {
        fmt::print(stderr, "strata: layer create: give --size (or --parent); bad size or chunk size\n");
        return 1;
      }
      auto l = strata::LayerFile::create(lpath, *size, static_cast<uint32_t>(*chunk), parent.get());
      if (!l) {
        fmt::print(stderr, "strata: {}\n", l.error().message);
        return 1;
      }
      if (as_json)
        fmt::print("{}\n", json{{"path", lpath},
                                {"uuid", strata::uuid_string((*l)->header().uuid)},
                                {"size", *size},
                                {"chunk_size", *chunk},
                                {"parent_path", (*l)->header().parent_path}}
                               .dump(2));
      else
        fmt::print("{}: layer {} ({} bytes, {} byte chunks{})\n", lpath, strata::uuid_string((*l)->header().uuid),
                   *size, *chunk, parent ? ", parent " + (*l)->header().parent_path : std::string(", over the base"));
      return 0;
    }
    if (l_info->parsed()) {
      auto l = open_layer_to_read(lpath);
      if (!l) {
        fmt::print(stderr, "strata: {}\n", l.error().message);
        return 1;
      }
      const auto& h = (*l)->header();
      auto bits = (*l)->read_bitmap();
      if (!bits) {  // never "0 chunks" for a bitmap that cannot be read
        fmt::print(stderr, "strata: {}\n", bits.error().message);
        return 1;
      }
      uint64_t present = 0, zero = 0;
      if (bits)
        for (uint8_t s : *bits) {
          present += s == strata::kPresent;
          zero += s == strata::kZero;
        }
      json j = {{"path", lpath}, {"uuid", strata::uuid_string(h.uuid)}, {"size", h.size},
                {"chunk_size", h.chunk_size}, {"chunks", (*l)->chunks()}, {"present_chunks", present},
                {"zero_chunks", zero}, {"read_only", (h.flags & strata::LayerFile::kFlagReadOnly) != 0},
                {"in_use", (h.flags & strata::LayerFile::kFlagInUse) != 0}, {"version", h.version},
                {"parent_path", h.parent_path}, {"parent_uuid", h.parent_path.empty() ? "" : strata::uuid_string(h.parent_uuid)}};
      if (as_json)
        fmt::print("{}\n", j.dump(2));
      else
        for (const auto& [k, v] : j.items()) fmt::print("{:<15} {}\n", k, v.is_string() ? v.get<std::string>() : v.dump());
      return 0;
    }
    auto problems = strata::LayerFile::check(lpath);
    if (as_json) {
      // {path, ok, problems, repaired, remaining}: ok is whether it is sound now.
      json j = {{"path", lpath}, {"problems", problems}, {"repaired", json::array()}, {"remaining", problems}};
      if (!problems.empty() && repair) {
        auto fixed = strata::LayerFile::repair(lpath);
        if (!fixed) {
          fmt::print(stderr, "strata: {}\n", fixed.error().message);
          return 1;
        }
        j["repaired"] = *fixed;
        j["remaining"] = strata::LayerFile::check(lpath);
      }
      j["ok"] = j["remaining"].empty();
      fmt::print("{}\n", j.dump(2));
      return j["ok"].get<bool>() ? 0 : 1;
    }
    for (const auto& p : problems) fmt::print("{}\n", p);
    if (problems.empty()) {
      fmt::print("{}: ok\n", lpath);
      return 0;
    }
    if (!repair) return 1;
    auto fixed = strata::LayerFile::repair(lpath);
    if (!fixed) {
      fmt::print(stderr, "strata: {}\n", fixed.error().message);
      return 1;
    }
    for (const auto& f : *fixed) fmt::print("repaired: {}\n", f);
    auto left = strata::LayerFile::check(lpath);
    for (const auto& p : left) fmt::print("still: {}\n", p);
    if (left.empty()) {
      fmt::print("{}: ok after repair\n", lpath);
      return 0;
    }
    fmt::print(stderr, "strata: --repair fixes only a checksum over consistent fields, bits past the end and "
                       "invalid chunk states; the problems left need the layer's owner\n");
    return 1;
  }
  if (snap->parsed())
    return client(ctl, "device_snapshot", json{{"device", device}}, as_json, [](const json& r) {
      for (const auto& s : r)
        fmt::print("snapshot {} (writes held {} us; {} us in all)\n", s["snapshot"].get<std::string>(),
                   s["pause_us"].get<int64_t>(), s.value("total_us", int64_t{0}));
    });
  if (merge->parsed()) {
    json mp{{"device", device}};
    if (!merge_layer.empty()) mp["layer"] = std::filesystem::absolute(merge_layer).string();
    if (detach) return start_detached(ctl, "device_merge", mp);
    auto r = call_with_progress(ctl, "device_merge", mp, "merge");
    if (!r) {
      fmt::print(stderr, "strata: {}\n", r.error().message);
      return 1;
    }
    if (as_json)
      fmt::print("{}\n", r->dump(2));
    else
      fmt::print("merged {} chunks in {} ms; {} layer(s) now\n", (*r)["chunks_copied"].get<uint64_t>(),
                 (*r)["milliseconds"].get<int64_t>(), (*r)["layers"].size());
    return 0;
  }
  if (flat->parsed()) {
    if (!flat_tables.empty() && !flat_rate.empty()) {
      fmt::print(stderr, "strata: flatten: --rate paces an online flatten; offline (--table) has no clients to spare\n");
      return 2;
    }
    if (!flat_tables.empty()) return flatten_offline(flat_tables, device, to, as_json);
    json fp = {{"device", device}, {"to", to}};
    if (!flat_rate.empty()) {
      auto rate = strata::parse_size(flat_rate);
      if (!rate || *rate == 0) {
        fmt::print(stderr, "strata: flatten: --rate {}: a size per second above 0, as 256M\n",
                   strata::escape_controls(flat_rate));
        return 2;
      }
      fp["rate"] = *rate;
    }
    if (detach) return start_detached(ctl, "device_flatten", fp);
    auto r = call_with_progress(ctl, "device_flatten", fp, "flatten");
    if (!r) {
      fmt::print(stderr, "strata: {}\n", r.error().message);
      return 1;
    }
    fmt::print("{}\n", as_json ? r->dump(2) : fmt::format("flattened {} bytes into {}", (*r)["bytes"].get<uint64_t>(), to));
    return 0;
  }
  if (fusecmd->parsed()) {
    json p = {{"mountpoint", mountpoint}};
    if (f_start->parsed())
      return client(ctl, "export_fuse_start", p, as_json,
                    [](const json& r) { fmt::print("{}\n", r["mountpoint"].get<std::string>()); });
    if (f_stop->parsed()) return client(ctl, "export_fuse_stop", p, as_json, [](const json&) {});
    return client(ctl, "export_fuse_list", p, as_json, [](const json& r) {
      // One mountpoint per line (the transport and request counts: --json).
      for (const auto& e : r) fmt::print("{}\n", e["mountpoint"].get<std::string>());
    });
  }
  if (server->parsed())
    return client(ctl, "server_status", params, as_json, [](const json& r) { fmt::print("{}\n", r.dump(2)); });
  return 1;
}
