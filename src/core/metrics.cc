#include "core/metrics.h"

#include <time.h>

#include "core/log.h"

namespace strata {
namespace {

uint64_t now_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

void add(std::atomic<uint64_t>& c, uint64_t n) { c.fetch_add(n, std::memory_order_relaxed); }

}  // namespace

IoMetrics::~IoMetrics() {
  for (auto& s : shards_) delete s.load();
}

IoMetrics::Shard& IoMetrics::shard(int queue) {
  CHECK(queue >= 0 && queue < kMaxQueues);
  Shard* s = shards_[queue].load(std::memory_order_acquire);
  if (s) return *s;
  auto* fresh = new Shard;
  if (shards_[queue].compare_exchange_strong(s, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;  // another thread made it first (a queue id reused by a second Queue)
  return *s;
}

int IoMetrics::bucket_of(uint64_t ns) {
  const double secs = static_cast<double>(ns) * 1e-9;
  int b = 0;
  while (b < static_cast<int>(kLatencyBounds.size()) && secs > kLatencyBounds[b]) ++b;
  return b;
}

IoMetrics::Request::Request(IoMetrics& m, int queue, IoOp op, uint64_t bytes)
    : shard_(&m.shard(queue)), op_(op), bytes_(bytes), start_ns_(now_ns()) {
  static_cast<Shard*>(shard_)->in_flight.fetch_add(1, std::memory_order_relaxed);
}

IoMetrics::Request::~Request() {
  auto* s = static_cast<Shard*>(shard_);
  record(*s, op_, bytes_, now_ns() - start_ns_, ok_);
  s->in_flight.fetch_sub(1, std::memory_order_relaxed);
}

void IoMetrics::record(Shard& s, IoOp op, uint64_t bytes, uint64_t ns, bool ok) {
  const auto i = static_cast<std::size_t>(op);
  add(s.ops[i], 1);
  if (ok)
    add(s.bytes[i], bytes);
  else
    add(s.errors[i], 1);
  if (i < kTimedOps) {
    add(s.buckets[i][static_cast<std::size_t>(bucket_of(ns))], 1);
    add(s.sum_ns[i], ns);
  }
}

void IoMetrics::count_view(int queue, uint64_t bytes) { record(shard(queue), IoOp::kRead, bytes, 0, true); }

IoMetrics::Snapshot IoMetrics::snapshot() const {
  Snapshot out;
  int64_t in_flight = 0;
  for (const auto& p : shards_) {
    const Shard* s = p.load(std::memory_order_acquire);
    if (!s) continue;
    for (int i = 0; i < kIoOps; ++i) {
      out.ops[i] += s->ops[i].load(std::memory_order_relaxed);
      out.bytes[i] += s->bytes[i].load(std::memory_order_relaxed);
      out.errors[i] += s->errors[i].load(std::memory_order_relaxed);
    }
    in_flight += s->in_flight.load(std::memory_order_relaxed);
    for (int i = 0; i < kTimedOps; ++i) {
      for (int b = 0; b < kLatencyBuckets; ++b) {
        uint64_t n = s->buckets[i][b].load(std::memory_order_relaxed);
        out.latency[i].buckets[b] += n;
        out.latency[i].count += n;
      }
      out.latency[i].sum_ns += s->sum_ns[i].load(std::memory_order_relaxed);
    }
  }
  out.in_flight = in_flight > 0 ? static_cast<uint64_t>(in_flight) : 0;
  return out;
}

}  // namespace strata
