// Buffer: an owned, 4096-byte-aligned I/O buffer (aligned so that O_DIRECT
// targets can use it as is). Buffers come from a per-thread pool of power-of-
// two size classes, so the steady-state data path does not call malloc. A
// Buffer may be destroyed on another thread than the one that made it; it then
// goes back to the pool of the thread that destroys it.
//
// The spare buffers the pools keep are bounded process-wide by a limit on
// their bytes (set_spare_limit; the NBD server sets it to the part of
// --max-memory its budget keeps for them): past it, a released buffer is freed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

namespace strata {

constexpr std::size_t kBufferAlign = 4096;

class Buffer {
 public:
  Buffer() = default;
  // A buffer of at least n bytes; size() == n. Contents are undefined.
  static Buffer get(std::size_t n);

  // Bytes the pools of every thread hold in spare buffers, and their limit
  // (default kDefaultSpareLimit).
  static std::size_t spare_bytes();
  static void set_spare_limit(std::size_t bytes);
  static std::size_t spare_limit();
  static constexpr std::size_t kDefaultSpareLimit = 64 << 20;
  Buffer(Buffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)),
        cls_(o.cls_) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      cls_ = o.cls_;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { release(); }

  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::span<std::byte> span() const { return {data_, size_}; }

 private:
  void release() noexcept;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  int cls_ = 0;
};

}  // namespace strata
