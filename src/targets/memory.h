// MemoryTarget: a sparse RAM disk, for unit tests and benchmarks. Pages of
// 64 KiB are allocated on first write (lock-free, by compare-and-swap) and
// never freed before the target is; unallocated pages read as zeros and are
// reported as holes. The page table has two levels, each allocated zeroed by
// calloc (untouched, it costs address space, not memory): a leaf of 65,536
// page pointers (4 GiB of device) is made on the first write into its range,
// so even a 1 PiB device takes no memory until written.
#pragma once

#include <atomic>
#include <memory>

#include "core/target.h"
#include "targets/resolver.h"

namespace strata {

class MemoryTarget final : public Target {
 public:
  static constexpr std::string_view kHelp =
      "memory\n  A sparse in-memory disk, lost when the server exits.";
  static Result<std::shared_ptr<Target>> create(Params& p, Resolver& r);

  // Fails when the size is over kMaxSize (or the page table cannot be had).
  static Result<std::shared_ptr<MemoryTarget>> make(uint64_t size);
  // For tests: a size make() accepts.
  explicit MemoryTarget(uint64_t size);
  ~MemoryTarget() override;
  MemoryTarget(const MemoryTarget&) = delete;
  MemoryTarget& operator=(const MemoryTarget&) = delete;

  uint64_t size() const override { return size_; }
  Caps caps() const override;
  std::string table_line() const override { return "memory"; }
  void info(InfoSink& out) const override;

  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override;
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override;
  Task<Result<>> flush(Queue& q) override;
  Task<Result<>> trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<>> zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<Extents>> extents(Queue& q, uint64_t offset, uint64_t length) override;

 private:
  static constexpr uint64_t kPage = 64 * 1024;
  static constexpr uint64_t kLeafPages = 1 << 16;
  // The largest device: the top level of its page table stays under 32 MiB
  // of address space.
  static constexpr uint64_t kMaxSize = (32ull << 20) / sizeof(void*) * kLeafPages * kPage;
  using Slot = std::atomic<std::byte*>;
  std::byte* page(uint64_t i, bool allocate);
  void zero_range(uint64_t offset, uint64_t length);

  uint64_t size_;
  uint64_t nleaves_;
  // top_[i] points to leaf i (kLeafPages slots), or is null.
  std::atomic<Slot*>* top_;
  std::atomic<uint64_t> allocated_{0};
};

}  // namespace strata
