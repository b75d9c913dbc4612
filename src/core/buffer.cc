#include "core/buffer.h"

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
constexpr std::size_t kKeep[kClasses] = {256, 256, 128, 64, 64, 32, 32, 16, 8, 4, 4, 2, 2, 1, 1};

struct Pool {
  std::vector<std::byte*> free[kClasses];
  ~Pool() {
    for (auto& v : free)
      for (auto* p : v) std::free(p);
  }
};
thread_local Pool t_pool;

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
  if (cls_ < kClasses && t_pool.free[cls_].size() < kKeep[cls_]) {
    t_pool.free[cls_].push_back(data_);
  } else {
    std::free(data_);
  }
  data_ = nullptr;
  size_ = 0;
}

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
