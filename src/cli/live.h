// The CLI verbs for a running server's devices and jobs: create, reload,
// suspend, resume, remove, dump, jobs, job wait/cancel (thin clients of the
// control socket; docs/control.md).
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace strata::cli {

struct LiveCommands {
  CLI::App *create = nullptr, *reload = nullptr, *suspend = nullptr, *resume = nullptr, *remove = nullptr,
           *dump = nullptr, *jobs = nullptr, *job = nullptr, *job_wait = nullptr, *job_cancel = nullptr;
  std::string ctl, name, table;
  bool read_only = false, force = false, noflush = false, sync = false, as_json = false;
  uint64_t id = 0;
};

// Adds the subcommands to `app`.
void add_live_commands(CLI::App& app, LiveCommands& l);
// Runs the one parsed, if one of them was: its exit status.
std::optional<int> run_live_commands(LiveCommands& l);

}  // namespace strata::cli
