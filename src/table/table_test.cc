#include "table/table.h"

#include <gtest/gtest.h>

namespace strata {
namespace {

// The error for a one-line table, or "" if it parses.
std::string error_of(std::string_view text) {
  auto r = parse_config(text, "t.conf", "");
  return r ? "" : r.error().message;
}

void expect_error(std::string_view text, std::string_view want) {
  std::string e = error_of(text);
  EXPECT_NE(e.find(want), std::string::npos) << "table:\n" << text << "\nerror: " << e << "\nwanted: " << want;
}

TEST(TableParser, GoodTableWithCommentsAndDevices) {
  auto r = parse_config(
      "# a comment\n"
      "0 2048 file a.img 0   # trailing comment\n"
      "2048 100 zero\n"
      "\n"
      "[second ro]\n"
      "0 8 linear  \t 0 0\n",
      "t.conf", "first");
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].name, "first");
  ASSERT_EQ((*r)[0].segments.size(), 2u);
  EXPECT_EQ((*r)[0].segments[0].target, "file");
  EXPECT_EQ((*r)[0].segments[0].args, (std::vector<std::string>{"a.img", "0"}));
  EXPECT_EQ((*r)[0].segments[1].start_sector, 2048u);
  EXPECT_EQ((*r)[1].name, "second");
  EXPECT_TRUE((*r)[1].read_only);
  EXPECT_EQ((*r)[1].segments[0].line, 6);
}

TEST(TableParser, NulAndControlBytesInALine) {
  expect_error(std::string_view("0 8 file /tmp/a\0b 0\n", 21), "t.conf:1: the line contains a NUL byte");
  std::string e = error_of("0 8 \x1b]0;pwned\x07 0\n");
  EXPECT_NE(e.find("unknown target '\\x1b]0;pwned\\x07'"), std::string::npos) << e;
  EXPECT_EQ(e.find('\x1b'), std::string::npos) << e;
}

TEST(TableParser, EveryBadLineNamesLineFieldAndReason) {
  expect_error("x 10 zero\n", "t.conf:1: field 1 (start_sector): 'x' is not a non-negative integer");
  expect_error("-1 10 zero\n", "field 1 (start_sector)");
  expect_error("0\n", "t.conf:1: field 2 (num_sectors): missing");
  expect_error("0 ten zero\n", "field 2 (num_sectors): 'ten' is not a non-negative integer");
  expect_error("0 0 zero\n", "field 2 (num_sectors): a segment must hold at least one sector");
  expect_error("0 10\n", "t.conf:1: field 3 (target): missing");
  expect_error("0 10 nosuch\n", "field 3 (target): unknown target 'nosuch' (known: file, linear");
  expect_error("0 10 zero\n20 10 zero\n", "t.conf:2: field 1 (start_sector): segment at sector 20 leaves a gap");
  expect_error("0 10 zero\n5 10 zero\n", "t.conf:2: field 1 (start_sector): segment at sector 5 overlaps");
  expect_error("5 10 zero\n", "t.conf:1: field 1 (start_sector): segment at sector 5 leaves a gap");
  expect_error("0 18446744073709551615 zero\n", "segment end is too large");
  expect_error("0 99999999999999999999 zero\n", "field 2 (num_sectors): '99999999999999999999' is too large");
  expect_error("", "t.conf: no device defined");
  expect_error("# only a comment\n", "no device defined");
  expect_error("[a]\n[b]\n0 1 zero\n", "t.conf:1: device 'a' has no segments");
  expect_error("[a]\n0 1 zero\n[b]\n", "t.conf:3: device 'b' has no segments");
  expect_error("[a]\n0 1 zero\n[a]\n0 1 zero\n", "t.conf:3: device 'a' is defined twice");
  expect_error("[a b]\n0 1 zero\n", "unknown device option 'b'");
  expect_error("[]\n0 1 zero\n", "device header has no name");
  expect_error("[a/b]\n0 1 zero\n", "device name 'a/b' may only hold");
  expect_error("[a\n0 1 zero\n", "device header must look like [name]");
}

