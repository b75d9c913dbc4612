// The progress of a long request (sync, merge, flatten) on stderr, from the
// server's progress lines {copied_bytes, total_bytes, unit, round}: a bar
// redrawn in place on a terminal; otherwise (a log, a pipe, a CI job) one
// line at the start, then at most one every kLineInterval, and the last at
// 100% when the request succeeded. Each shows the rate and an ETA.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <string>

namespace strata::cli {

std::string human_size(uint64_t n);

class Progress {
 public:
  static constexpr std::chrono::seconds kLineInterval{5};
  // label: "flatten", "merge"; empty: "round N" from the lines.
  Progress(std::string label, bool tty) : label_(std::move(label)), tty_(tty) {}
  void update(const nlohmann::json& line);
  // Ends the display: the 100% line if ok and there was progress at all.
  void finish(bool ok);

 private:
  void print(std::chrono::steady_clock::time_point now);
  std::string label_;
  bool tty_;
  bool seen_ = false;
  bool chunks_ = false;
  int round_ = 0;
  uint64_t done_ = 0, total_ = 1, first_done_ = 0;
  std::chrono::steady_clock::time_point first_{}, last_print_{};
  bool printed_ = false, last_was_final_ = false;
};

}  // namespace strata::cli
