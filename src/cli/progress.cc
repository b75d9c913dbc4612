#include "cli/progress.h"

#include <fmt/core.h>

#include <algorithm>
#include <cstdio>

namespace strata::cli {

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

void Progress::update(const nlohmann::json& pr) {
  if (!pr.is_object() || !pr.contains("copied_bytes")) return;  // the server's keep-alive line
  auto now = std::chrono::steady_clock::now();
  int round = pr.value("round", 0);
  done_ = pr.value("copied_bytes", uint64_t{0});
  total_ = std::max<uint64_t>(1, pr.value("total_bytes", uint64_t{1}));
  chunks_ = pr.value("unit", std::string()) == "chunks";
  if (!seen_ || round != round_ || done_ < first_done_) {  // a new round starts its own rate
    first_ = now;
    first_done_ = done_;
  }
  seen_ = true;
  round_ = round;
  if (tty_ || !printed_ || now - last_print_ >= kLineInterval) print(now);
}

void Progress::print(std::chrono::steady_clock::time_point now) {
  auto amount = [&](uint64_t v) { return chunks_ ? std::to_string(v) : human_size(v); };
  std::string what = label_.empty() ? fmt::format("round {}", round_) : label_;
  const uint64_t done = std::min(done_, total_);
  int width = 30, fill = static_cast<int>(width * done / total_);
  double secs = std::chrono::duration<double>(now - first_).count();
  std::string rate, eta;
  if (secs >= 0.5 && done_ > first_done_) {
    double r = static_cast<double>(done_ - first_done_) / secs;
    rate = chunks_ ? fmt::format(" {:.0f} chunks/s", r) : fmt::format(" {}/s", human_size(static_cast<uint64_t>(r)));
    if (done < total_) {
      auto left = static_cast<uint64_t>(static_cast<double>(total_ - done) / r);
      eta = fmt::format(" ETA {}:{:02}:{:02}", left / 3600, left / 60 % 60, left % 60);
    }
  }
  fmt::print(stderr, "{}{} [{}{}] {:>3}% {}/{}{}{}{}{}", tty_ ? "\r" : "", what, std::string(fill, '#'),
             std::string(width - fill, '.'), 100 * done / total_, amount(done), amount(total_),
             chunks_ ? " chunks" : "", rate, eta, tty_ ? "\x1b[K" : "\n");
  std::fflush(stderr);
  printed_ = true;
  last_print_ = now;
  last_was_final_ = done == total_;
}

void Progress::finish(bool ok) {
  if (ok && seen_ && !last_was_final_) {
    done_ = total_;
    print(std::chrono::steady_clock::now());
  }
  if (tty_ && printed_) fmt::print(stderr, "\n");
}

}  // namespace strata::cli
