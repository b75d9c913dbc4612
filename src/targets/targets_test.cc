// Targets driven through a real io_uring queue: the memory target as a
// reference, the error target for fault injection, tables that split
// requests across segments, and the file target on a temporary file.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/buffer.h"
#include "core/queue.h"
#include "targets/error.h"
#include "targets/file.h"
#include "targets/memory.h"
#include "targets/pattern.h"
#include "table/table.h"

namespace strata {
namespace {

class TargetTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(q_.init_inline()); }

  Result<> read(Target& t, std::vector<std::byte>& buf, uint64_t off) {
    return q_.run_sync(t.read(q_, buf, off));
  }
  Result<> write(Target& t, const std::vector<std::byte>& buf, uint64_t off, IoFlags f = {}) {
    return q_.run_sync(t.write(q_, buf, off, f));
  }
  Result<Extents> extents(Target& t, uint64_t off, uint64_t len) { return q_.run_sync(t.extents(q_, off, len)); }

  static std::vector<std::byte> bytes(std::size_t n, int seed) {
    std::vector<std::byte> v(n);
    std::mt19937 rng(seed);
    for (auto& b : v) b = static_cast<std::byte>(rng());
    return v;
  }

  Queue q_{0};
};

TEST_F(TargetTest, MemoryReadsBackWritesAndZeros) {
  MemoryTarget m(1 << 20);
  auto data = bytes(100000, 1);
  ASSERT_TRUE(write(m, data, 12345));
  std::vector<std::byte> back(100000);
  ASSERT_TRUE(read(m, back, 12345));
  EXPECT_EQ(back, data);
  ASSERT_TRUE(q_.run_sync(m.zero(q_, 20000, 5000, {})));
  ASSERT_TRUE(read(m, back, 12345));
  for (int i = 20000 - 12345; i < 25000 - 12345; ++i) ASSERT_EQ(back[i], std::byte{0});
  EXPECT_EQ(back[0], data[0]);
  auto e = extents(m, 0, 1 << 20);
  ASSERT_TRUE(e);
  ASSERT_GE(e->size(), 2u);
  EXPECT_EQ((*e)[0].flags, 0u);  // page 0 holds data
  EXPECT_EQ(e->back().flags, Extent::kHole | Extent::kZero);
}

TEST_F(TargetTest, ErrorTargetFailsEveryIoWithEio) {
  ErrorTarget t(4096);
  std::vector<std::byte> buf(512);
  auto r = read(t, buf, 0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EIO);
  EXPECT_EQ(write(t, buf, 0).error().code, EIO);
  EXPECT_TRUE(q_.run_sync(t.flush(q_)));  // nothing to flush: a table flush must not fail
  EXPECT_EQ(q_.run_sync(t.trim(q_, 0, 512, {})).error().code, EIO);
  EXPECT_EQ(extents(t, 0, 512).error().code, EIO);
}

TEST_F(TargetTest, TableSplitsRequestsAcrossSegments) {
  auto a = std::make_shared<MemoryTarget>(8192);
  auto b = std::make_shared<MemoryTarget>(4096);
  TableTarget t({{0, 8192, a}, {8192, 4096, b}});
  EXPECT_EQ(t.size(), 12288u);
  auto data = bytes(6000, 2);
  ASSERT_TRUE(write(t, data, 5000));  // 5000..11000 spans both
  std::vector<std::byte> back(6000);
  ASSERT_TRUE(read(t, back, 5000));
  EXPECT_EQ(back, data);
  // The bytes landed at the right place in each segment.
  std::vector<std::byte> in_a(3192), in_b(2808);
  ASSERT_TRUE(read(*a, in_a, 5000));
  ASSERT_TRUE(read(*b, in_b, 0));
  EXPECT_TRUE(std::equal(in_a.begin(), in_a.end(), data.begin()));
  EXPECT_TRUE(std::equal(in_b.begin(), in_b.end(), data.begin() + 3192));
}

TEST_F(TargetTest, TableErrorSegmentFailsOnlyInsideItsRange) {
  auto a = std::make_shared<MemoryTarget>(4096);
  auto e = std::make_shared<ErrorTarget>(4096);
  TableTarget t({{0, 4096, a}, {4096, 4096, e}});
  std::vector<std::byte> buf(1000);
  EXPECT_TRUE(read(t, buf, 3000));
  auto r = read(t, buf, 3500);  // crosses into the error segment
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EIO);
  EXPECT_FALSE(read(t, buf, 5000));
  EXPECT_FALSE(t.caps().can_extents && !t.caps().can_write);
}

TEST_F(TargetTest, TableExtentsMergeAcrossSegments) {
  auto a = std::make_shared<MemoryTarget>(8192);
  auto b = std::make_shared<MemoryTarget>(8192);
  TableTarget t({{0, 8192, a}, {8192, 8192, b}});
  auto e = extents(t, 0, 16384);
  ASSERT_TRUE(e);
  ASSERT_EQ(e->size(), 1u);  // both all-hole: one merged extent
  EXPECT_EQ((*e)[0].length, 16384u);
  EXPECT_EQ((*e)[0].flags, Extent::kHole | Extent::kZero);
}

TEST_F(TargetTest, PatternHoldsOffsets) {
  PatternTarget p(1 << 20);
  std::vector<std::byte> buf(16);
  ASSERT_TRUE(read(p, buf, 4096));
  EXPECT_EQ(buf[7], std::byte{0x00});
  EXPECT_EQ(buf[6], std::byte{0x10});  // 4096 = 0x1000, big-endian
  EXPECT_EQ(buf[14], std::byte{0x10});
  EXPECT_EQ(buf[15], std::byte{0x08});  // 4104 = 0x1008
  EXPECT_FALSE(write(p, buf, 0));
}

