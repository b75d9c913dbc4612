// MemoryBudget: the server-wide limit on the bytes NBD connections hold in
// request and reply buffers (`serve --max-memory`).
//
// The budget is split in two. A fixed part is reserved for every connection
// slot: two chunks (one for receiving a write piece by piece, one for sending
// a read piece by piece), so every connection can always make progress
// however full the rest is. The rest is a shared pool from which a connection
// takes whole request buffers (fast path: requests run concurrently), at most
// its fair share: the pool divided by the connections in transmission. A
// connection that cannot take from the pool falls back to its chunks.
//
// A third part, taken off the top before the other two, is for the spare
// buffers the buffer pools keep (Buffer::set_spare_limit): up to an eighth of
// the budget, and only what is above minimum(). So chunks + pool + spares ==
// total: every byte the buffers of requests and replies hold, in use or
// spare, is within the budget.
//
// Thread-safety: every method may be called from any queue thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace strata::nbd {

class MemoryBudget {
 public:
  // `total` bytes for `max_connections` connection slots.
  MemoryBudget(uint64_t total, std::size_t max_connections);
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  // The smallest budget that works for `max_connections`: a minimum chunk per
  // slot plus one largest request in the pool.
  static uint64_t minimum(std::size_t max_connections);
  // min(1 GiB, a quarter of the machine's RAM).
  static uint64_t default_total();

  uint64_t total() const { return total_; }
  uint64_t pool() const { return pool_; }
  // The bytes kept for spare buffers (the limit the server gives Buffer).
  uint64_t spare() const { return spare_; }
  // The per-connection chunk size (a multiple of 4096).
  uint32_t chunk() const { return chunk_; }

  // A connection enters or leaves transmission (it counts in fair shares).
  void joined() { members_.fetch_add(1, std::memory_order_relaxed); }
  void left() { members_.fetch_sub(1, std::memory_order_relaxed); }
  // The pool divided by the connections in transmission.
  uint64_t fair_share() const;
  // Takes n bytes from the pool for a connection already holding `held`;
  // false when that would put it over its fair share or the pool over its size.
  bool try_take(uint64_t held, uint64_t n);
  void give(uint64_t n) { used_.fetch_sub(n, std::memory_order_acq_rel); }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }

 private:
  uint64_t total_;
  uint64_t pool_;
  uint64_t spare_;
  uint32_t chunk_;
  std::atomic<uint64_t> used_{0};
  std::atomic<uint64_t> members_{0};
};

}  // namespace strata::nbd
