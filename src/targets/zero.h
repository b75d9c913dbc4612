// ZeroTarget: reads zeros, discards writes (dm's zero).
#pragma once

#include "core/target.h"
#include "targets/resolver.h"

namespace strata {

class ZeroTarget final : public Target {
 public:
  static constexpr std::string_view kHelp = "zero\n  Reads return zeros; writes are discarded.";
  static Result<std::shared_ptr<Target>> create(Params& p, Resolver& r);

  explicit ZeroTarget(uint64_t length) : length_(length) {}
  uint64_t size() const override { return length_; }
  Caps caps() const override;
  std::string table_line() const override { return "zero"; }

  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override;
  std::optional<std::span<const std::byte>> read_view(Queue& q, uint64_t offset, uint64_t length) override {
    (void)q;
    (void)offset;
    return zero_view(length);
  }
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override;
  Task<Result<>> flush(Queue& q) override;
  Task<Result<>> trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<>> zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<Extents>> extents(Queue& q, uint64_t offset, uint64_t length) override;

 private:
  uint64_t length_;
};

}  // namespace strata
