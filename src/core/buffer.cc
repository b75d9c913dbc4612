#include "core/buffer.h"

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "core/log.h"
#include "core/task.h"

namespace strata {
namespace {

// Size classes: 4 KiB << cls, up to 64 MiB. Each class keeps a few free
// buffers; large classes keep fewer so an idle server does not hold much.
constexpr int kClasses = 15;
constexpr std::size_t kKeep[kClasses] = {256, 256, 256, 256, 256, 256, 256, 128, 64, 4, 4, 2, 2, 1, 1};

constexpr std::size_t capacity(int cls) { return std::size_t{4096} << cls; }

// Bytes in the spare buffers of every thread's pool, and their limit.
std::atomic<std::size_t> g_spare_bytes{0};
std::atomic<std::size_t> g_spare_limit{Buffer::kDefaultSpareLimit};

struct Pool {
  std::vector<std::byte*> free[kClasses];
  ~Pool() {
    for (int c = 0; c < kClasses; ++c) {
      for (auto* p : free[c]) std::free(p);
      g_spare_bytes.fetch_sub(free[c].size() * capacity(c), std::memory_order_relaxed);
    }
  }
};
thread_local Pool t_pool;

// Reserves room for one more spare buffer of `bytes` under the limit.
bool reserve_spare(std::size_t bytes) {
  std::size_t cur = g_spare_bytes.load(std::memory_order_relaxed);
  const std::size_t limit = g_spare_limit.load(std::memory_order_relaxed);
  do {
    if (cur + bytes > limit) return false;
  } while (!g_spare_bytes.compare_exchange_weak(cur, cur + bytes, std::memory_order_relaxed));
  return true;
}

int class_of(std::size_t n) {
  int c = 0;
  std::size_t s = 4096;
  while (s < n) {
    s <<= 1;
    ++c;
  }
  return c;
}

// Coroutine frames: per-thread free lists by 64-byte step up to 2 KiB.
constexpr std::size_t kFrameStep = 64;
constexpr std::size_t kFrameClasses = 32;
struct FramePool {
  std::vector<void*> free[kFrameClasses];
  ~FramePool() {
    for (auto& v : free)
      for (auto* p : v) ::operator delete(p);
  }
};
thread_local FramePool t_frames;

}  // namespace

Buffer Buffer::get(std::size_t n) {
  Buffer b;
  if (n == 0) return b;
  int c = class_of(n);
  if (c < kClasses && !t_pool.free[c].empty()) {
    b.data_ = t_pool.free[c].back();
    t_pool.free[c].pop_back();
    g_spare_bytes.fetch_sub(capacity(c), std::memory_order_relaxed);
  } else {
    std::size_t cap = c < kClasses ? (std::size_t{4096} << c) : n;
    void* p = std::aligned_alloc(kBufferAlign, (cap + kBufferAlign - 1) / kBufferAlign * kBufferAlign);
    CHECK(p != nullptr);  // out of memory is fatal, as for new
    b.data_ = static_cast<std::byte*>(p);
  }
  b.size_ = n;
  b.cls_ = c;
  return b;
}

void Buffer::release() noexcept {
  if (!data_) return;
  if (cls_ < kClasses && t_pool.free[cls_].size() < kKeep[cls_] && reserve_spare(capacity(cls_))) {
    t_pool.free[cls_].push_back(data_);
  } else {
    std::free(data_);
  }
  data_ = nullptr;
  size_ = 0;
}

std::size_t Buffer::spare_bytes() { return g_spare_bytes.load(std::memory_order_relaxed); }

void Buffer::set_spare_limit(std::size_t bytes) {
  g_spare_limit.store(bytes, std::memory_order_relaxed);
  // Spares already over a lowered limit: this thread's, from the largest
  // class down (other threads' go as they take them or exit).
  for (int c = kClasses - 1; c >= 0 && g_spare_bytes.load(std::memory_order_relaxed) > bytes; --c) {
    auto& v = t_pool.free[c];
    while (!v.empty() && g_spare_bytes.load(std::memory_order_relaxed) > bytes) {
      std::free(v.back());
      v.pop_back();
      g_spare_bytes.fetch_sub(capacity(c), std::memory_order_relaxed);
    }
  }
}

std::size_t Buffer::spare_limit() { return g_spare_limit.load(std::memory_order_relaxed); }

namespace detail {

void* frame_alloc(std::size_t n) {
  std::size_t c = (n + kFrameStep - 1) / kFrameStep;
  if (c < kFrameClasses && !t_frames.free[c].empty()) {
    void* p = t_frames.free[c].back();
    t_frames.free[c].pop_back();
    return p;
  }
  return ::operator new(c < kFrameClasses ? c * kFrameStep : n);
}

void frame_free(void* p, std::size_t n) noexcept {
  std::size_t c = (n + kFrameStep - 1) / kFrameStep;
  if (c < kFrameClasses && t_frames.free[c].size() < 1024) {
    t_frames.free[c].push_back(p);
    return;
  }
  ::operator delete(p);
}

}  // namespace detail
}  // namespace strata
