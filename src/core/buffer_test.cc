#include "core/buffer.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace strata {
namespace {

struct SpareLimit {
  std::size_t old = Buffer::spare_limit();
  ~SpareLimit() { Buffer::set_spare_limit(old); }
};

TEST(BufferPool, SparesAreKeptUpToTheLimit) {
  SpareLimit restore;
  Buffer::set_spare_limit(0);  // frees this thread's spares
  const std::size_t base = Buffer::spare_bytes();  // other threads' (none, unless a test left one running)
  Buffer::set_spare_limit(base + (1 << 20));
  {
    std::vector<Buffer> v;
    for (int i = 0; i < 64; ++i) v.push_back(Buffer::get(64 << 10));  // 4 MiB in all
  }
  EXPECT_EQ(Buffer::spare_bytes(), base + (1 << 20)) << "16 of the 64 buffers kept";
  // Taken again: from the spares, which shrink.
  Buffer a = Buffer::get(64 << 10);
  EXPECT_EQ(Buffer::spare_bytes(), base + (1 << 20) - (64 << 10));
  a = Buffer();
  EXPECT_EQ(Buffer::spare_bytes(), base + (1 << 20));
  // A lower limit frees spares over it at once.
  Buffer::set_spare_limit(base + (256 << 10));
  EXPECT_LE(Buffer::spare_bytes(), base + (256 << 10));
}

TEST(BufferPool, SparesOfAThreadThatExitsAreFreed) {
  SpareLimit restore;
  Buffer::set_spare_limit(0);
  const std::size_t before = Buffer::spare_bytes();
  Buffer::set_spare_limit(before + (8 << 20));
  std::thread([before] {
    std::vector<Buffer> v;
    for (int i = 0; i < 8; ++i) v.push_back(Buffer::get(256 << 10));
    v.clear();
    EXPECT_EQ(Buffer::spare_bytes(), before + (2 << 20));
  }).join();
  EXPECT_EQ(Buffer::spare_bytes(), before);
}

}  // namespace
}  // namespace strata
