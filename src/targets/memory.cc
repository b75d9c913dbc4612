#include "targets/memory.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <fmt/core.h>

#include "core/log.h"

namespace strata {

Result<std::shared_ptr<Target>> MemoryTarget::create(Params& p, Resolver& r) {
  (void)r;
  TRY(p.finish(0));
  return std::shared_ptr<Target>(TRY(make(p.length)));
}

Result<std::shared_ptr<MemoryTarget>> MemoryTarget::make(uint64_t size) {
  if (size > kMaxSize)
    return fail(EINVAL, fmt::format("{} bytes is more than the largest memory device ({} bytes, {} TiB)", size,
                                    kMaxSize, kMaxSize >> 40));
  auto t = std::make_shared<MemoryTarget>(size);
  if (!t->top_) return fail(ENOMEM, fmt::format("{} bytes: no memory for its page table", size));
  return t;
}

MemoryTarget::MemoryTarget(uint64_t size)
    : size_(size),
      nleaves_(std::max<uint64_t>(((size + kPage - 1) / kPage + kLeafPages - 1) / kLeafPages, 1)),
      top_(static_cast<std::atomic<Slot*>*>(std::calloc(nleaves_, sizeof(std::atomic<Slot*>)))) {
  CHECK(size <= kMaxSize);
}

MemoryTarget::~MemoryTarget() {
  for (uint64_t l = 0; top_ && l < nleaves_; ++l) {
    Slot* leaf = top_[l].load();
    if (!leaf) continue;
    for (uint64_t i = 0; i < kLeafPages; ++i) delete[] leaf[i].load();
    std::free(leaf);
  }
  std::free(top_);
}

Caps MemoryTarget::caps() const {
  Caps c;
  c.can_trim = true;
  c.can_fast_zero = true;
  c.can_extents = true;
  return c;
}

void MemoryTarget::info(InfoSink& out) const { out.add("allocated_bytes", allocated_.load() * kPage); }

std::byte* MemoryTarget::page(uint64_t i, bool allocate) {
  std::atomic<Slot*>& top = top_[i / kLeafPages];
  Slot* leaf = top.load(std::memory_order_acquire);
  if (!leaf) {
    if (!allocate) return nullptr;
    auto* fresh = static_cast<Slot*>(std::calloc(kLeafPages, sizeof(Slot)));
    CHECK(fresh != nullptr);  // out of memory is fatal, as for new
    if (top.compare_exchange_strong(leaf, fresh, std::memory_order_acq_rel))
      leaf = fresh;
    else
      std::free(fresh);
  }
  Slot& slot = leaf[i % kLeafPages];
  std::byte* p = slot.load(std::memory_order_acquire);
  if (p || !allocate) return p;
  auto* fresh = new std::byte[kPage]();
  if (slot.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) {
    allocated_.fetch_add(1, std::memory_order_relaxed);
    return fresh;
  }
  delete[] fresh;
  return p;
}

Task<Result<>> MemoryTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  (void)q;
  while (!buf.empty()) {
    uint64_t in = offset % kPage;
    uint64_t n = std::min<uint64_t>(buf.size(), kPage - in);
    std::byte* p = page(offset / kPage, false);
    if (p)
      std::memcpy(buf.data(), p + in, n);
    else
      std::memset(buf.data(), 0, n);
    buf = buf.subspan(n);
    offset += n;
  }
  co_return Result<>{};
}

Task<Result<>> MemoryTarget::write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  (void)q, (void)f;
  while (!buf.empty()) {
    uint64_t in = offset % kPage;
    uint64_t n = std::min<uint64_t>(buf.size(), kPage - in);
    std::memcpy(page(offset / kPage, true) + in, buf.data(), n);
    buf = buf.subspan(n);
    offset += n;
  }
  co_return Result<>{};
}

Task<Result<>> MemoryTarget::flush(Queue& q) {
  (void)q;
  co_return Result<>{};
}

void MemoryTarget::zero_range(uint64_t offset, uint64_t length) {
  while (length > 0) {
    uint64_t in = offset % kPage;
    uint64_t n = std::min<uint64_t>(length, kPage - in);
    if (std::byte* p = page(offset / kPage, false)) std::memset(p + in, 0, n);
    offset += n;
    length -= n;
  }
}

Task<Result<>> MemoryTarget::trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  (void)q, (void)f;
  zero_range(offset, length);
  co_return Result<>{};
}

Task<Result<>> MemoryTarget::zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  (void)q, (void)f;
  zero_range(offset, length);
  co_return Result<>{};
}

Task<Result<Extents>> MemoryTarget::extents(Queue& q, uint64_t offset, uint64_t length) {
  (void)q;
  Extents e;
  while (length > 0) {
    uint64_t in = offset % kPage;
    uint64_t n = std::min<uint64_t>(length, kPage - in);
    append_extent(e, n, page(offset / kPage, false) ? 0 : (Extent::kHole | Extent::kZero));
    offset += n;
    length -= n;
  }
  co_return e;
}

}  // namespace strata
