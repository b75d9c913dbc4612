// ErrorTarget: every read, write, trim, zero and block status fails with EIO
// (dm's error); a flush succeeds, as it has nothing to make durable. For tests: a segment
// that must fail, and a fault-injection lower device in unit tests.
#pragma once

#include "core/target.h"
#include "targets/resolver.h"

namespace strata {

class ErrorTarget final : public Target {
 public:
  static constexpr std::string_view kHelp = "error\n  Every read and write fails with EIO (flushes succeed).";
  static Result<std::shared_ptr<Target>> create(Params& p, Resolver& r);

  explicit ErrorTarget(uint64_t length) : length_(length) {}
  uint64_t size() const override { return length_; }
  Caps caps() const override;
  std::string table_line() const override { return "error"; }

  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override;
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override;
  Task<Result<>> flush(Queue& q) override;
  Task<Result<>> trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<>> zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<Extents>> extents(Queue& q, uint64_t offset, uint64_t length) override;

 private:
  uint64_t length_;
};

}  // namespace strata
