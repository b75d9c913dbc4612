#include "core/log.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

namespace strata {
namespace {

TEST(LogEscape, PlainTextAndUtf8PassThrough) {
  EXPECT_EQ(log_escape("export 'disk-1' at /srv/a b.img"), "export 'disk-1' at /srv/a b.img");
  EXPECT_EQ(log_escape("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
}

TEST(LogEscape, ControlBytesCannotForgeALine) {
  EXPECT_EQ(log_escape("a\nstrata: error: forged"), "a\\nstrata: error: forged");
  EXPECT_EQ(log_escape("tab\there"), "tab\\there");
  EXPECT_EQ(log_escape(std::string_view("nul\0x", 5)), "nul\\x00x");
  EXPECT_EQ(log_escape("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
  EXPECT_EQ(log_escape("cr\rdel\x7f"), "cr\\x0ddel\\x7f");
  EXPECT_EQ(log_escape("back\\slash"), "back\\\\slash");
}

TEST(LogEscape, InvalidUtf8IsEscapedBytewise) {
  EXPECT_EQ(log_escape("\xff\xfe"), "\\xff\\xfe");
  EXPECT_EQ(log_escape("\xc3"), "\\xc3");                  // truncated sequence
  EXPECT_EQ(log_escape("\xc0\xaf"), "\\xc0\\xaf");         // overlong '/'
  EXPECT_EQ(log_escape("\xed\xa0\x80"), "\\xed\\xa0\\x80");  // a surrogate
  EXPECT_EQ(log_escape("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80");  // past U+10FFFF
  EXPECT_EQ(log_escape("\xc2\x9b"), "\\xc2\\x9b");         // C1 control (CSI)
  EXPECT_EQ(log_escape("ok\x80ok"), "ok\\x80ok");          // a stray continuation byte
}

TEST(EscapeControls, EscapesControlsAndBadUtf8KeepsBackslashes) {
  EXPECT_EQ(escape_controls("no device named 'a\nstrata: error: forged'"),
            "no device named 'a\\nstrata: error: forged'");
  EXPECT_EQ(escape_controls(std::string_view("nul\0\x1b[2J\xff", 9)), "nul\\x00\\x1b[2J\\xff");
  EXPECT_EQ(escape_controls("C:\\dir"), "C:\\dir");
  // Text already escaped (by log_escape) passes unchanged.
  const std::string once = log_escape("x\n\x1b\\y\xc3");
  EXPECT_EQ(escape_controls(once), once);
}

// Sets JOURNAL_STREAM for one test and restores it after.
class JournalStreamEnv {
 public:
  explicit JournalStreamEnv(const char* v) {
    if (const char* old = std::getenv("JOURNAL_STREAM")) old_ = old, had_ = true;
    if (v)
      ::setenv("JOURNAL_STREAM", v, 1);
    else
      ::unsetenv("JOURNAL_STREAM");
  }
  ~JournalStreamEnv() {
    if (had_)
      ::setenv("JOURNAL_STREAM", old_.c_str(), 1);
    else
      ::unsetenv("JOURNAL_STREAM");
  }

 private:
  std::string old_;
  bool had_ = false;
};

std::string stderr_dev_ino(long long ino_delta = 0) {
  struct stat st;
  EXPECT_EQ(::fstat(STDERR_FILENO, &st), 0);
  return fmt::format("{}:{}", static_cast<unsigned long long>(st.st_dev),
                     static_cast<long long>(st.st_ino) + ino_delta);
}

TEST(LogStyle, JournalOnlyWhenJournalStreamIsStderr) {
  {
    JournalStreamEnv e(nullptr);
    EXPECT_EQ(detect_log_style(), LogStyle::kPlain);
  }
  {
    JournalStreamEnv e(stderr_dev_ino().c_str());
    EXPECT_EQ(detect_log_style(), LogStyle::kJournal);
  }
  {
    // Another stream (stderr redirected after systemd set the variable).
    JournalStreamEnv e(stderr_dev_ino(1).c_str());
    EXPECT_EQ(detect_log_style(), LogStyle::kPlain);
  }
  for (const char* bad : {"", "garbage", "1:2:3", "12"}) {
    JournalStreamEnv e(bad);
    EXPECT_EQ(detect_log_style(), LogStyle::kPlain) << bad;
  }
}

TEST(LogStyle, JournalLinesCarrySdDaemonPrioritiesAndNoTimestamp) {
  EXPECT_EQ(format_log_line(LogStyle::kJournal, LogLevel::kError, "disk: EIO", 0), "<3>disk: EIO\n");
  EXPECT_EQ(format_log_line(LogStyle::kJournal, LogLevel::kWarn, "w", 0), "<4>w\n");
  EXPECT_EQ(format_log_line(LogStyle::kJournal, LogLevel::kInfo, "i", 0), "<6>i\n");
  EXPECT_EQ(format_log_line(LogStyle::kJournal, LogLevel::kDebug, "d", 0), "<7>d\n");
  // Escaped as ever: a client cannot start a line of its own, with its own priority.
  EXPECT_EQ(format_log_line(LogStyle::kJournal, LogLevel::kInfo, "name\n<0>forged", 0), "<6>name\\n<0>forged\n");
}

TEST(LogStyle, PlainLinesCarryAUtcTimestamp) {
  // 2026-12-06T19:30:05.042Z
  EXPECT_EQ(format_log_line(LogStyle::kPlain, LogLevel::kWarn, "x\ty", 1796585405042),
            "2026-12-06T19:30:05.042Z strata: warn: x\\ty\n");
  EXPECT_EQ(format_log_line(LogStyle::kPlain, LogLevel::kError, "e", 0), "1970-01-01T00:00:00.000Z strata: error: e\n");
}

}  // namespace
}  // namespace strata