TEST(TableParser, SegmentsRestartAtZeroPerDevice) {
  EXPECT_EQ(error_of("[a]\n0 10 zero\n10 5 zero\n[b]\n0 3 zero\n"), "");
}

TEST(DeviceSet, BuildErrorsNameTheLineAndTarget) {
  auto specs = parse_config("0 8 zero\n8 8 file /nonexistent/x.img 0\n", "t.conf", "d");
  ASSERT_TRUE(specs);
  auto set = DeviceSet::build(*specs, "t.conf", false);
  ASSERT_FALSE(set);
  EXPECT_NE(set.error().message.find("t.conf:2: file: file /nonexistent/x.img: No such file or directory"),
            std::string::npos)
      << set.error().message;

  specs = parse_config("0 8 zero extra\n", "t.conf", "d");
  ASSERT_TRUE(specs);
  set = DeviceSet::build(*specs, "t.conf", false);
  ASSERT_FALSE(set);
  EXPECT_NE(set.error().message.find("t.conf:1: zero: argument 1: unexpected 'extra'"), std::string::npos)
      << set.error().message;

  specs = parse_config("[a]\n0 8 linear b 0\n[b]\n0 8 zero\n", "t.conf", "d");
  ASSERT_TRUE(specs);
  set = DeviceSet::build(*specs, "t.conf", false);
  ASSERT_FALSE(set);
  EXPECT_NE(set.error().message.find("no device named 'b' is defined before this line"), std::string::npos)
      << set.error().message;

  specs = parse_config("[b]\n0 8 zero\n[a]\n0 16 linear b 0\n", "t.conf", "d");
  ASSERT_TRUE(specs);
  set = DeviceSet::build(*specs, "t.conf", false);
  ASSERT_FALSE(set);
  EXPECT_NE(set.error().message.find("device b is too small: need 8192 bytes from offset 0, it has 4096"),
            std::string::npos)
      << set.error().message;
}

}  // namespace
}  // namespace strata

namespace strata {
namespace {

TEST(TablePaths, RelativePathArgumentsGoUnderTheTablesDirectory) {
  auto r = parse_config(
      "[a]\n"
      "0 8 file disk.img 0 direct=off\n"
      "8 8 file ./sub/x.img 4096 ro\n"
      "16 8 file /abs/y.img 0\n"
      "24 8 file ../up.img 0\n"
      "[b]\n"
      "0 8 linear a 0\n"
      "8 8 cow layers/top.layer base=a\n"
      "16 8 nfs nfs://host/export/f 0\n"
      "24 8 rbd rbd/img conf=ceph.conf keyring=/etc/k id=x=y\n",
      "t.conf", "");
  ASSERT_TRUE(r) << r.error().message;
  resolve_paths(*r, "/etc/strata");
  auto args = [&](int d, int s) { return (*r)[d].segments[s].args; };
  using V = std::vector<std::string>;
  EXPECT_EQ(args(0, 0), (V{"/etc/strata/disk.img", "0", "direct=off"}));
  EXPECT_EQ(args(0, 1), (V{"/etc/strata/sub/x.img", "4096", "ro"}));
  EXPECT_EQ(args(0, 2), (V{"/abs/y.img", "0"}));
  EXPECT_EQ(args(0, 3), (V{"/etc/strata/../up.img", "0"}));
  EXPECT_EQ(args(1, 0), (V{"a", "0"}));  // a device name
  EXPECT_EQ(args(1, 1), (V{"/etc/strata/layers/top.layer", "base=a"}));
  EXPECT_EQ(args(1, 2), (V{"nfs://host/export/f", "0"}));
  EXPECT_EQ(args(1, 3), (V{"rbd/img", "conf=/etc/strata/ceph.conf", "keyring=/etc/k", "id=x=y"}));
}

TEST(TablePaths, TableDirIsAbsolute) {
  EXPECT_EQ(table_dir("/etc/strata/t.conf"), "/etc/strata");
  auto d = table_dir("t.conf");
  ASSERT_FALSE(d.empty());
  EXPECT_EQ(d.front(), '/');
}

}  // namespace
}  // namespace strata
