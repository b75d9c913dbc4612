#include "exports/nbd/budget.h"

#include <unistd.h>

#include <algorithm>

#include "exports/nbd/protocol.h"

namespace strata::nbd {

namespace {
constexpr uint64_t kMinChunk = 64 << 10;
constexpr uint64_t kMaxChunk = 1 << 20;
}  // namespace

uint64_t MemoryBudget::minimum(std::size_t max_connections) {
  return 2 * kMinChunk * std::max<std::size_t>(max_connections, 1) + kMaxRequest;
}

uint64_t MemoryBudget::default_total() {
  long pages = ::sysconf(_SC_PHYS_PAGES);
  long page = ::sysconf(_SC_PAGESIZE);
  uint64_t ram = pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 4ull << 30;
  return std::min<uint64_t>(1ull << 30, ram / 4);
}

MemoryBudget::MemoryBudget(uint64_t total, std::size_t max_connections) : total_(total) {
  max_connections = std::max<std::size_t>(max_connections, 1);
  // Spare buffers: an eighth, out of what is above the minimum.
  const uint64_t min = minimum(max_connections);
  spare_ = total > min ? std::min(total / 8, total - min) : 0;
  const uint64_t rest = total - spare_;
  // A quarter of the rest for the chunks, the others for the pool.
  uint64_t c = rest / 4 / (2 * max_connections) / 4096 * 4096;
  chunk_ = static_cast<uint32_t>(std::clamp(c, kMinChunk, kMaxChunk));
  uint64_t reserved = 2ull * chunk_ * max_connections;
  pool_ = rest > reserved ? rest - reserved : 0;
}

uint64_t MemoryBudget::fair_share() const {
  uint64_t m = std::max<uint64_t>(members_.load(std::memory_order_relaxed), 1);
  return pool_ / m;
}

bool MemoryBudget::try_take(uint64_t held, uint64_t n) {
  if (held + n > fair_share()) return false;
  uint64_t u = used_.load(std::memory_order_relaxed);
  do {
    if (u + n > pool_) return false;
  } while (!used_.compare_exchange_weak(u, u + n, std::memory_order_acq_rel));
  return true;
}

}  // namespace strata::nbd
