#include "targets/memory.h"

#include <algorithm>
#include <cstring>

namespace strata {

Result<std::shared_ptr<Target>> MemoryTarget::create(Params& p, Resolver& r) {
  (void)r;
  TRY(p.finish(0));
  return std::make_shared<MemoryTarget>(p.length);
}

MemoryTarget::MemoryTarget(uint64_t size) : size_(size), pages_((size + kPage - 1) / kPage) {}

MemoryTarget::~MemoryTarget() {
  for (auto& p : pages_) delete[] p.load();
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
  std::byte* p = pages_[i].load(std::memory_order_acquire);
  if (p || !allocate) return p;
  auto* fresh = new std::byte[kPage]();
  if (pages_[i].compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) {
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
