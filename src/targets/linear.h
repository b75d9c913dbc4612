// LinearTarget: a range of another device of the same configuration (dm's
// linear): device byte p is lower byte offset + p.
#pragma once

#include "core/target.h"
#include "targets/resolver.h"

namespace strata {

class LinearTarget final : public Target {
 public:
  static constexpr std::string_view kHelp =
      "linear <device> <offset_sectors>\n"
      "  A range of another device defined earlier in the same table file,\n"
      "  starting at 512-byte sector <offset_sectors>.";
  static Result<std::shared_ptr<Target>> create(Params& p, Resolver& r);

  uint64_t size() const override { return length_; }
  Caps caps() const override { return lower_->caps(); }
  BlockSizes block_sizes() const override { return lower_->block_sizes(); }
  std::string table_line() const override;
  void info(InfoSink& out) const override { lower_->info(out); }
  std::string identity() const override {
    std::string id = lower_->identity();
    return id.empty() ? id : "linear(" + id + "@" + std::to_string(offset_) + "+" + std::to_string(length_) + ")";
  }
  Result<> attach_queue(Queue& q) override { return lower_->attach_queue(q); }

  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override {
    return lower_->read(q, buf, offset_ + offset);
  }
  std::optional<std::span<const std::byte>> read_view(Queue& q, uint64_t offset, uint64_t length) override {
    return lower_->read_view(q, offset_ + offset, length);
  }
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override {
    return lower_->write(q, buf, offset_ + offset, f);
  }
  Task<Result<>> flush(Queue& q) override { return lower_->flush(q); }
  Task<Result<>> trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override {
    return lower_->trim(q, offset_ + offset, length, f);
  }
  Task<Result<>> zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override {
    return lower_->zero(q, offset_ + offset, length, f);
  }
  Task<Result<Extents>> extents(Queue& q, uint64_t offset, uint64_t length) override {
    return lower_->extents(q, offset_ + offset, length);
  }
  Task<Result<>> cache(Queue& q, uint64_t offset, uint64_t length) override {
    return lower_->cache(q, offset_ + offset, length);
  }

 private:
  LinearTarget(std::shared_ptr<Target> lower, std::string name, uint64_t offset, uint64_t length)
      : lower_(std::move(lower)), name_(std::move(name)), offset_(offset), length_(length) {}
  std::shared_ptr<Target> lower_;
  std::string name_;
  uint64_t offset_;
  uint64_t length_;
};

}  // namespace strata
