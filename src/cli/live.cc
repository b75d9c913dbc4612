#include "cli/live.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <fmt/core.h>

#include "control/client.h"
#include "table/table.h"

namespace strata::cli {
namespace {

using json = nlohmann::json;

std::string path_of(const LiveCommands& l) {
  return l.ctl.empty() ? control::default_control_path() : l.ctl;
}

// The table text: a file, or stdin for "-".
std::optional<std::string> read_table(const std::string& f) {
  std::stringstream ss;
  if (f == "-") {
    ss << std::cin.rdbuf();
    return ss.str();
  }
  std::ifstream in(f);
  if (!in) {
    fmt::print(stderr, "strata: cannot read the table {}: {}\n", f, std::strerror(errno ? errno : ENOENT));
    return std::nullopt;
  }
  ss << in.rdbuf();
  return ss.str();
}

int call_print(const LiveCommands& l, const std::string& method, const json& params,
               const std::function<void(const json&)>& print) {
  auto r = control::call(path_of(l), method, params);
  if (!r) {
    fmt::print(stderr, "strata: {}\n", r.error().message);
    return 1;
  }
  if (l.as_json)
    fmt::print("{}\n", r->dump(2));
  else
    print(*r);
  return 0;
}

std::string human_rate(double bps) {
  const char* u[] = {"B/s", "KiB/s", "MiB/s", "GiB/s"};
  int i = 0;
  while (bps >= 1024 && i < 3) {
    bps /= 1024;
    ++i;
  }
  return fmt::format("{:.1f} {}", bps, u[i]);
}

void print_job(const json& j) {
  std::string eta = j["eta_seconds"].is_number() ? fmt::format("{:.0f}s", j["eta_seconds"].get<double>()) : "-";
  fmt::print("{:<5} {:<16} {:<8} {:<10} {:>14}/{:<14} {:>12} {:>6}  {}\n", j["id"].get<uint64_t>(),
             j["device"].get<std::string>(), j["kind"].get<std::string>(), j["state"].get<std::string>(),
             j["done_bytes"].get<uint64_t>(), j["total_bytes"].get<uint64_t>(),
             human_rate(static_cast<double>(j["rate_bytes_per_second"].get<uint64_t>())), eta,
             j.value("error", std::string()));
}

// The exit status a finished job stands for: 0 done (and, for a sync,
// converged), 1 failed, 2 a sync that did not converge, 3 cancelled.
int job_status(const json& j) {
  std::string st = j.value("state", std::string());
  if (st == "cancelled") return 3;
  if (st != "done") return 1;
  if (j.value("kind", std::string()) == "sync" && j.contains("result") && !j["result"].value("converged", true))
    return 2;
  return 0;
}

}  // namespace

void add_live_commands(CLI::App& app, LiveCommands& l) {
  l.create = app.add_subcommand("create", "Create a device on a running server from a table (segment lines)");
  l.create->add_option("name", l.name, "Device name")->required();
  l.create->add_option("--table", l.table, "Table file of the device's segments (relative paths from its directory), or - for stdin")->required();
  l.create->add_flag("--read-only", l.read_only, "Export it read-only");
  l.reload = app.add_subcommand("reload", "Load a new table for a device (inactive until `strata resume`)");
  l.reload->add_option("name", l.name, "Device name")->required();
  l.reload->add_option("--table", l.table, "Table file of the device's segments (relative paths from its directory), or - for stdin")->required();
  l.reload->add_flag("--force", l.force, "Allow a size change while NBD clients are connected");
  l.suspend = app.add_subcommand("suspend", "Hold a device's new requests and wait for those in flight");
  l.suspend->add_option("name", l.name, "Device name")->required();
  auto* nf = l.suspend->add_flag("--noflush", l.noflush, "Do not flush: hold new requests and wait for those in flight only");
  l.suspend->add_flag("--sync", l.sync,
                      "Flush again once requests are held: every acknowledged write is on stable storage when "
                      "suspend returns (for a copy or snapshot of the storage underneath)")
      ->excludes(nf);
  l.resume = app.add_subcommand("resume", "Swap in a reloaded table, if any, and release held requests");
  l.resume->add_option("name", l.name, "Device name")->required();
  l.remove = app.add_subcommand("remove", "Remove a device from a running server");
  l.remove->add_option("name", l.name, "Device name")->required();
  l.remove->add_flag("--force", l.force, "End its NBD connections (after their requests complete)");
  l.dump = app.add_subcommand("dump", "Print a table file that re-creates the server's devices");
  l.jobs = app.add_subcommand("jobs", "List the jobs (merge, flatten, sync) running and recently ended");
  l.job = app.add_subcommand("job", "Wait for or cancel a job");
  l.job->require_subcommand(1);
  l.job_wait = l.job->add_subcommand("wait", "Follow a job until it ends; exit status as the job's");
  l.job_cancel = l.job->add_subcommand("cancel", "Cancel a job");
  for (auto* c : {l.job_wait, l.job_cancel}) c->add_option("id", l.id, "Job id")->required();
  for (auto* c : {l.create, l.reload, l.suspend, l.resume, l.remove, l.dump, l.jobs, l.job_wait, l.job_cancel}) {
    c->add_option("--control", l.ctl, "Control socket of the server");
    c->add_flag("--json", l.as_json, "Print the raw JSON reply");
  }
}

std::optional<int> run_live_commands(LiveCommands& l) {
  if (l.create->parsed() || l.reload->parsed()) {
    auto text = read_table(l.table);
    if (!text) return 1;
    bool create = l.create->parsed();
    // The server opens the files, maybe from another working directory: it
    // takes the table's relative paths under the table file's directory
    // (stdin: ours).
    std::error_code ec;
    std::string dir = l.table == "-" ? std::filesystem::current_path(ec).string() : table_dir(l.table);
    json p = {{"name", l.name}, {"table", *text}};
    if (!dir.empty() && dir[0] == '/') p["base_dir"] = dir;
    if (create) p["read_only"] = l.read_only;
    if (!create) p["force"] = l.force;
    return call_print(l, create ? "device_create" : "device_reload", p, [&](const json& r) {
      if (create)
        fmt::print("created '{}' ({} bytes{})\n", l.name, r["size"].get<uint64_t>(),
                   r["read_only"].get<bool>() ? ", read-only" : "");
      else
        fmt::print("loaded a new table for '{}': `strata resume {}` swaps it in\n", l.name, l.name);
    });
  }
  if (l.suspend->parsed())
    return call_print(l, "device_suspend", {{"name", l.name}, {"noflush", l.noflush}, {"sync", l.sync}},
                      [](const json&) {});
  if (l.resume->parsed()) return call_print(l, "device_resume", {{"name", l.name}}, [](const json&) {});
  if (l.remove->parsed())
    return call_print(l, "device_remove", {{"name", l.name}, {"force", l.force}}, [](const json&) {});
  if (l.dump->parsed())
    return call_print(l, "device_dump", json::object(),
                      [](const json& r) { fmt::print("{}", r["table"].get<std::string>()); });
  if (l.jobs->parsed())
    return call_print(l, "job_list", json::object(), [](const json& r) {
      fmt::print("{:<5} {:<16} {:<8} {:<10} {:>29} {:>12} {:>6}  {}\n", "ID", "DEVICE", "KIND", "STATE",
                 "DONE/TOTAL BYTES", "RATE", "ETA", "ERROR");
      for (const auto& j : r) print_job(j);
    });
  if (l.job_cancel->parsed()) return call_print(l, "job_cancel", {{"id", l.id}}, [](const json&) {});
  if (l.job_wait->parsed()) {
    auto r = control::call(path_of(l), "job_wait", {{"id", l.id}});
    if (!r) {
      fmt::print(stderr, "strata: {}\n", r.error().message);
      return 1;
    }
    if (l.as_json)
      fmt::print("{}\n", r->dump(2));
    else
      print_job(*r);
    return job_status(*r);
  }
  return std::nullopt;
}

}  // namespace strata::cli
