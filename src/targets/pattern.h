// PatternTarget: read-only test data in which every 8-byte word holds its own
// byte offset, big-endian (nbdkit's pattern plugin), so any misplaced byte is
// visible in a test.
#pragma once

#include "core/target.h"
#include "targets/resolver.h"

namespace strata {

class PatternTarget final : public Target {
 public:
  static constexpr std::string_view kHelp =
      "pattern\n  Read-only; every 8-byte word holds its own offset (big-endian).";
  static Result<std::shared_ptr<Target>> create(Params& p, Resolver& r);

  explicit PatternTarget(uint64_t length) : length_(length) {}
  uint64_t size() const override { return length_; }
  Caps caps() const override;
  std::string table_line() const override { return "pattern"; }

  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override;
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override;
  Task<Result<>> flush(Queue& q) override;

  // The byte at `offset` of the pattern.
  static std::byte byte_at(uint64_t offset);

 private:
  uint64_t length_;
};

}  // namespace strata
