// DirtyTarget: write tracking over any device (loop write
// tracking, done better). It wraps a device and keeps named dirty maps, each a bitmap
// of the blocks (of its own granularity) written, trimmed or zeroed since the
// map's last checkpoint.
//
// Threads. The set of maps is published to every queue by post(): each queue
// reads only its own copy (lists_[q.id()]), so the write path takes no lock.
// Bits are std::atomic words (several queues may dirty the same word). The
// control thread creates, checkpoints, stops and freezes maps.
//
// Persistence (docs/dirty-maps.md). A map lives in STATE_DIR/DEVICE/NAME.dmap:
// a header and two bitmap slots. The file is mapped shared and the bitmap *is*
// the mapping of the active slot: a write sets its bits in the page cache
// before its data is written, with no system call, so after `kill -9` of
// strata (the page cache survives) every block that was written - even one
// never acknowledged - is marked. The header records the
// machine's boot id while the map is in use; a map found in use from another
// boot (a machine crash: unsynced bitmap pages may be lost while data pages
// reached the disk) is reported inconsistent, never silently incomplete.
// Checkpoint starts a fresh map in the other slot, switches the header to it,
// then switches the queues, and hands the old bits back: no write falls
// between a get and a clear. A write sets its bits before its data reaches
// the device, so the switch also waits for the writes that marked the old
// bits to complete (each queue counts its writes in flight per map-list
// epoch): when checkpoint() returns, every block it hands back holds the data
// of every write its bits stand for, and a copy made from them (sync, a
// backup over NBD) cannot keep a block's old data while the block is clean.
#pragma once

#include <atomic>
#include <deque>
#include <coroutine>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/gate.h"
#include "core/metrics.h"
#include "core/queue.h"
#include "core/target.h"
#include "core/thread_annotations.h"
#include "targets/file_lock.h"
#include "targets/dirty/cbw.h"

namespace strata {

// A bitmap of dirty blocks; bits only go from 0 to 1 (clearing makes a new map).
class DirtyMap {
 public:
  // Bits in memory of its own.
  DirtyMap(uint64_t granularity, uint64_t size);
  // Bits in `words` (a mapped slot), kept alive by `owner`.
  DirtyMap(uint64_t granularity, uint64_t size, std::atomic<uint64_t>* words, std::shared_ptr<void> owner);
  // A private copy.
  std::shared_ptr<DirtyMap> copy() const;
  static uint64_t words_for(uint64_t granularity, uint64_t size);
  uint64_t granularity() const { return granularity_; }
  uint64_t size() const { return size_; }
  uint64_t nwords() const { return nwords_; }
  // Marks [offset, offset+length); returns true if a bit changed, with the
  // range of words that did.
  bool mark(uint64_t offset, uint64_t length, uint64_t& first_word, uint64_t& last_word);
  uint64_t word(uint64_t i) const { return words_[i].load(std::memory_order_acquire); }
  void set_word(uint64_t i, uint64_t v) { words_[i].store(v, std::memory_order_release); }
  void merge(const DirtyMap& o);
  bool dirty(uint64_t block) const;
  uint64_t dirty_blocks() const;
  // Dirty byte ranges, merged, clipped to the device.
  std::vector<std::pair<uint64_t, uint64_t>> ranges(uint64_t offset = 0, uint64_t length = UINT64_MAX) const;
  // NBD-style extents over [offset, offset+length): flags 1 = dirty.
  Extents extents(uint64_t offset, uint64_t length) const;

 private:
  uint64_t granularity_, size_, nbits_, nwords_;
  std::unique_ptr<std::atomic<uint64_t>[]> own_;
  std::shared_ptr<void> owner_;
  std::atomic<uint64_t>* words_ = nullptr;
};

// The on-disk file of one map (header + two slots), mapped shared.
class MapFile : public std::enable_shared_from_this<MapFile> {
 public:
  struct Header {
    uint64_t granularity = 0, size = 0, generation = 0;
    uint32_t active_slot = 0;
    bool in_use = false, inconsistent = false;
    // The inactive slot holds bits handed to a sync that has not finished:
    // they are merged back when the map is opened.
    bool pending_sync = false;
    std::string boot_id, name;
  };
  static Result<std::shared_ptr<MapFile>> create(const std::string& path, const std::string& name,
                                                 uint64_t granularity, uint64_t size);
  // Opens a map file; `consistent` says whether it can be trusted (see the
  // design notes). read_only maps it privately: nothing reaches the file.
  static Result<std::shared_ptr<MapFile>> open(const std::string& path, bool read_only, bool& consistent,
                                               std::string& why);
  ~MapFile();
  MapFile(const MapFile&) = delete;
  MapFile& operator=(const MapFile&) = delete;

