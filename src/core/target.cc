#include "core/target.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "core/buffer.h"

namespace strata {

Caps Caps::intersect(const Caps& a, const Caps& b) {
  Caps c;
  c.can_write = a.can_write && b.can_write;
  c.can_flush = a.can_flush && b.can_flush;
  c.can_fua = a.can_fua && b.can_fua;
  c.can_trim = a.can_trim && b.can_trim;
  c.can_zero = a.can_zero && b.can_zero;
  c.can_fast_zero = a.can_fast_zero && b.can_fast_zero;
  c.can_extents = a.can_extents || b.can_extents;
  c.can_cache = a.can_cache || b.can_cache;
  c.can_multi_conn = a.can_multi_conn && b.can_multi_conn;
  return c;
}

std::optional<std::span<const std::byte>> zero_view(std::size_t n) {
  constexpr std::size_t kZeroMap = 32u << 20;
  // Private and never written: every page reads as the kernel's zero page,
  // so the mapping costs address space only.
  static std::byte* const zeros = [] {
    void* m = ::mmap(nullptr, kZeroMap, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return m == MAP_FAILED ? nullptr : static_cast<std::byte*>(m);
  }();
  if (!zeros || n > kZeroMap) return std::nullopt;
  return std::span<const std::byte>(zeros, n);
}

void append_extent(Extents& e, uint64_t length, uint32_t flags) {
  if (length == 0) return;
  if (!e.empty() && e.back().flags == flags) {
    e.back().length += length;
    return;
  }
  e.push_back(Extent{length, flags});
}

void IoStats::report(InfoSink& out) const {
  auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  out.add("in_flight", get(in_flight));
  out.add("reads", get(reads));
  out.add("read_bytes", get(read_bytes));
  out.add("writes", get(writes));
  out.add("write_bytes", get(write_bytes));
  out.add("flushes", get(flushes));
  out.add("trims", get(trims));
  out.add("trim_bytes", get(trim_bytes));
  out.add("zeros", get(zeros));
  out.add("zero_bytes", get(zero_bytes));
  out.add("errors", get(errors));
}

Task<Result<>> Target::trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  (void)q, (void)offset, (void)length, (void)f;
  co_return fail(ENOTSUP, "trim is not supported by " + table_line());
}

Task<Result<>> Target::zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  if (f.fast_zero) co_return fail(ENOTSUP, "fast zero is not supported");
  constexpr uint64_t kChunk = 1 << 20;
  Buffer zeros = Buffer::get(std::min(length, kChunk));
  std::memset(zeros.data(), 0, zeros.size());
  while (length > 0) {
    uint64_t n = std::min<uint64_t>(length, zeros.size());
    IoFlags wf;
    wf.fua = f.fua && n == length;
    CO_TRY(co_await write(q, std::span<const std::byte>(zeros.data(), n), offset, wf));
    offset += n;
    length -= n;
  }
  co_return Result<>{};
}

Task<Result<Extents>> Target::extents(Queue& q, uint64_t offset, uint64_t length) {
  (void)q, (void)offset;
  Extents e;
  append_extent(e, length, 0);
  co_return e;
}

Task<Result<>> Target::cache(Queue& q, uint64_t offset, uint64_t length) {
  (void)q, (void)offset, (void)length;
  co_return Result<>{};
}

}  // namespace strata

namespace strata {

Task<Result<Extents>> Target::context_extents(Queue& q, std::string_view context, uint64_t offset,
                                              uint64_t length) {
  (void)q, (void)offset, (void)length;
  co_return fail(EINVAL, "no metadata context " + std::string(context));
}

}  // namespace strata
