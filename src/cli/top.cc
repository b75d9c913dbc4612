#include "cli/top.h"

#include <poll.h>
#include <signal.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <map>

#include <fmt/core.h>

#include "cli/progress.h"
#include "control/client.h"

namespace strata::cli {
namespace {

using json = nlohmann::json;

// The counters of one device at one time.
struct Sample {
  json io;
  std::chrono::steady_clock::time_point at;
};

uint64_t get(const json& io, const char* group, const char* op) {
  if (!io.is_object() || !io.contains(group) || !io[group].contains(op)) return 0;
  return io[group][op].get<uint64_t>();
}

// Mean latency in the interval, "-" without requests.
std::string latency(const json& now, const json& before, const char* op) {
  auto field = [](const json& io, const char* o, const char* f) -> uint64_t {
    if (!io.is_object() || !io.contains("latency") || !io["latency"].contains(o)) return 0;
    return io["latency"][o].value(f, uint64_t{0});
  };
  uint64_t n = field(now, op, "count") - field(before, op, "count");
  if (n == 0) return "-";
  double us = static_cast<double>(field(now, op, "sum_us") - field(before, op, "sum_us")) / static_cast<double>(n);
  return us >= 10000 ? fmt::format("{:.1f}ms", us / 1000) : fmt::format("{:.0f}us", us);
}

// The terminal in raw mode for single keys while top runs; restored after.
class RawTerminal {
 public:
  RawTerminal() {
    if (::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    active_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
  }
  ~RawTerminal() {
    if (active_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;
  bool active() const { return active_; }

 private:
  termios saved_{};
  bool active_ = false;
};

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

}  // namespace

void add_top_command(CLI::App& app, TopOptions& o) {
  o.cmd = app.add_subcommand("top", "A live view of the devices (IOPS, MiB/s, latency, in flight) and jobs");
  o.cmd->add_option("--control", o.ctl, "Control socket of the server");
  o.cmd->add_option("--interval", o.interval, "Seconds between frames")->default_val(1.0)->check(CLI::Range(0.1, 3600.0));
  o.cmd->add_option("--iterations", o.iterations, "Frames to show, then exit (0: until q or Ctrl-C)")->default_val(0);
}

int run_top(const TopOptions& o) {
  const std::string path = o.ctl.empty() ? control::default_control_path() : o.ctl;
  const bool tty = ::isatty(STDOUT_FILENO);
  RawTerminal term;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  std::map<std::string, Sample> before;
  for (unsigned frame = 1; !g_stop; ++frame) {
    auto devs = control::call(path, "device_status", json::object());
    if (!devs) {
      fmt::print(stderr, "strata: {}\n", devs.error().message);
      return 1;
    }
    auto jobs = control::call(path, "job_list", json::object());
    auto now = std::chrono::steady_clock::now();
    std::string out = tty ? "\x1b[H\x1b[2J" : "";
    out += fmt::format("strata top: {} device(s), every {:g} s{}\n\n", devs->size(), o.interval,
                       term.active() ? " (q quits)" : "");
    out += fmt::format("{:<20} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}\n", "DEVICE", "r/s", "w/s", "rMiB/s",
                       "wMiB/s", "r_lat", "w_lat", "f_lat", "inflight");
    std::map<std::string, Sample> next;
    for (const auto& d : *devs) {
      std::string name = d.value("name", std::string());
      json io = d.contains("io") ? d["io"] : json::object();
      auto it = before.find(name);
      double secs = it == before.end() ? 0 : std::chrono::duration<double>(now - it->second.at).count();
      const json& prev = it == before.end() ? io : it->second.io;
      auto rate = [&](const char* group, const char* op, double unit) {
        if (secs <= 0) return std::string("-");
        return fmt::format("{:.1f}", static_cast<double>(get(io, group, op) - get(prev, group, op)) / secs / unit);
      };
      out += fmt::format("{:<20} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}\n", name.empty() ? "\"\"" : name,
                         rate("ops", "read", 1), rate("ops", "write", 1), rate("bytes", "read", 1048576.0),
                         rate("bytes", "write", 1048576.0), latency(io, prev, "read"), latency(io, prev, "write"),
                         latency(io, prev, "flush"), io.value("in_flight", uint64_t{0}));
      next[name] = {io, now};
    }
    before = std::move(next);
    if (jobs && !jobs->empty()) {
      out += fmt::format("\n{:<6} {:<8} {:<20} {:<10} {:>6} {:>12} {:>10}\n", "JOB", "KIND", "DEVICE", "STATE", "DONE",
                         "RATE", "ETA");
      for (const auto& j : *jobs) {
        uint64_t done = j.value("done_bytes", uint64_t{0}), total = j.value("total_bytes", uint64_t{0});
        bool chunks = j.value("unit", std::string()) == "chunks";
        uint64_t r = j.value("rate_bytes_per_second", uint64_t{0});
        std::string eta = "-";
        if (j.contains("eta_seconds") && j["eta_seconds"].is_number()) {
          auto s = static_cast<uint64_t>(j["eta_seconds"].get<double>());
          eta = fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
        }
        out += fmt::format("{:<6} {:<8} {:<20} {:<10} {:>5}% {:>12} {:>10}\n", j.value("id", uint64_t{0}),
                           j.value("kind", std::string()), j.value("device", std::string()),
                           j.value("state", std::string()), total ? 100 * std::min(done, total) / total : 0,
                           chunks ? fmt::format("{}/s", r) : human_size(r) + "/s", eta);
      }
    }
    if (!tty) out += "\n";
    fmt::print("{}", out);
    std::fflush(stdout);
    if (o.iterations && frame >= o.iterations) break;
    // Wait for the next frame, or a q.
    auto until = now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                           std::chrono::duration<double>(o.interval));
    while (!g_stop && std::chrono::steady_clock::now() < until) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      pollfd p{STDIN_FILENO, POLLIN, 0};
      int n = ::poll(&p, term.active() ? 1 : 0, static_cast<int>(std::max<int64_t>(1, left.count())));
      if (n > 0 && (p.revents & POLLIN)) {
        char c = 0;
        if (::read(STDIN_FILENO, &c, 1) == 1 && (c == 'q' || c == 'Q')) return 0;
      }
    }
  }
  return 0;
}

}  // namespace strata::cli
