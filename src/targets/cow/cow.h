// CowTarget: a stack of layers over a base device (as dm-cow): the
// base (any strata device, never written), read-only layers, and one
// writable layer on top. Each layer holds some chunks, recorded in its own
// persistent bitmap (docs/format.md).
//
// Design notes
// - Lookup does not grow with depth: an in-memory index keeps, per chunk, the
//   topmost layer holding it (bit 7: that layer says "zeros here"). Reads walk
//   the index and read each run of chunks held by the same layer in one I/O.
// - Writes go to the top. A write that covers a chunk partly, where the top
//   does not hold it, copies the rest of the chunk up from below first. The
//   default chunk is 4 KiB: the page size most clients write in, so aligned
//   4 KiB writes never copy up.
// - TRIM and WRITE_ZEROES mark whole chunks "zero" in the top (read back as
//   zeros even where a lower layer has data) and punch their data out;
//   partial chunks are written with zeros.
// - Crash consistency: a chunk's state changes in memory only after its data
//   write completed. FLUSH takes a copy of the changed bitmap pages, makes
//   the data durable (fdatasync), then writes that copy and syncs again: a
//   bit never reaches the disk before its data. FUA writes end with a FLUSH.
//   Flushes run concurrently (FUA, several connections): a page stays dirty
//   until one of them has written it, page writes are ordered by a per-page
//   generation (an older copy never overwrites a newer one), and a copy is
//   written to the layer it was taken from even if a snapshot or merge has
//   changed the write layer since.
//   The header's in-use flag tells an unclean shutdown: the bitmap then holds
//   exactly the flushed chunks.
// - Writes to chunks the top does not hold yet take a per-chunk lock, so two
//   partial writes to one chunk cannot undo each other's copy-up.
// - Locking: the writable top is flock()ed exclusively, lower layers shared.
// - Snapshot (control thread): holds writes, flushes, marks the top
//   read-only, renames it to PATH.snapN, creates a new empty top at PATH whose
//   parent is the snapshot, and lets writes go on. The table keeps naming PATH.
#pragma once

#include <atomic>
#include <condition_variable>
#include <coroutine>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "core/gate.h"
#include "core/layer_stack.h"
#include "core/queue.h"
#include "core/target.h"
#include "core/thread_annotations.h"
#include "targets/cow/layer.h"
#include "targets/resolver.h"

namespace strata {

class CowTarget final : public Target, public LayerStack {
 public:
  static constexpr std::string_view kHelp =
      "cow <top-layer> [base=DEVICE] [ro] [lease=S] [prealloc=SIZE]\n"
      "  A stack of layers (strata layer create) over an optional base device\n"
      "  defined earlier in the table; the top layer is written, the others and\n"
      "  the base never are. Parents are found from each layer's header; a\n"
      "  parent may be a shared layer on an NFS server (nfs://...), read under\n"
      "  a lease of S seconds (default 30) that keeps writers out. The top's\n"
      "  space is allocated SIZE bytes at a time (default 1M; 0: chunk by chunk).";
  static Result<std::shared_ptr<Target>> create(Params& p, Resolver& r);
  ~CowTarget() override;

  uint64_t size() const override { return size_; }
  Caps caps() const override;
  BlockSizes block_sizes() const override;
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
  std::vector<std::string> contexts() const override { return {"strata:allocation-depth"}; }
  Task<Result<Extents>> context_extents(Queue& q, std::string_view context, uint64_t offset,
                                        uint64_t length) override;

  LayerStack* layer_stack() override { return this; }

  // LayerStack (core/layer_stack.h): what control asks of the stack.
  // Control thread: snapshot the top; returns the snapshot layer's path.
  Result<std::string> snapshot(Queue& q, SnapshotStats* stats = nullptr) override;
  // Control thread: flushes until one flush is quick (see cow.cc).
  Result<int> flush_until_quick(Queue& q);
  // Layers bottom to top, for status.
  std::vector<std::string> layer_paths() const override;
  // Each layer, bottom to top (LayerStatus). Cheap: one pass over the
  // in-memory index and an fstat per layer, no read of any file.
  std::vector<LayerStatus> layer_status() const override;
  // Control thread: folds the top layer into its parent while I/O goes on
  // (writes go to the parent from the start, so it converges under any write
  // load); the stack is then one layer shorter. Progress: (copied, total)
  // chunks. Runs the copy on `q`.
  // `cancel`, if given and set, stops the copy after the runs in flight
  // (ECANCELED): the stack stays as a merge that stopped part-way leaves it,
  // and the next merge() resumes it.
  Result<uint64_t> merge(Queue& q, const std::function<void(uint64_t, uint64_t)>& progress,
                         const std::atomic<bool>* cancel = nullptr) override;
  // Control thread: folds the layer at `path` into the layer below it. The
  // top: merge() above. A read-only layer in the middle: its chunks are
  // copied into the layer below (which must not be shared with another
  // process), its child is relinked, and it leaves the stack.
  Result<uint64_t> merge_layer(Queue& q, const std::string& path,
                               const std::function<void(uint64_t, uint64_t)>& progress,
                               const std::atomic<bool>* cancel = nullptr) override;

