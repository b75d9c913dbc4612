// strata: the command line. `serve` runs the server in the foreground; the
// other commands are thin clients of a running server's control socket.
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli/serve.h"
#include "control/client.h"
#include "targets/registry.h"

namespace {

using json = nlohmann::json;

std::string human_size(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", n) : fmt::format("{:.1f} {}", v, units[u]);
}

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
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"strata: a userspace block-device engine (device-mapper in user space, exported over NBD)"};
  app.require_subcommand(1);

  strata::cli::ServeOptions so;
  auto* serve = app.add_subcommand("serve", "Serve devices over NBD in the foreground");
  serve->add_option("--table", so.tables, "Table file: dmsetup lines, several devices under [name] headers")
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
  serve->add_option("--handshake-timeout", so.handshake_timeout, "Seconds a client has to finish the handshake")
      ->default_val(10);
  serve->add_option("--pidfile", so.pidfile, "Write the server's pid here once it is ready");
  serve->add_flag("--verbose,-v", so.verbose, "Debug logging");
  serve->add_option("--tls", so.tls, "TLS: off, on (offered), require (plaintext refused)")
      ->check(CLI::IsMember({"off", "on", "require"}))
      ->default_val("off");
  serve->add_option("--tls-certificates", so.tls_certificates,
                    "Directory with ca-cert.pem, server-cert.pem, server-key.pem")
      ->check(CLI::ExistingDirectory);
  serve->add_option("--tls-psk", so.tls_psk, "Pre-shared keys file (psktool's username:hexkey lines)")
      ->check(CLI::ExistingFile);
  serve->add_flag("--tls-verify-peer", so.tls_verify_peer, "Require client certificates signed by the CA");
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

  CLI11_PARSE(app, argc, argv);

  json params = json::object();
  if (!name.empty()) params["name"] = name;
  if (serve->parsed()) {
    if (help_targets) {
      for (const auto& t : strata::target_types()) fmt::print("{}\n\n", t.help);
      return 0;
    }
    return strata::cli::serve(so);
  }
  if (list->parsed()) return client(ctl, "device_list", params, as_json, print_list);
  if (table->parsed()) return client(ctl, "device_table", params, as_json, print_table);
  if (status->parsed()) return client(ctl, "device_status", params, as_json, print_status);
  if (server->parsed())
    return client(ctl, "server_status", params, as_json, [](const json& r) { fmt::print("{}\n", r.dump(2)); });
  return 1;
}
