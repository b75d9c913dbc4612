// RetainedWrites: the bookkeeping that decides what a FLUSH must write again
// after an NFS server restart. Checked against a byte-level model.
#include "targets/nfs.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

namespace strata {
namespace {

RetainedWrites::Piece piece(uint64_t off, uint64_t len, uint8_t fill, uint64_t seq, uint64_t verf) {
  auto owner = std::make_shared_for_overwrite<std::byte[]>(len);
  std::memset(owner.get(), fill, len);
  return {off, len, owner, owner.get(), seq, verf};
}

// What the retained pieces say each byte holds (-1: nothing retained).
std::vector<int> image(const RetainedWrites& r, size_t size) {
  std::vector<int> v(size, -1);
  for (const auto& p : r.pieces())
    for (uint64_t i = 0; i < p.length; ++i) v.at(p.offset + i) = static_cast<int>(p.data[i]);
  return v;
}

TEST(RetainedWrites, NewerWriteReplacesOverlap) {
  RetainedWrites r;
  r.insert(piece(0, 100, 1, 0, 7));
  r.insert(piece(40, 20, 2, 1, 7));
  EXPECT_EQ(r.bytes(), 100u);
  EXPECT_EQ(r.count(), 3u);  // [0,40) [40,60) [60,100)
  auto img = image(r, 100);
  EXPECT_EQ(img[39], 1);
  EXPECT_EQ(img[40], 2);
  EXPECT_EQ(img[59], 2);
  EXPECT_EQ(img[60], 1);
}

TEST(RetainedWrites, CarveSplitsAndForgets) {
  RetainedWrites r;
  r.insert(piece(0, 10, 1, 0, 7));
  r.insert(piece(20, 10, 2, 1, 7));
  r.carve(5, 20);  // [5,25): cuts the end of the first and the start of the second
  EXPECT_EQ(r.bytes(), 10u);
  auto img = image(r, 30);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(img[i], 1);
  for (int i = 5; i < 25; ++i) EXPECT_EQ(img[i], -1);
  for (int i = 25; i < 30; ++i) EXPECT_EQ(img[i], 2);
}

TEST(RetainedWrites, SettleDropsOnlyCommittedUnderSameVerifier) {
  RetainedWrites r;
  r.insert(piece(0, 10, 1, 0, 7));    // before the COMMIT, same verifier: stable
  r.insert(piece(10, 10, 2, 1, 5));   // before the COMMIT, old verifier: lost by a restart
  r.insert(piece(20, 10, 3, 2, 7));   // acknowledged after the COMMIT was sent: not covered
  uint64_t stale = r.settle(2, 7);
  EXPECT_EQ(stale, 10u);
  EXPECT_EQ(r.bytes(), 20u);
  auto img = image(r, 30);
  EXPECT_EQ(img[0], -1);
  EXPECT_EQ(img[10], 2);
  EXPECT_EQ(img[20], 3);
}

TEST(RetainedWrites, EraseIfSameKeepsANewerWrite) {
  RetainedWrites r;
  auto old = piece(0, 10, 1, 0, 7);
  r.insert(old);
  r.insert(piece(0, 10, 2, 1, 7));  // rewritten meanwhile
  r.erase_if_same(old);
  EXPECT_EQ(r.bytes(), 10u);
  EXPECT_EQ(image(r, 10)[0], 2);
}

TEST(RetainedWrites, RandomModel) {
  std::mt19937 rng(42);
  constexpr size_t kSize = 4096;
  RetainedWrites r;
  std::vector<int> model(kSize, -1);
  for (int i = 0; i < 3000; ++i) {
    uint64_t off = rng() % kSize;
    uint64_t len = 1 + rng() % std::min<uint64_t>(300, kSize - off);
    int op = rng() % 10;
    if (op < 7) {
      auto fill = static_cast<uint8_t>(rng() % 250);
      r.insert(piece(off, len, fill, static_cast<uint64_t>(i), 1));
      for (uint64_t j = off; j < off + len; ++j) model[j] = fill;
    } else if (op < 9) {
      r.carve(off, len);
      for (uint64_t j = off; j < off + len; ++j) model[j] = -1;
    } else {
      r.settle(static_cast<uint64_t>(i), 1);  // everything so far is stable
      std::fill(model.begin(), model.end(), -1);
    }
    ASSERT_EQ(image(r, kSize), model) << "after step " << i;
    uint64_t held = 0;
    for (int b : model) held += b >= 0;
    ASSERT_EQ(r.bytes(), held);
  }
}

}  // namespace
}  // namespace strata