 private:
  CowTarget() = default;
  static constexpr uint8_t kZeroBit = 0x80;
  static constexpr std::size_t kMaxLayers = 127;

  uint8_t holder(uint64_t chunk) const { return index_[chunk].load(std::memory_order_acquire); }
  // Whether a write smaller than chunk `c` may go into the write layer in
  // place: only when that layer is the chunk's holder, with data. The write
  // layer's own bitmap is not enough: during a merge it is the top's parent,
  // which may hold an older copy of a chunk the top (a layer above it) holds
  // or reads as zeros; writing there in place would bring the older bytes
  // back around the write. Call with the chunk locked (lock_chunks): the
  // holder of a locked chunk changes only by the lock holder, or with every
  // write drained (snapshot, merge steps 1 and 3, merge_layer's switch).
  bool in_place(uint64_t c) const { return holder(c) == static_cast<uint8_t>(write_layer_.load() + 1); }
  Task<Result<>> read_run(Queue& q, uint8_t h, std::byte* buf, uint64_t offset, uint64_t length);
  // The holder of every chunk of [offset, offset+length) when they all have
  // the same one.
  std::optional<uint8_t> single_holder(uint64_t offset, uint64_t length) const;
  Task<Result<>> read_stack(Queue& q, std::span<std::byte> buf, uint64_t offset);
  Task<Result<>> write_top(Queue& q, const std::byte* buf, uint64_t offset, uint64_t length, bool fua);
  Task<Result<>> modify(Queue& q, const std::byte* buf, uint64_t offset, uint64_t length, bool zero, IoFlags f);
  void set_states(uint64_t c0, uint64_t c1, uint8_t state);
  Task<Result<>> lock_chunks(Queue& q, uint64_t c0, uint64_t c1);
  void unlock_chunks(uint64_t c0, uint64_t c1);
  static constexpr uint64_t kStatesPerPage = 4 * 4096;  // chunk states in one bitmap page
  // A copy of one bitmap page taken by a flush, and the page's generation
  // when it was taken.
  struct PageCopy {
    uint64_t page, gen;
    std::vector<uint8_t> states;
  };
  // The bitmap pages of a layer's chunk states that changed and are not yet
  // in its file, and per page a generation bumped by every change (so
  // concurrent flushes never put an older copy back). Under mu_.
  struct DirtyPages {
    std::set<uint64_t> pages;
    std::map<uint64_t, uint64_t> gen;
    void touch(uint64_t chunk) {
      pages.insert(chunk / kStatesPerPage);
      ++gen[chunk / kStatesPerPage];
    }
    // Copies of the dirty pages of `states`, for a flush to persist.
    std::vector<PageCopy> copy(const std::vector<uint8_t>& states);
    // The copies are in the file: their pages are clean unless changed since.
    void clean(const std::vector<PageCopy>& copies);
  };
  // Writes the copies into `layer`'s bitmap (skipping pages a newer copy of
  // which is in the file already) and syncs it. Blocking pool.
  Result<> persist(LayerFile& layer, const std::vector<PageCopy>& pages);

