#include "exports/nbd/budget.h"

#include <gtest/gtest.h>

namespace strata::nbd {
namespace {

TEST(MemoryBudget, ReservesChunksAndSharesThePool) {
  MemoryBudget b(64ull << 20, 256);
  EXPECT_EQ(b.chunk(), 64u << 10);  // a quarter of 64 MiB / 512 is under the minimum chunk
  EXPECT_EQ(b.pool(), (64ull << 20) - 2ull * (64 << 10) * 256);
  EXPECT_EQ(b.fair_share(), b.pool());
  for (int i = 0; i < 4; ++i) b.joined();
  EXPECT_EQ(b.fair_share(), b.pool() / 4);
}

TEST(MemoryBudget, TakeStopsAtTheFairShareAndThePool) {
  MemoryBudget b(64ull << 20, 256);  // pool: 32 MiB
  b.joined();
  b.joined();
  const uint64_t share = b.fair_share();  // 16 MiB
  EXPECT_TRUE(b.try_take(0, share));
  EXPECT_FALSE(b.try_take(share, 1)) << "over its fair share";
  EXPECT_TRUE(b.try_take(0, share));
  EXPECT_FALSE(b.try_take(0, 4096)) << "the pool is full";
  b.give(share);
  EXPECT_TRUE(b.try_take(0, 4096));
  EXPECT_EQ(b.used(), share + 4096);
}

TEST(MemoryBudget, MinimumAndDefault) {
  EXPECT_EQ(MemoryBudget::minimum(256), 64ull << 20);
  EXPECT_GT(MemoryBudget::default_total(), 0u);
  EXPECT_LE(MemoryBudget::default_total(), 1ull << 30);
}

}  // namespace
}  // namespace strata::nbd
