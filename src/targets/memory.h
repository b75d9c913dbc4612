// MemoryTarget: a sparse RAM disk, for unit tests and benchmarks. Pages of
// 64 KiB are allocated on first write (lock-free, by compare-and-swap) and
// never freed before the target is; unallocated pages read as zeros and are
// reported as holes.
#pragma once

#include <atomic>
#include <memory>
#include <vector>

#include "core/target.h"
#include "targets/registry.h"

namespace strata {

class MemoryTarget final : public Target {
 public:
  static constexpr std::string_view kHelp =
      "memory\n  A sparse in-memory disk, lost when the server exits.";
  static Result<std::shared_ptr<Target>> create(Params& p, Resolver& r);

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
  std::byte* page(uint64_t i, bool allocate);
  void zero_range(uint64_t offset, uint64_t length);

  uint64_t size_;
  std::vector<std::atomic<std::byte*>> pages_;
  std::atomic<uint64_t> allocated_{0};
};

}  // namespace strata
