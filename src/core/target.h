// Target: a byte range [0, size()) that can be read and written. Every device
// strata serves is a Target; layers (cow, dirty maps, error injection) are Targets
// that wrap a lower Target, deriving from ForwardingTarget so they override
// only what they change (leveldb's EnvWrapper, nbdkit's filter `next`).
//
// Threads: size(), caps(), block_sizes(), table_line() and info() are const
// and may be called from any thread. The I/O methods are coroutines that run
// on a queue thread and use that queue's ring; they may run concurrently on
// several queues, so a target's mutable state is per queue (attach_queue), or
// atomic, or has one owner.
//
// Errors are values: every I/O returns Result; Error::code is the errno the
// client receives.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"
#include "core/task.h"

namespace strata {

class LayerStack;  // core/layer_stack.h
class Queue;

struct IoFlags {
  bool fua = false;        // write: durable before completion
  bool may_trim = false;   // zero: may deallocate (NBD: no NO_HOLE flag)
  bool fast_zero = false;  // zero: fail with ENOTSUP unless zeroing is fast
};

struct Caps {
  bool can_write = true;
  bool can_flush = true;
  bool can_fua = true;
  bool can_trim = false;
  bool can_zero = true;        // write_zeroes works (maybe by writing zeros)
  bool can_fast_zero = false;  // write_zeroes is faster than writing zeros
  bool can_extents = false;    // extents() reports real holes/zeros
  bool can_cache = false;      // cache() prefetches
  // A flush on any queue makes every write completed on every queue durable,
  // so NBD may advertise multi-conn.
  bool can_multi_conn = true;
  static Caps intersect(const Caps& a, const Caps& b);
};

struct BlockSizes {
  uint32_t minimum = 1;
  uint32_t preferred = 4096;
  uint32_t maximum = 32 * 1024 * 1024;
};

// One extent of block status: NBD base:allocation flags.
struct Extent {
  static constexpr uint32_t kHole = 1;
  static constexpr uint32_t kZero = 2;
  uint64_t length;
  uint32_t flags;
};
using Extents = std::vector<Extent>;
// Appends an extent, merging it into the last one when the flags match.
void append_extent(Extents& e, uint64_t length, uint32_t flags);

// Key/value status lines (dm's INFO), filled by targets, printed or turned
// into JSON by the control layer (targets never see JSON).
class InfoSink {
 public:
  virtual ~InfoSink() = default;
  virtual void add(std::string_view key, uint64_t value) = 0;
  virtual void add(std::string_view key, std::string_view value) = 0;
};

// Request counters a target keeps: relaxed atomics, one cache line each
// group, bumped once per request.
struct IoStats {
  std::atomic<uint64_t> in_flight{0};
  std::atomic<uint64_t> reads{0}, read_bytes{0};
  std::atomic<uint64_t> writes{0}, write_bytes{0};
  std::atomic<uint64_t> flushes{0};
  std::atomic<uint64_t> trims{0}, trim_bytes{0};
  std::atomic<uint64_t> zeros{0}, zero_bytes{0};
  std::atomic<uint64_t> errors{0};
  void report(InfoSink& out) const;

  // Counts one request in flight for its lifetime.
  class Scope {
   public:
    explicit Scope(IoStats& s) : s_(s) { s_.in_flight.fetch_add(1, std::memory_order_relaxed); }
    ~Scope() { s_.in_flight.fetch_sub(1, std::memory_order_relaxed); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    IoStats& s_;
  };
  static void bump(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }
};

class Target {
 public:
  virtual ~Target() = default;

  virtual uint64_t size() const = 0;
  virtual Caps caps() const = 0;
  virtual BlockSizes block_sizes() const { return {}; }

  // The table text that recreates this target, dm's STATUSTYPE_TABLE:
  // "file /var/disk.img 0".
  virtual std::string table_line() const = 0;
  // dm's STATUSTYPE_INFO.
  virtual void info(InfoSink& out) const { (void)out; }

  // Per-queue state (a network client per queue); called on the queue thread
  // before the queue's first request.
  virtual Result<> attach_queue(Queue& q) {
    (void)q;
    return {};
  }

