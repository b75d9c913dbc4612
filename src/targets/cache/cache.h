// CacheTarget: a persistent local read cache in front of a read-only device
// (a golden image on NFS or RBD, a read-only cow stack): chunks read once are
// kept in a local file and read from it afterwards, across restarts.
//
//   cache <device> <cache-file> [size=BYTES] [chunk=BYTES]
//
// The cache file (docs/targets/cache.md): a header naming the source's
// identity() and the geometry, a slot table (per slot: the source chunk it
// holds + 1, or 0) and `size` bytes of slots. A source whose identity differs
// from the header's (a file changed or replaced, a layer remade, another
// snapshot) empties the cache at load; one that changes while served turns
// the cache off until the next load (every read goes to the source).
//
// Crash rules (kill -9 and power cut): a slot's entry is written only after
// a flush of the cache file that follows its data; an entry is cleared, and
// that made durable, before its slot is given other data. The cache thus
// never returns bytes of another chunk or of an older identity: at worst it
// forgets a chunk.
//
// Threads. Reads run on any queue; the slot state lives under mu_. A
// background thread (the flusher) writes entries in batches: once per
// kFlushInterval or when an eviction needs free slots.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/buffer.h"
#include "core/queue.h"
#include "core/target.h"
#include "core/thread_annotations.h"
#include "targets/file_lock.h"
#include "targets/resolver.h"

namespace strata {

class CacheTarget final : public Target {
 public:
  static constexpr std::string_view kHelp =
      "cache <device> <cache-file> [size=BYTES] [chunk=BYTES]\n"
      "  A persistent local read cache over a read-only device defined earlier\n"
      "  (an nfs or rbd golden image, a read-only cow stack): chunks read once\n"
      "  are kept in <cache-file> (created if missing; size= bytes of chunks,\n"
      "  default the device's size, least recently used evicted; chunk= 4K..4M,\n"
      "  default 64K). Read-only. Emptied when the device's identity changes.";
  static Result<std::shared_ptr<Target>> create(Params& p, Resolver& r);

  ~CacheTarget() override;
  CacheTarget(const CacheTarget&) = delete;
  CacheTarget& operator=(const CacheTarget&) = delete;

  uint64_t size() const override { return length_; }
  Caps caps() const override;
  BlockSizes block_sizes() const override { return source_->block_sizes(); }
  std::string table_line() const override;
  void info(InfoSink& out) const override;
  std::string identity() const override { return source_->identity(); }
  Result<> attach_queue(Queue& q) override { return source_->attach_queue(q); }

  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override;
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override;
  Task<Result<>> flush(Queue& q) override;
  Task<Result<Extents>> extents(Queue& q, uint64_t offset, uint64_t length) override {
    return source_->extents(q, offset, length);
  }
  // NBD_CMD_CACHE: reads the range through the cache (warms it).
  Task<Result<>> cache(Queue& q, uint64_t offset, uint64_t length) override;

  // Waits until every slot filled so far has its entry written and durable
  // (tests; a clean close does it too).
  void persist_now();

  static constexpr uint64_t kHeaderSize = 4096;
  static constexpr uint64_t kFree = 0;  // a slot table entry: no chunk

 private:
  CacheTarget() = default;
  enum class Slot : uint8_t { kFree, kFilling, kValid, kEvicting };
  struct SlotState {
    uint64_t chunk = 0;
    uint32_t readers = 0;  // reads from the slot in progress
    Slot state = Slot::kFree;
    bool referenced = false;  // CLOCK: read since the hand last passed
  };
  Result<> open_file(const std::string& identity);
  Result<> init_file(const std::string& identity);
  Result<> write_header(const std::string& identity);
  uint64_t slot_offset(uint32_t slot) const { return data_off_ + uint64_t{slot} * chunk_; }
  uint64_t chunk_bytes(uint64_t chunk) const { return std::min<uint64_t>(chunk_, length_ - chunk * chunk_); }
  // A slot for `chunk` (kFilling), or -1: none free now (an eviction is asked
  // of the flusher) or the chunk is cached or being filled already.
  int64_t claim_slot(uint64_t chunk) REQUIRES(mu_);
  // Writes the chunks of `data` (from first_chunk on) to free slots; fill()
  // owns its buffer and runs on its own, fill_from() writes from the caller's.
  Task<void> fill(Queue& q, uint64_t first_chunk, std::shared_ptr<Buffer> data);
  Task<void> fill_from(Queue& q, uint64_t first_chunk, std::span<const std::byte> data);
  Task<Result<>> read_chunks(Queue& q, std::span<std::byte> buf, uint64_t offset);
  void check_identity();
  void flusher();
  void persist_round();

  std::shared_ptr<Target> source_;
  std::string source_name_, path_;
  uint64_t length_ = 0, cache_bytes_ = 0;
  uint32_t chunk_ = 65536;
  uint32_t nslots_ = 0;
  uint64_t data_off_ = 0;
  int fd_ = -1;
  // The same file opened O_DIRECT, for writing fills: no copy into the page
  // cache and no writeback of it (-1 where the filesystem has no O_DIRECT,
  // tmpfs: fills then go through fd_).
  int direct_fd_ = -1;
  std::shared_ptr<FileLock> lock_;
  std::string identity_;  // the source's at load
  std::atomic<bool> bypass_{false};  // the source changed while served
  std::atomic<int64_t> next_identity_check_ns_{0};

  mutable Mutex mu_;
  std::vector<SlotState> slots_ GUARDED_BY(mu_);
  std::unordered_map<uint64_t, uint32_t> where_ GUARDED_BY(mu_);  // chunk -> slot (valid or filling)
  std::vector<uint32_t> free_ GUARDED_BY(mu_);
  std::vector<uint32_t> filled_ GUARDED_BY(mu_);    // valid, entry not yet written
  std::vector<uint32_t> evicting_ GUARDED_BY(mu_);  // cleared in memory, entry not yet durable
  uint32_t hand_ GUARDED_BY(mu_) = 0;
  bool want_evict_ GUARDED_BY(mu_) = false;
  bool stop_ GUARDED_BY(mu_) = false;
  uint64_t rounds_asked_ GUARDED_BY(mu_) = 0, rounds_done_ GUARDED_BY(mu_) = 0;
  std::condition_variable_any cv_;
  std::thread flusher_;
  std::atomic<uint64_t> fills_in_flight_{0}, fill_bytes_in_flight_{0};

  // Counters (status and metrics).
  std::atomic<uint64_t> hits_{0}, misses_{0}, hit_bytes_{0}, miss_bytes_{0}, fills_{0}, evictions_{0},
      fills_skipped_{0}, used_{0}, invalidations_{0};
};

}  // namespace strata
