#include "core/log.h"

#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace strata {
namespace {
std::atomic<LogLevel> g_level{LogLevel::kInfo};
constexpr const char* kNames[] = {"debug", "info", "warn", "error"};
}  // namespace

void set_log_level(LogLevel level) { g_level.store(level); }
LogLevel log_level() { return g_level.load(std::memory_order_relaxed); }

namespace {
std::string escape(std::string_view s, bool backslash) {
  std::string out;
  out.reserve(s.size());
  auto hex = [&out](unsigned char c) { out += fmt::format("\\x{:02x}", c); };
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    unsigned char c = p[i];
    if (c < 0x80) {
      if (c == '\n') {
        out += "\\n";
      } else if (c == '\t') {
        out += "\\t";
      } else if (c == '\\' && backslash) {
        out += "\\\\";
      } else if (c < 0x20 || c == 0x7f) {
        hex(c);
      } else {
        out += static_cast<char>(c);
      }
      ++i;
      continue;
    }
    // A UTF-8 sequence: well formed (no overlong form, no surrogate, at most
    // U+10FFFF) and not a C1 control, or each of its bytes escaped.
    std::size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
    uint32_t cp = len == 4 ? c & 0x07 : len == 3 ? c & 0x0f : c & 0x1f;
    bool ok = len != 0 && i + len <= n && c <= 0xf4;
    for (std::size_t k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xc0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if (ok) {
      static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= kMin[len] && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff) && !(cp >= 0x80 && cp <= 0x9f);
    }
    if (ok) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      hex(c);
      ++i;
    }
  }
  return out;
}
}  // namespace

std::string log_escape(std::string_view s) { return escape(s, true); }
std::string escape_controls(std::string_view s) { return escape(s, false); }

LogStyle detect_log_style() {
  const char* js = std::getenv("JOURNAL_STREAM");
  if (!js || !*js) return LogStyle::kPlain;
  unsigned long long dev = 0, ino = 0;
  char tail = 0;
  if (std::sscanf(js, "%llu:%llu%c", &dev, &ino, &tail) != 2) return LogStyle::kPlain;
  struct stat st;
  if (::fstat(STDERR_FILENO, &st) < 0) return LogStyle::kPlain;
  // Inherited by a process whose stderr was redirected since: not the journal.
  return static_cast<unsigned long long>(st.st_dev) == dev && static_cast<unsigned long long>(st.st_ino) == ino
             ? LogStyle::kJournal
             : LogStyle::kPlain;
}

std::string format_log_line(LogStyle style, LogLevel level, std::string_view text, int64_t now_ms) {
  if (style == LogStyle::kJournal) {
    static constexpr int kPriority[] = {7, 6, 4, 3};  // LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR
    return fmt::format("<{}>{}\n", kPriority[static_cast<int>(level)], log_escape(text));
  }
  time_t secs = static_cast<time_t>(now_ms / 1000);
  struct tm tm;
  ::gmtime_r(&secs, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z strata: {}: {}\n", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, now_ms % 1000, kNames[static_cast<int>(level)],
                     log_escape(text));
}

void log_line(LogLevel level, std::string_view text) {
  static const LogStyle style = detect_log_style();
  timespec ts{};
  if (style == LogStyle::kPlain) ::clock_gettime(CLOCK_REALTIME, &ts);
  std::string line = format_log_line(style, level, text, int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1000000);
  ssize_t r = ::write(STDERR_FILENO, line.data(), line.size());
  (void)r;
}

void check_failed(const char* cond, const char* file, int line) {
  log_line(LogLevel::kError, fmt::format("CHECK failed: {} at {}:{}", cond, file, line));
  std::abort();
}

}  // namespace strata
