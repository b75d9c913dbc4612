#include "core/params.h"

#include <gtest/gtest.h>

namespace strata {
namespace {

TEST(Params, PositionalOptionsAndFlags) {
  Params p({"disk.img", "4096", "direct=on", "ro"});
  EXPECT_EQ(*p.arg(0, "path"), "disk.img");
  EXPECT_EQ(*p.arg_u64(1, "offset"), 4096u);
  EXPECT_TRUE(*p.option_bool("direct", false));
  EXPECT_TRUE(p.flag("ro"));
  EXPECT_TRUE(p.finish(2));
}

TEST(Params, UnknownOptionIsAnError) {
  Params p({"disk.img", "0", "dirct=on"});
  (void)p.arg(0, "path");
  (void)p.arg_u64(1, "offset");
  auto r = p.finish(2);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("unknown option 'dirct'"), std::string::npos);
}

TEST(Params, ExtraPositionalIsAnError) {
  Params p({"a", "0", "extra"});
  (void)p.arg(0, "path");
  (void)p.arg_u64(1, "offset");
  auto r = p.finish(2);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("unexpected 'extra'"), std::string::npos);
}

TEST(Params, MissingAndBadNumbersNameTheField) {
  Params p({"disk.img", "-5"});
  auto r = p.arg_u64(1, "offset");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("argument 2 (offset)"), std::string::npos);
  auto m = p.arg(2, "size");
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().message.find("argument 3 (size) is missing"), std::string::npos);
}

TEST(Params, BadBool) {
  Params p({"direct=maybe"});
  auto r = p.option_bool("direct", false);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("'maybe' is not on or off"), std::string::npos);
}

TEST(ParseSize, Suffixes) {
  EXPECT_EQ(*parse_size("512"), 512u);
  EXPECT_EQ(*parse_size("4k"), 4096u);
  EXPECT_EQ(*parse_size("1G"), 1ull << 30);
  EXPECT_FALSE(parse_size("1X"));
  EXPECT_FALSE(parse_size(""));
  EXPECT_FALSE(parse_size("99999999999999999999"));
  EXPECT_FALSE(parse_u64("12a"));
  EXPECT_FALSE(parse_u64("+1"));
}

}  // namespace
}  // namespace strata

namespace strata {
namespace {

TEST(ParamsHostile, OptionGivenTwiceIsRefused) {
  Params p({"disk.img", "0", "direct=on", "direct=off"});
  auto f = p.finish(2);
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().message, "option 'direct' is given twice");
  Params q({"disk.img", "direct=on", "ro=on"});
  EXPECT_TRUE(q.arg(0, "path"));
}

TEST(ParamsHostile, NulInAnArgumentIsRefusedBeforeUse) {
  Params p({std::string("disk.img\0.evil", 14), "0"});
  auto a = p.arg(0, "path");
  ASSERT_FALSE(a) << "a path with a NUL was handed out: " << *a;
  EXPECT_EQ(a.error().message, "argument 1 'disk.img\\x00.evil' contains a NUL byte");
  EXPECT_FALSE(p.finish(2));
}

TEST(ParamsHostile, ControlBytesAreEscapedInMessages) {
  Params p({"\x1b[31mred=1"});
  auto f = p.finish(0);
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().message, "unknown option '\\x1b[31mred'");
  auto b = parse_bool("on\nstrata: error: forged");
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().message.find('\n'), std::string::npos) << b.error().message;
}

}  // namespace
}  // namespace strata