  const Header& header() const { return h_; }
  Header& mutable_header() { return h_; }
  const std::string& path() const { return path_; }
  // The bits of a slot, living in the mapping.
  std::shared_ptr<DirtyMap> slot(uint32_t s);
  void zero_slot(uint32_t s);
  Result<> write_header();
  // Writes the mapping and the header to disk.
  Result<> sync();

 private:
  MapFile() = default;
  uint64_t slot_offset(uint32_t slot) const;
  std::string path_;
  int fd_ = -1;
  std::byte* map_ = nullptr;
  uint64_t map_len_ = 0;
  Header h_;
};

// Reads the machine's boot id (/proc/sys/kernel/random/boot_id).
std::string current_boot_id();

class DirtyTarget final : public ForwardingTarget {
 public:
  // `state_dir` is where this device's maps live (created if needed);
  // existing maps there are loaded.
  static Result<std::shared_ptr<DirtyTarget>> create(std::shared_ptr<Target> lower, std::string device,
                                                     std::string state_dir);
  ~DirtyTarget() override;

  std::string table_line() const override { return lower_->table_line(); }
  Result<> attach_queue(Queue& q) override;

  // Reads pass through unchanged, so views do too.
  std::optional<std::span<const std::byte>> read_view(Queue& q, uint64_t offset, uint64_t length) override {
    if (moved()) return std::nullopt;  // read() fails it
    auto v = lower_->read_view(q, offset, length);
    if (v) metrics_.count_view(q.id(), length);
    return v;
  }
  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override;
  Task<Result<>> flush(Queue& q) override;
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override;
  Task<Result<>> trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<>> zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  std::vector<std::string> contexts() const override;
  Task<Result<Extents>> context_extents(Queue& q, std::string_view context, uint64_t offset,
                                        uint64_t length) override;

  // ---- control (any thread but the queues') ----
  struct MapInfo {
    std::string name;
    uint64_t granularity;
    uint64_t dirty_blocks;
    bool consistent;
    std::string path;
  };
  // `full`: every block starts dirty (the first sync copies the whole device:
  // a new replica, a disk moving to another host).
  Result<> start_map(const std::string& name, uint64_t granularity, bool full = false);
  Result<> stop_map(const std::string& name);
  std::vector<MapInfo> maps() const;
  // The current bits (a copy) and whether they are consistent.
  Result<std::shared_ptr<DirtyMap>> map_bits(const std::string& name, bool* consistent = nullptr) const;
  // Atomically hands back the current bits and starts a fresh map. With
  // for_sync, the handed-back bits stay on disk (pending) until
  // finish_sync() or restore(), so a crash during a sync loses nothing; and
  // an inconsistent map stays inconsistent until finish_sync() (the sync of
  // the whole device it calls for has reached the replica).
  Result<std::shared_ptr<DirtyMap>> checkpoint(const std::string& name, bool* consistent = nullptr,
                                               bool for_sync = false);
  // The sync that took the bits succeeded: the replica holds them.
  Result<> finish_sync(const std::string& name);
  // The sync failed: the bits are dirty again.
  Result<> restore(const std::string& name, const DirtyMap& bits);
  // Holds every new write until thaw(); returns once writes in flight are done.
  void freeze();
  void thaw();
  // The device has moved to another host (sync --move): every request from
  // now on, those held by a freeze included, fails with ESHUTDOWN (NBD's
  // "server shutting down": clients reconnect elsewhere). Call frozen.
  void fence() { moved_.store(true, std::memory_order_release); }
  // Writes on each queue at most `bytes_per_sec` (0: no limit); a write
  // over the rate waits its turn (a timer on the queue's ring): a sync that
  // does not converge slows the writers until it does (sync --final, --move).
  void throttle(uint64_t bytes_per_sec);
  bool moved() const { return moved_.load(std::memory_order_acquire); }
  Failure moved_error() const;
  // A point-in-time copy (cbw.h) of this device as it is now: installed with
  // writes held and none in flight, so every write after this call copies
  // the blocks it changes first. One at a time (EBUSY).
  Result<> start_copy(std::shared_ptr<CopyBeforeWrite> copy);
  void stop_copy();
  // Clean shutdown: full bitmaps written, in-use cleared, synced.
  void close_clean();

