// Minimal leveled logging to stderr, formatted with fmt. Thread-safe: each
// line is written with one write(2). The level is process-wide.
#pragma once

#include <fmt/core.h>

#include <string>
#include <string_view>

namespace strata {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// A log line is one line of text: control bytes (newline, escape codes, NUL,
// DEL, C1), backslashes and bytes that are not valid UTF-8 are written as
// \n, \t, \\ or \xNN, so nothing a client or a file supplied (an export
// name, a path) can forge a line or drive a terminal. log_line() applies it
// to every line.
std::string log_escape(std::string_view s);

void set_log_level(LogLevel level);
LogLevel log_level();
void log_line(LogLevel level, std::string_view text);

template <typename... Args>
void log(LogLevel level, fmt::format_string<Args...> f, Args&&... args) {
  if (level < log_level()) return;
  log_line(level, fmt::format(f, std::forward<Args>(args)...));
}
#define LOG_DEBUG(...) ::strata::log(::strata::LogLevel::kDebug, __VA_ARGS__)
#define LOG_INFO(...) ::strata::log(::strata::LogLevel::kInfo, __VA_ARGS__)
#define LOG_WARN(...) ::strata::log(::strata::LogLevel::kWarn, __VA_ARGS__)
#define LOG_ERROR(...) ::strata::log(::strata::LogLevel::kError, __VA_ARGS__)

// A broken invariant is a programmer error: log and abort.
[[noreturn]] void check_failed(const char* cond, const char* file, int line);
#define CHECK(cond) \
  ((cond) ? (void)0 : ::strata::check_failed(#cond, __FILE__, __LINE__))

}  // namespace strata
