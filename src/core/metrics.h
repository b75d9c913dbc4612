// IoMetrics: what the clients of one device asked of it, for `serve
// --metrics` (docs/metrics.md): requests and bytes by kind, errors, requests
// in flight, and latency histograms for reads, writes and flushes.
//
// Cost on the I/O path: two clock reads per request and a few relaxed
// fetch_adds on counters of the calling queue's own shard (one per queue,
// made on its first request, on cache lines no other queue writes), so
// queues never contend. Readers (the metrics endpoint, any thread) sum the
// shards; a sum may mix a request's counters half-recorded, which a scrape
// tolerates.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "core/queue.h"

namespace strata {

enum class IoOp { kRead = 0, kWrite, kFlush, kTrim, kZero };
constexpr int kIoOps = 5;
constexpr const char* kIoOpNames[kIoOps] = {"read", "write", "flush", "trim", "zero"};
// Ops with a latency histogram: read, write, flush.
constexpr int kTimedOps = 3;

// Upper bounds of the latency buckets, in seconds (Prometheus `le`); one more
// bucket, +Inf, follows.
constexpr std::array<double, 17> kLatencyBounds = {50e-6, 100e-6, 250e-6, 500e-6, 1e-3,   2.5e-3, 5e-3, 10e-3, 25e-3,
                                                   50e-3, 100e-3, 250e-3, 500e-3, 1.0,    2.5,    5.0,  10.0};
constexpr int kLatencyBuckets = static_cast<int>(kLatencyBounds.size()) + 1;

class IoMetrics {
 public:
  IoMetrics() = default;
  ~IoMetrics();
  IoMetrics(const IoMetrics&) = delete;
  IoMetrics& operator=(const IoMetrics&) = delete;

  struct Histogram {
    std::array<uint64_t, kLatencyBuckets> buckets{};  // per bucket, not cumulative
    uint64_t sum_ns = 0;
    uint64_t count = 0;
  };
  struct Snapshot {
    std::array<uint64_t, kIoOps> ops{}, bytes{}, errors{};
    uint64_t in_flight = 0;
    std::array<Histogram, kTimedOps> latency{};
  };

  // Times one request on queue `queue` from construction to destruction;
  // failed unless done(true) was called.
  class Request {
   public:
    Request(IoMetrics& m, int queue, IoOp op, uint64_t bytes);
    ~Request();
    Request(const Request&) = delete;
    Request& operator=(const Request&) = delete;
    void done(bool ok) { ok_ = ok; }

   private:
    void* shard_;  // the calling queue's Shard
    IoOp op_;
    uint64_t bytes_;
    uint64_t start_ns_;
    bool ok_ = false;
  };

  // A read answered from memory without a request (read_view): counted,
  // in the lowest latency bucket.
  void count_view(int queue, uint64_t bytes);
  Snapshot snapshot() const;
  // The bucket of a latency (for tests).
  static int bucket_of(uint64_t ns);

 private:
  struct alignas(64) Shard {
    std::array<std::atomic<uint64_t>, kIoOps> ops{}, bytes{}, errors{};
    std::atomic<int64_t> in_flight{0};
    std::array<std::array<std::atomic<uint64_t>, kLatencyBuckets>, kTimedOps> buckets{};
    std::array<std::atomic<uint64_t>, kTimedOps> sum_ns{};
  };
  Shard& shard(int queue);
  static void record(Shard& s, IoOp op, uint64_t bytes, uint64_t ns, bool ok);

  std::array<std::atomic<Shard*>, kMaxQueues> shards_{};
};

}  // namespace strata
