#include "exports/nbd/budget.h"

#include <gtest/gtest.h>

#include <vector>

#include "core/buffer.h"
#include "exports/nbd/protocol.h"

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

TEST(MemoryBudget, ChunksPoolAndSparesAddUpToTheTotal) {
  for (uint64_t total : {64ull << 20, 100ull << 20, 1ull << 30, 4ull << 30}) {
    for (std::size_t conns : {std::size_t{1}, std::size_t{16}, std::size_t{256}}) {
      if (total < MemoryBudget::minimum(conns)) continue;
      MemoryBudget b(total, conns);
      SCOPED_TRACE(testing::Message() << total << " bytes, " << conns << " connections");
      EXPECT_EQ(b.pool() + 2ull * b.chunk() * conns + b.spare(), total);
      EXPECT_LE(b.spare(), total / 8);
      EXPECT_GE(b.pool(), kMaxRequest) << "a largest request still fits in the pool";
    }
  }
  EXPECT_EQ(MemoryBudget(64ull << 20, 256).spare(), 0u) << "no room for spares at the minimum";
  EXPECT_EQ(MemoryBudget(1ull << 30, 256).spare(), (1ull << 30) / 8);
}

// Restores the process-wide spare limit a test changes.
struct SpareLimit {
  std::size_t old = Buffer::spare_limit();
  ~SpareLimit() { Buffer::set_spare_limit(old); }
};

// A burst of requests fills the pool with 4 MiB buffers, then ends: what the
// buffers still hold (in use, reserved chunks, spares kept for the next
// burst) stays within --max-memory. Before spares were counted, the buffer
// pool kept 16 MiB of 4 MiB buffers on top of a budget with none left.
TEST(MemoryBudget, SpareBuffersStayWithinTheBudget) {
  SpareLimit restore;
  const uint64_t total = 48ull << 20;
  MemoryBudget b(total, 1);
  ASSERT_GT(b.spare(), 0u);
  // Spares of other threads (none, unless a test left one running) aside.
  Buffer::set_spare_limit(0);
  const std::size_t base = Buffer::spare_bytes();
  Buffer::set_spare_limit(base + b.spare());  // as nbd::Server does
  auto held_total = [&] { return b.used() + 2ull * b.chunk() + (Buffer::spare_bytes() - base); };
  b.joined();
  std::vector<Buffer> held;
  while (b.try_take(b.used(), 4 << 20)) held.push_back(Buffer::get(4 << 20));
  ASSERT_GE(held.size(), 4u);
  Buffer chunk_in = Buffer::get(b.chunk()), chunk_out = Buffer::get(b.chunk());
  EXPECT_LE(held_total(), total);
  for (auto& buf : held) {
    buf = Buffer();
    b.give(4 << 20);
    EXPECT_LE(held_total(), total);
  }
  EXPECT_LE(Buffer::spare_bytes() - base, b.spare());
  EXPECT_GT(Buffer::spare_bytes() - base, 0u) << "spares are still kept, up to the limit";
  b.left();
}

}  // namespace
}  // namespace strata::nbd