  std::atomic<uint64_t> layer_views_{0};  // reads answered from a layer's mapping
  std::string top_path_;
  std::shared_ptr<Target> base_;
  std::string base_name_;
  bool read_only_ = false;
  unsigned lease_ = 30;  // seconds: the lease on shared (remote) layers
  uint64_t size_ = 0;
  uint32_t chunk_ = 4096;
  uint64_t chunks_ = 0;
  std::vector<std::unique_ptr<LayerFile>> layers_;  // reserved: never reallocates
  std::atomic<std::size_t> nlayers_{0};
  // The layer writes go to (index into layers_): the top, or during a merge
  // the top's parent.
  std::atomic<std::size_t> write_layer_{0};
  std::vector<std::unique_ptr<LayerFile>> retired_;  // merged away; fds stay valid
  // The write layer's data space is allocated a region of prealloc_ bytes at
  // a time (fallocate, before the first write into the region): ext4 then
  // keeps one extent per region instead of a delayed extent per 4 KiB chunk
  // written at random. A bit per region already asked for, of the layer
  // prealloc_layer_ (reset when the write layer changes). 0: off.
  static constexpr uint64_t kDefaultPrealloc = 1 << 20;
  uint64_t prealloc_ = kDefaultPrealloc;
  std::unique_ptr<std::atomic<uint64_t>[]> prealloc_done_;
  std::atomic<std::size_t> prealloc_layer_{0};
  Task<void> prealloc(Queue& q, std::size_t layer, uint64_t offset, uint64_t length);
  // Moves a layer out of the stack into retired_, dropping its flock. With
  // all I/O held.
  void retire(std::unique_ptr<LayerFile>& slot) REQUIRES(gate_);
  Result<> merge_begin(std::size_t n);
  // A test's failpoint: sleeps the milliseconds the environment variable
  // `env` names, if set (docs/targets/cow.md). Control thread only.
  static void failpoint_delay(const char* env);
  Task<Result<uint64_t>> merge_copy(Queue& q, uint8_t from, const std::function<void(uint64_t, uint64_t)>& progress,
                                    const std::atomic<bool>* cancel);
  std::unique_ptr<std::atomic<uint8_t>[]> index_;
  // How many chunks each holder number has in index_ (status reads them
  // instead of scanning every chunk: 20 clients asking the status of a 2 GiB
  // stack of 4 KiB chunks kept the control thread busy). Kept by set_states
  // under mu_; recount() after bulk changes of index_ (load, merge --layer).
  std::atomic<uint64_t> held_by_[kMaxLayers + 1] = {};
  void recount();

  // During a merge (writes go to the top's parent): the merged top's chunk
  // states and its changed bitmap pages. A chunk written in the parent loses
  // its bit here, and a FLUSH writes these pages after the parent's data and
  // bitmap: so after a crash (or a merge that failed part-way) the top's
  // older copy never hides a flushed write. Under mu_.
  LayerFile* merge_top_ = nullptr;
  std::vector<uint8_t> merge_top_state_ GUARDED_BY(mu_);
  uint64_t merge_top_held_ GUARDED_BY(mu_) = 0;  // entries of merge_top_state_ not kAbsent
  DirtyPages merge_top_dirty_ GUARDED_BY(mu_);
  // The merge begins without a flush: the top may hold data written before
  // it that is not on disk. A FLUSH that persists the top's bits while the
  // top still holds chunks syncs the top's data first (once: the top takes
  // no write after the merge begins). If no FLUSH comes, the top's last
  // writes never reach its file: the copy puts them in the parent, whose
  // flush ends the merge, and the top is deleted.
  bool merge_top_unsynced_ GUARDED_BY(mu_) = false;
  std::atomic<bool> merging_{false};  // a merge call is running
  // Progress of the running merge's copy, in chunks (status).
  std::atomic<uint64_t> merge_done_{0}, merge_total_{0};

  mutable Mutex mu_;
  // Held by a merge while it replaces, removes or renames entries of layers_,
  // and by status readers (info, layer_status, layer_paths, identity), which
  // are not held by the merge's freeze: an entry is briefly empty.
  mutable Mutex layers_mu_;
  std::vector<uint8_t> top_state_ GUARDED_BY(mu_);  // ChunkState of the top, per chunk
  uint64_t top_held_ GUARDED_BY(mu_) = 0;           // entries of top_state_ not kAbsent
  DirtyPages dirty_ GUARDED_BY(mu_);                // of top_state_
  // Bitmap page writes are ordered: a page is written only if newer than
  // what the file has, so concurrent flushes cannot put back an older copy.
  Mutex persist_mu_;
  std::map<std::pair<const LayerFile*, uint64_t>, uint64_t> persisted_gen_ GUARDED_BY(persist_mu_);
  std::map<uint64_t, std::vector<std::pair<Queue*, std::coroutine_handle<>>>> busy_ GUARDED_BY(mu_);

  // A snapshot's old top is sealed after writes resume (its data synced,
  // then the bits of its last writes, then its header marked read-only):
  // writes are held only while the new top takes its place. Until the seal
  // ends every flush waits for it, so a FLUSH answered after a snapshot still
  // covers the writes the old top took; a failed seal fails every later
  // flush (what the old top acknowledged may not be on disk).
  Result<> wait_seal();
  std::atomic<bool> seal_pending_{false};
  std::atomic<bool> snapshotting_{false};  // a snapshot call is running
  Mutex seal_mu_;
  std::condition_variable_any seal_cv_;
  bool sealing_ GUARDED_BY(seal_mu_) = false;
  Result<> seal_result_ GUARDED_BY(seal_mu_);

  // Every read and write passes it (writes, trims and zeroes as writes). A
  // snapshot holds writes; a merge's layer swaps hold reads too.
  Gate gate_;
  mutable IoStats stats_;
  std::atomic<uint64_t> copy_ups_{0};
};

}  // namespace strata
