#include "core/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace strata {
namespace {
std::atomic<LogLevel> g_level{LogLevel::kInfo};
constexpr const char* kNames[] = {"debug", "info", "warn", "error"};
}  // namespace

void set_log_level(LogLevel level) { g_level.store(level); }
LogLevel log_level() { return g_level.load(std::memory_order_relaxed); }

void log_line(LogLevel level, std::string_view text) {
  std::string line = fmt::format("strata: {}: {}\n", kNames[static_cast<int>(level)], text);
  ssize_t r = ::write(STDERR_FILENO, line.data(), line.size());
  (void)r;
}

void check_failed(const char* cond, const char* file, int line) {
  log_line(LogLevel::kError, fmt::format("CHECK failed: {} at {}:{}", cond, file, line));
  std::abort();
}

}  // namespace strata