  static constexpr std::string_view kContextPrefix = "strata:dirty:";

  // What clients asked of this device (every request goes through here).
  const IoMetrics& metrics() const { return metrics_; }

 private:
  struct Map {
    std::string name;
    std::shared_ptr<DirtyMap> bits;
    std::shared_ptr<MapFile> file;
    uint32_t slot = 0;
    bool consistent = true;
    bool syncing = false;  // a sync holds bits in the other slot
  };
  using MapList = std::vector<std::shared_ptr<Map>>;
  struct PerQueue {
    std::shared_ptr<const MapList> maps;
    // throttle(): bytes per second of writes on this queue (0: no limit),
    // and when the next write may start (steady clock, ns).
    uint64_t write_rate = 0;
    int64_t next_write_ns = 0;
    // Bumped each time `maps` changes; writes in flight by the epoch (its
    // parity) whose list they marked, so publish() can wait for the old ones.
    uint64_t epoch = 0;
    uint64_t in_flight_by_epoch[2] = {0, 0};
    std::function<void()> on_old_drained;
    std::shared_ptr<CopyBeforeWrite> copy;  // a point-in-time copy runs
  };

  DirtyTarget(std::shared_ptr<Target> lower, std::string device, std::string dir)
      : ForwardingTarget(std::move(lower)), device_(std::move(device)), dir_(std::move(dir)) {}
  // Marks the range in every map of the queue's list; returns the list's
  // epoch, to be handed to leave() once the write is done.
  uint64_t mark(Queue& q, uint64_t offset, uint64_t length);
  Task<Result<>> write_tracked(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f);
  Task<Result<>> trim_tracked(Queue& q, uint64_t offset, uint64_t length, IoFlags f);
  Task<Result<>> zero_tracked(Queue& q, uint64_t offset, uint64_t length, IoFlags f);
  Task<void> pace(Queue& q, uint64_t bytes);
  // A request that passed the gate finds the device moved: it leaves, failing.
  Failure refuse(Queue& q);
  void leave(Queue& q, uint64_t epoch);
  // Publishes maps_ to every queue and waits until the writes that marked
  // the previous list have completed.
  void publish();
  void on_every_queue(const std::function<void(PerQueue&)>& fn);
  std::shared_ptr<Map> find(const std::string& name) const;
  // Ends a sync; replica_has_all: it succeeded (an inconsistent map is now
  // consistent).
  Result<> end_sync(const std::string& name, bool replica_has_all);

  std::string device_, dir_;
  // On dir_/.lock from the first map on, while this target lives.
  Result<> lock_dir();
  Mutex dir_lock_mu_;
  std::shared_ptr<FileLock> dir_lock_ GUARDED_BY(dir_lock_mu_);
  // Guards the changes of maps_ (readers on queue threads read the list
  // published last, no lock), copy_ and attaching a queue.
  mutable Mutex mu_;
  Mutex publish_mu_;  // one publish() at a time
  MapList maps_;
  std::shared_ptr<CopyBeforeWrite> copy_ GUARDED_BY(mu_);
  // Writes, trims and zeroes pass it; freeze() holds them.
  Gate gate_;
  std::unique_ptr<PerQueue[]> per_queue_{new PerQueue[kMaxQueues]};
  IoMetrics metrics_;
  std::atomic<bool> moved_{false};
};

}  // namespace strata