  virtual Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) = 0;
  // The bytes read() would return, straight from memory the target already
  // holds (a file's page cache, mapped), for the caller to send without
  // copying them into a buffer first; valid while the target lives. Returns
  // nothing when that could block (not in memory) or the target has no such
  // memory: the caller then uses read(). Never waits. Default: nothing.
  virtual std::optional<std::span<const std::byte>> read_view(Queue& q, uint64_t offset, uint64_t length) {
    (void)q;
    (void)offset;
    (void)length;
    return std::nullopt;
  }
  virtual Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) = 0;
  virtual Task<Result<>> flush(Queue& q) = 0;
  // Default: ENOTSUP.
  virtual Task<Result<>> trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f);
  // Default: writes zeros (ENOTSUP at once if f.fast_zero).
  virtual Task<Result<>> zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f);
  // Default: one data extent for the whole range.
  virtual Task<Result<Extents>> extents(Queue& q, uint64_t offset, uint64_t length);
  // Prefetch hint. Default: nothing to do.
  virtual Task<Result<>> cache(Queue& q, uint64_t offset, uint64_t length);

  // NBD metadata contexts this target answers besides base:allocation (e.g.
  // "strata:dirty:backup"), and their extents. Flags are the context's own
  // (for dirty maps: 1 = dirty). Default: none.
  virtual std::vector<std::string> contexts() const { return {}; }
  virtual Task<Result<Extents>> context_extents(Queue& q, std::string_view context, uint64_t offset,
                                                uint64_t length);

  // What the bytes are: a string that changes whenever they may have changed
  // other than through this target (a file modified or replaced, a layer
  // remade, a device reloaded), for a persistent read cache to key on; ""
  // when the target cannot tell (then nothing may cache it). Cheap: called
  // about once a second. Default: "".
  virtual std::string identity() const { return {}; }

  // A capability query: the stack of layers this target is (snapshot, merge,
  // per-layer status: core/layer_stack.h), or nullptr when it is not one.
  // Owned by the target, valid while it lives. Not forwarded by
  // ForwardingTarget. Default: nullptr.
  virtual LayerStack* layer_stack() { return nullptr; }
};

// Forwards everything to a lower target; a layer overrides what it changes.
// Except read_view: a layer that changes read() must not pass the lower
// target's bytes on unchanged, so a layer forwards it only by choice.
class ForwardingTarget : public Target {
 public:
  explicit ForwardingTarget(std::shared_ptr<Target> lower) : lower_(std::move(lower)) {}
  uint64_t size() const override { return lower_->size(); }
  Caps caps() const override { return lower_->caps(); }
  BlockSizes block_sizes() const override { return lower_->block_sizes(); }
  void info(InfoSink& out) const override { lower_->info(out); }
  Result<> attach_queue(Queue& q) override { return lower_->attach_queue(q); }
  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override {
    return lower_->read(q, buf, offset);
  }
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override {
    return lower_->write(q, buf, offset, f);
  }
  Task<Result<>> flush(Queue& q) override { return lower_->flush(q); }
  Task<Result<>> trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override {
    return lower_->trim(q, offset, length, f);
  }
  Task<Result<>> zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override {
    return lower_->zero(q, offset, length, f);
  }
  Task<Result<Extents>> extents(Queue& q, uint64_t offset, uint64_t length) override {
    return lower_->extents(q, offset, length);
  }
  Task<Result<>> cache(Queue& q, uint64_t offset, uint64_t length) override {
    return lower_->cache(q, offset, length);
  }
  std::vector<std::string> contexts() const override { return lower_->contexts(); }
  std::string identity() const override { return lower_->identity(); }
  Task<Result<Extents>> context_extents(Queue& q, std::string_view context, uint64_t offset,
                                        uint64_t length) override {
    return lower_->context_extents(q, context, offset, length);
  }

 protected:
  std::shared_ptr<Target> lower_;
};

// n zero bytes for a read_view (a read-only mapping of the shared zero page:
// no memory, always cached), or nothing when n is over 32 MiB.
std::optional<std::span<const std::byte>> zero_view(std::size_t n);

// Checks that [offset, offset+length) lies inside [0, size).
inline bool in_range(uint64_t size, uint64_t offset, uint64_t length) {
  return offset <= size && length <= size - offset;
}

}  // namespace strata
