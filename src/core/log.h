// Minimal leveled logging to stderr, formatted with fmt. Thread-safe: each
// line is written with one write(2). The level is process-wide.
#pragma once

#include <fmt/core.h>

#include <cstdint>
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
// log_escape() that keeps backslashes as they are: control bytes and bytes
// that are not valid UTF-8 escaped, so that text whose words were already
// escaped passes unchanged (idempotent). The last pass over a message that
// may hold raw client strings (control error replies).
std::string escape_controls(std::string_view s);

void set_log_level(LogLevel level);
LogLevel log_level();
void log_line(LogLevel level, std::string_view text);

// How a line is written. kJournal: stderr is the journal (systemd sets
// JOURNAL_STREAM to the device and inode of the stream it gave us), so each
// line starts with its sd-daemon priority (<3> error, <4> warning, <6> info,
// <7> debug) and has no timestamp (the journal keeps its own). kPlain:
// "2026-12-06T19:30:00.123Z strata: warn: text" (UTC).
enum class LogStyle { kPlain, kJournal };
// Decided from the environment and stderr; log_line() asks once.
LogStyle detect_log_style();
// The line log_line() writes (escaped, with its newline); `now_ms`: Unix
// time in milliseconds, for kPlain.
std::string format_log_line(LogStyle style, LogLevel level, std::string_view text, int64_t now_ms);

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
