#include "core/log.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace strata
