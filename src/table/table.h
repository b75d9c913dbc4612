// Tables: a device is a list of segments as dmsetup writes them,
//   <start_sector> <num_sectors> <target> <args...>
// one per line, 512-byte sectors, `#` starting a comment. A table file may
// hold several devices, each under a `[name]` header (`[name ro]` for a
// read-only export); lines before the first header belong to a device with
// the default name. Segments must be contiguous from sector 0.
//
// parse_config() checks the syntax and layout; build_devices() creates the
// targets (opening files). Both fail on the first bad line with a message
// naming the source, line, field and reason, and nothing is served from a
// table that failed.
//
// TableTarget splits each request across the segments it spans. A request
// inside one segment (the common case) is handed to that segment's target
// without a coroutine frame of its own.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"
#include "core/target.h"
#include "table/registry.h"

namespace strata {

constexpr uint64_t kSectorSize = 512;

struct SegmentSpec {
  int line = 0;
  uint64_t start_sector = 0;
  uint64_t num_sectors = 0;
  std::string target;
  std::vector<std::string> args;
};

struct DeviceSpec {
  std::string name;
  int line = 0;  // of its header, 0 if none
  bool read_only = false;
  std::vector<SegmentSpec> segments;
};

Result<std::vector<DeviceSpec>> parse_config(std::string_view text, std::string_view source,
                                             std::string_view default_name);

// Relative paths in a table are relative to the table file's directory, as in
// config formats, not to the working directory of whoever reads it: this
// rewrites every relative path argument of `spec` (those its target type
// lists: TargetType::path_arg and path_options) as `dir`/PATH. `dir` is
// absolute; absolute paths and non-path arguments are left as they are.
void resolve_paths(DeviceSpec& spec, std::string_view dir);
void resolve_paths(std::vector<DeviceSpec>& specs, std::string_view dir);
// The absolute directory of a table file named `path` (relative to the
// working directory), symlinks and `..` resolved.
std::string table_dir(std::string_view path);

class TableTarget final : public Target {
 public:
  struct Segment {
    uint64_t start;   // bytes
    uint64_t length;  // bytes
    std::shared_ptr<Target> target;
  };
  explicit TableTarget(std::vector<Segment> segments);

  const std::vector<Segment>& segments() const { return segments_; }

  uint64_t size() const override { return size_; }
  Caps caps() const override { return caps_; }
  BlockSizes block_sizes() const override { return block_sizes_; }
  std::string table_line() const override;
  std::string identity() const override;
  void info(InfoSink& out) const override;
  Result<> attach_queue(Queue& q) override;

  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override;
  std::optional<std::span<const std::byte>> read_view(Queue& q, uint64_t offset, uint64_t length) override;
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override;
  Task<Result<>> flush(Queue& q) override;
  Task<Result<>> trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<>> zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<Extents>> extents(Queue& q, uint64_t offset, uint64_t length) override;
  Task<Result<>> cache(Queue& q, uint64_t offset, uint64_t length) override;
  // The union of the segments' contexts; a segment without one reports 0.
  std::vector<std::string> contexts() const override;
  Task<Result<Extents>> context_extents(Queue& q, std::string_view context, uint64_t offset,
                                        uint64_t length) override;

 private:
  std::size_t find(uint64_t offset) const;
  enum class Op { kRead, kWrite, kTrim, kZero, kCache };
  Task<Result<>> split(Queue& q, Op op, std::byte* buf, uint64_t offset, uint64_t length, IoFlags f);
  Task<Result<Extents>> split_extents(Queue& q, uint64_t offset, uint64_t length);
  Task<Result<>> flush_all(Queue& q);

  std::vector<Segment> segments_;
  uint64_t size_ = 0;
  Caps caps_;
  BlockSizes block_sizes_;
};

// The devices of one configuration, by name; resolves `linear` references to
// devices defined earlier.
class DeviceSet final : public Resolver {
 public:
  struct Device {
    std::string name;
    bool read_only = false;
    std::shared_ptr<TableTarget> table;
  };
  Result<std::shared_ptr<Target>> device(std::string_view name) override;
  Result<std::unique_ptr<RemoteFile>> remote_file(std::string_view url) override;

  // Creates every device of `specs`; `read_only` forces all of them read-only.
  static Result<std::unique_ptr<DeviceSet>> build(const std::vector<DeviceSpec>& specs, std::string_view source,
                                                  bool read_only);
  const std::vector<Device>& devices() const { return devices_; }

 private:
  std::vector<Device> devices_;
};

}  // namespace strata