class FileTargetTest : public TargetTest {
 protected:
  void SetUp() override {
    TargetTest::SetUp();
    char tmpl[] = "/tmp/strata-file-test.XXXXXX";
    int fd = ::mkstemp(tmpl);
    ASSERT_GE(fd, 0);
    path_ = tmpl;
    ASSERT_EQ(::ftruncate(fd, 1 << 20), 0);
    ::close(fd);
  }
  void TearDown() override { ::unlink(path_.c_str()); }

  Result<std::shared_ptr<Target>> make(std::vector<std::string> args, uint64_t length, bool ro = false) {
    Params p(args);
    p.length = length;
    p.read_only = ro;
    struct NoDevices : Resolver {
      Result<std::shared_ptr<Target>> device(std::string_view) override { return fail(ENOENT, "none"); }
    } none;
    return FileTarget::create(p, none);
  }
  std::string path_;
};

TEST_F(FileTargetTest, WritesLandAtOffsetPlusPosition) {
  auto t = make({path_, "4096"}, 65536);
  ASSERT_TRUE(t) << t.error().message;
  auto data = bytes(10000, 3);
  ASSERT_TRUE(write(**t, data, 1000, IoFlags{.fua = true}));
  std::vector<std::byte> raw(10000);
  int fd = ::open(path_.c_str(), O_RDONLY);
  ASSERT_EQ(::pread(fd, raw.data(), raw.size(), 4096 + 1000), 10000);
  ::close(fd);
  EXPECT_EQ(raw, data);
  std::vector<std::byte> back(10000);
  ASSERT_TRUE(read(**t, back, 1000));
  EXPECT_EQ(back, data);
  EXPECT_TRUE(q_.run_sync((*t)->flush(q_)));
}

TEST_F(FileTargetTest, TrimZeroAndExtents) {
  auto t = make({path_, "0"}, 1 << 20);
  ASSERT_TRUE(t);
  auto data = bytes(1 << 20, 4);
  ASSERT_TRUE(write(**t, data, 0));
  ASSERT_TRUE(q_.run_sync((*t)->trim(q_, 65536, 65536, {})));
  ASSERT_TRUE(q_.run_sync((*t)->zero(q_, 262144, 65536, IoFlags{.may_trim = false})));
  ASSERT_TRUE(q_.run_sync((*t)->zero(q_, 524288, 65536, IoFlags{.fast_zero = true})));
  std::vector<std::byte> back(65536);
  for (uint64_t off : {65536u, 262144u, 524288u}) {
    ASSERT_TRUE(read(**t, back, off));
    EXPECT_TRUE(std::all_of(back.begin(), back.end(), [](std::byte b) { return b == std::byte{0}; })) << off;
  }
  auto e = extents(**t, 0, 1 << 20);
  ASSERT_TRUE(e);
  uint64_t pos = 0, hole_at = UINT64_MAX, total = 0;
  for (const auto& x : *e) {
    if ((x.flags & Extent::kHole) && hole_at == UINT64_MAX) hole_at = pos;
    pos += x.length;
    total += x.length;
  }
  EXPECT_EQ(total, 1u << 20);
  EXPECT_EQ(hole_at, 65536u);  // the trimmed range is the first hole
}

TEST_F(FileTargetTest, ChecksHaveClearMessages) {
  auto small = make({path_, "0"}, 2 << 20);
  ASSERT_FALSE(small);
  EXPECT_NE(small.error().message.find("file too small: need 2097152 bytes from offset 0, file has 1048576"),
            std::string::npos)
      << small.error().message;
  auto beyond = make({path_, "2000000"}, 512);
  ASSERT_FALSE(beyond);
  EXPECT_NE(beyond.error().message.find("offset 2000000 is beyond the end of the file (1048576 bytes)"),
            std::string::npos);
  auto dir = make({"/tmp", "0"}, 512);
  ASSERT_FALSE(dir);
  EXPECT_NE(dir.error().message.find("not a regular file or block device"), std::string::npos);
  auto missing = make({path_ + ".nope", "0"}, 512);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ENOENT);
  auto bad_off = make({path_, "12k"}, 512);
  ASSERT_FALSE(bad_off);
  EXPECT_NE(bad_off.error().message.find("argument 2 (offset)"), std::string::npos);
  auto unaligned = make({path_, "512", "direct=on"}, 4096);
  ASSERT_FALSE(unaligned);
  EXPECT_NE(unaligned.error().message.find("direct=on needs the offset"), std::string::npos);
  auto ro = make({path_, "0", "ro"}, 4096);
  ASSERT_TRUE(ro);
  EXPECT_FALSE((*ro)->caps().can_write);
  EXPECT_EQ((*ro)->table_line(), "file " + path_ + " 0 ro");
}

TEST_F(FileTargetTest, DirectIoUsesAlignedBuffers) {
  auto t = make({path_, "4096", "direct=on"}, 65536);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ((*t)->block_sizes().minimum, 4096u);
  Buffer b = Buffer::get(8192);
  std::memset(b.data(), 0x5a, b.size());
  ASSERT_TRUE(q_.run_sync((*t)->write(q_, b.span(), 8192, {})));
  Buffer r = Buffer::get(8192);
  ASSERT_TRUE(q_.run_sync((*t)->read(q_, r.span(), 8192)));
  EXPECT_EQ(std::memcmp(b.data(), r.data(), 8192), 0);
}

}  // namespace
}  // namespace strata
