// RetainedWrites: the log that decides what a FLUSH must write again after an
// NFS server restart. Checked against a byte-level model: replaying the log
// in order over the stable image gives the newest data of every byte.
#include "targets/nfs/nfs.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

namespace strata {
namespace {

std::vector<std::byte> filled(size_t n, uint8_t b) { return std::vector<std::byte>(n, std::byte{b}); }

// Applies the entries before `upto` to `img` in log order.
void replay(const RetainedWrites& r, uint64_t upto, std::vector<int>& img) {
  for (const auto& e : r.entries_before(upto))
    for (uint32_t i = 0; i < e.length; ++i) img.at(e.offset + i) = static_cast<int>(e.data[i]);
}

TEST(RetainedWrites, AppendCopiesAndCounts) {
  RetainedWrites r;
  auto a = filled(100, 1);
  uint64_t s0 = r.append(0, a, 7, false);
  a.assign(100, std::byte{9});  // the caller's buffer is free after append
  uint64_t s1 = r.append(40, filled(20, 2), 7, false);
  EXPECT_EQ(s0, 0u);
  EXPECT_EQ(s1, 1u);
  EXPECT_EQ(r.bytes(), 120u);
  std::vector<int> img(100, -1);
  replay(r, r.next_seq(), img);
  EXPECT_EQ(img[39], 1);
  EXPECT_EQ(img[40], 2);
  EXPECT_EQ(img[59], 2);
  EXPECT_EQ(img[60], 1);
}

TEST(RetainedWrites, SettleDropsOnlyWhenEveryVerifierMatches) {
  RetainedWrites r;
  r.append(0, filled(10, 1), 7, false);
  r.append(10, filled(10, 2), 7, false);
  uint64_t upto = r.next_seq();
  r.append(20, filled(10, 3), 5, false);  // acknowledged after the COMMIT was sent
  EXPECT_TRUE(r.settle(upto, 7));
  EXPECT_EQ(r.count(), 1u);
  EXPECT_EQ(r.bytes(), 10u);
  // The remaining write came from an instance with verifier 5; the COMMIT
  // answers 8: the server restarted, nothing may be dropped.
  EXPECT_FALSE(r.settle(r.next_seq(), 8));
  EXPECT_EQ(r.count(), 1u);
}

TEST(RetainedWrites, StableEntriesNeverForceARewrite) {
  RetainedWrites r;
  r.append(0, filled(10, 1), 3, true);  // FUA under an old verifier
  r.append(0, filled(10, 2), 7, false);
  EXPECT_TRUE(r.settle(r.next_seq(), 7));
  EXPECT_EQ(r.count(), 0u);
}

TEST(RetainedWrites, ReplayOrderKeepsTheNewestWrite) {
  // An unstable write, then a FUA write of the same block: a replay after a
  // restart must end with the FUA data.
  RetainedWrites r;
  r.append(0, filled(8, 1), 5, false);
  r.append(0, filled(8, 2), 5, true);
  EXPECT_FALSE(r.settle(r.next_seq(), 6));
  std::vector<int> img(8, -1);
  replay(r, r.next_seq(), img);
  EXPECT_EQ(img, std::vector<int>(8, 2));
}

TEST(RetainedWrites, ChunksAreReusedAndLargeEntriesFit) {
  RetainedWrites r(16u << 20);
  // 64 MiB through the log in 1 MiB writes, settled every 8 MiB.
  for (int i = 0; i < 64; ++i) {
    r.append(static_cast<uint64_t>(i) << 20, filled(1 << 20, static_cast<uint8_t>(i)), 1, false);
    if (i % 8 == 7) {
      EXPECT_TRUE(r.settle(r.next_seq(), 1));
    }
  }
  EXPECT_EQ(r.bytes(), 0u);
  // An entry larger than a chunk.
  r.append(0, filled(6u << 20, 0x42), 1, false);
  auto e = r.entries_before(r.next_seq());
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0].length, 6u << 20);
  EXPECT_EQ(e[0].data[(6u << 20) - 1], std::byte{0x42});
}

TEST(RetainedWrites, LargeCopiesKeepEveryByte) {
  // Large entries are copied with streaming stores in 64-byte steps after a
  // head that aligns the destination: odd lengths and log positions (a
  // 3-byte entry first shifts every later one) must keep every byte.
  RetainedWrites r(8u << 20);
  std::mt19937 rng(7);
  std::vector<std::vector<std::byte>> src;
  r.append(0, filled(3, 0xee), 1, false);
  for (size_t len : {size_t{64} << 10, (size_t{64} << 10) + 1, (size_t{200} << 10) + 37, size_t{1} << 20,
                     (size_t{1} << 20) + 63}) {
    std::vector<std::byte> v(len);
    for (auto& b : v) b = static_cast<std::byte>(rng());
    r.append(len, v, 1, false);
    src.push_back(std::move(v));
  }
  auto e = r.entries_before(r.next_seq());
  ASSERT_EQ(e.size(), src.size() + 1);
  for (size_t i = 0; i < src.size(); ++i) {
    ASSERT_EQ(e[i + 1].length, src[i].size());
    EXPECT_EQ(std::memcmp(e[i + 1].data, src[i].data(), src[i].size()), 0) << "entry of " << src[i].size();
  }
}

TEST(RetainedWrites, RandomModel) {
  std::mt19937 rng(42);
  constexpr size_t kSize = 4096;
  RetainedWrites r(1u << 20);
  std::vector<int> stable(kSize, 0), newest(kSize, 0);
  uint64_t verf = 1;
  for (int i = 0; i < 3000; ++i) {
    int op = rng() % 20;
    if (op < 16) {
      uint64_t off = rng() % kSize;
      uint32_t len = 1 + rng() % std::min<uint64_t>(300, kSize - off);
      auto fill = static_cast<uint8_t>(1 + rng() % 250);
      bool fua = rng() % 5 == 0;
      r.append(off, filled(len, fill), verf, fua);
      for (uint64_t j = off; j < off + len; ++j) newest[j] = fill;
    } else if (op < 19) {
      // COMMIT; sometimes the server restarted first (new verifier).
      uint64_t commit_verf = rng() % 4 == 0 ? verf + 1 : verf;
      uint64_t upto = r.next_seq();
      if (r.settle(upto, commit_verf)) {
        stable = newest;  // everything acknowledged is now stable
      } else {
        // What a rewrite must restore: replaying the log over what the
        // server still has gives the newest data.
        std::vector<int> img = stable;
        replay(r, upto, img);
        ASSERT_EQ(img, newest) << "step " << i;
        r.drop_before(upto);
        stable = newest;
      }
      verf = commit_verf;
    }
    ASSERT_EQ(r.count() == 0, r.bytes() == 0);
  }
}

}  // namespace
}  // namespace strata
