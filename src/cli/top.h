// `strata top`: a live view of a running server's devices (IOPS, MiB/s,
// mean latency and requests in flight, from each device's request counters)
// and jobs (progress, rate, ETA), redrawn every --interval seconds. On a
// terminal it clears the screen and `q` quits; otherwise (a pipe, a log) it
// prints one frame after another, as `top -b` does.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace strata::cli {

struct TopOptions {
  CLI::App* cmd = nullptr;
  std::string ctl;
  double interval = 1.0;
  unsigned iterations = 0;  // 0: until q or Ctrl-C
};

void add_top_command(CLI::App& app, TopOptions& o);
int run_top(const TopOptions& o);

}  // namespace strata::cli
