#include "core/metrics.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace strata {
namespace {

TEST(IoMetrics, BucketsAreUpperBoundsInclusive) {
  EXPECT_EQ(IoMetrics::bucket_of(0), 0);
  EXPECT_EQ(IoMetrics::bucket_of(50'000), 0);   // 50 us: le="5e-05"
  EXPECT_EQ(IoMetrics::bucket_of(50'001), 1);
  EXPECT_EQ(IoMetrics::bucket_of(1'000'000), 4);  // 1 ms
  EXPECT_EQ(IoMetrics::bucket_of(10'000'000'000), 16);  // 10 s
  EXPECT_EQ(IoMetrics::bucket_of(10'000'000'001), kLatencyBuckets - 1);  // +Inf
}

TEST(IoMetrics, RequestsCountedByKindAndQueue) {
  IoMetrics m;
  {
    IoMetrics::Request r(m, 0, IoOp::kWrite, 4096);
    EXPECT_EQ(m.snapshot().in_flight, 1u);
    r.done(true);
  }
  {
    IoMetrics::Request r(m, 3, IoOp::kWrite, 8192);
    r.done(true);
  }
  { IoMetrics::Request r(m, 3, IoOp::kRead, 512); }  // never done(true): an error, no bytes
  { IoMetrics::Request r(m, 1, IoOp::kTrim, 1 << 20); }
  m.count_view(2, 65536);
  auto s = m.snapshot();
  EXPECT_EQ(s.in_flight, 0u);
  EXPECT_EQ(s.ops[int(IoOp::kWrite)], 2u);
  EXPECT_EQ(s.bytes[int(IoOp::kWrite)], 12288u);
  EXPECT_EQ(s.errors[int(IoOp::kWrite)], 0u);
  EXPECT_EQ(s.ops[int(IoOp::kRead)], 2u);
  EXPECT_EQ(s.bytes[int(IoOp::kRead)], 65536u);
  EXPECT_EQ(s.errors[int(IoOp::kRead)], 1u);
  EXPECT_EQ(s.errors[int(IoOp::kTrim)], 1u);
  EXPECT_EQ(s.latency[int(IoOp::kWrite)].count, 2u);
  EXPECT_EQ(s.latency[int(IoOp::kRead)].count, 2u);
  EXPECT_EQ(s.latency[int(IoOp::kRead)].buckets[0], 2u) << "a view and an instant error are in the first bucket";
}

TEST(IoMetrics, QueuesOnThreadsOfTheirOwnLoseNothing) {
  IoMetrics m;
  std::vector<std::thread> ts;
  for (int q = 0; q < 4; ++q)
    ts.emplace_back([&m, q] {
      for (int i = 0; i < 10000; ++i) {
        IoMetrics::Request r(m, q, IoOp::kFlush, 0);
        r.done(true);
      }
    });
  for (auto& t : ts) t.join();
  auto s = m.snapshot();
  EXPECT_EQ(s.ops[int(IoOp::kFlush)], 40000u);
  EXPECT_EQ(s.latency[int(IoOp::kFlush)].count, 40000u);
}

}  // namespace
}  // namespace strata
