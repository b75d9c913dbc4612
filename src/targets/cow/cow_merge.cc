// Online merge of a cow stack's top layer into its parent (qemu's "active
// commit", done so that it converges).
//
// 1. With all I/O held for a moment, the parent is reopened for writing and
//    becomes the write layer: from then on every write lands in the parent
//    (and overrides the top in the index), so the top never gains a chunk.
// 2. Chunks the top still holds are copied down under the per-chunk locks,
//    re-checking under the lock that no newer write took the chunk. The set
//    only shrinks, so the copy ends whatever the write load. The parent's
//    writeback is started as the copy goes (step 3 then waits for less).
// 3. The parent is flushed (data, then bitmap, then the top's bits cleared)
//    with I/O flowing; then, with all I/O held for a moment, the top leaves
//    the stack and the parent takes the top's file name, so the table line
//    still names the top of the (now shorter) stack.
// The merge begins without a flush: the top's last writes reach its file
// only if a FLUSH comes while the merge runs (merge_top_unsynced_, cow.h).
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>

#include <fmt/core.h>

#include "core/buffer.h"
#include "core/log.h"
#include "targets/cow/cow.h"

namespace strata {


void CowTarget::retire(std::unique_ptr<LayerFile>& slot) {
  (void)::flock(slot->fd(), LOCK_UN);
  retired_.push_back(std::move(slot));
}

Task<Result<uint64_t>> CowTarget::merge_copy(Queue& q, uint8_t from,
                                             const std::function<void(uint64_t, uint64_t)>& progress,
                                             const std::atomic<bool>* cancel) {
  // kWorkers runs are copied at once: the chunks a top holds after random
  // writes are mostly alone, and one chunk at a time (a read, then a write
  // that ext4 hands to an io-wq worker) copied 13 MiB/s under a write load.
  constexpr int kWorkers = 16;
  struct Shared {
    uint64_t next = 0, done = 0, total = 0;
    Result<> res;
    Join join;
  } sh;
  for (uint64_t c = 0; c < chunks_; ++c) sh.total += (holder(c) & ~kZeroBit) == from;
  merge_total_.store(sh.total, std::memory_order_relaxed);
  merge_done_.store(0, std::memory_order_relaxed);
  const uint64_t per_run = std::max<uint64_t>(1, (1 << 20) / chunk_);
  auto worker = [](CowTarget& t, Queue& q, uint8_t from, uint64_t per_run, Shared& sh,
                   const std::function<void(uint64_t, uint64_t)>& progress,
                   const std::atomic<bool>* cancel) -> Task<void> {
    Buffer buf = Buffer::get(per_run * t.chunk_);
    while (sh.res) {
      if (cancel && cancel->load()) {
        if (sh.res) sh.res = fail(ECANCELED, "cancelled");
        break;
      }
      // Take the next run of chunks `from` holds (the cursor is shared by the
      // workers, all on this queue's thread).
      uint64_t c = sh.next;
      while (c < t.chunks_ && (t.holder(c) & ~kZeroBit) != from) ++c;
      if (c >= t.chunks_) break;
      uint64_t e = c + 1;
      while (e < t.chunks_ && e - c < per_run && (t.holder(e) & ~kZeroBit) == from) ++e;
      sh.next = e;
      auto lk = co_await t.lock_chunks(q, c, e - 1);
      if (!lk) {
        if (sh.res) sh.res = fail(lk.error());
        break;
      }
      // Under the locks: copy what the top still holds (a write may have
      // taken some chunks meanwhile; those are newer in the parent already).
      // Consecutive chunks with data are read and written in one I/O each.
      Result<> res;
      for (uint64_t k = c; k < e && res;) {
        uint8_t h = t.holder(k);
        if ((h & ~kZeroBit) != from) {
          ++k;
          continue;
        }
        if (h & kZeroBit) {
          t.set_states(k, k, kZero);
          ++sh.done;
          ++k;
          continue;
        }
        uint64_t ke = k + 1;
        while (ke < e && t.holder(ke) == h) ++ke;
        uint64_t cs = k * t.chunk_, n = std::min<uint64_t>(ke * t.chunk_, t.size_) - cs;
        res = co_await t.read_run(q, h, buf.data(), cs, n);
        if (res) res = co_await t.write_top(q, buf.data(), cs, n, false);
        if (res) t.set_states(k, ke - 1, kPresent);
        sh.done += ke - k;
        k = ke;
      }
      t.unlock_chunks(c, e - 1);
      if (!res && sh.res) sh.res = std::move(res);
      t.merge_done_.store(sh.done, std::memory_order_relaxed);
      if (progress) progress(sh.done, sh.total);
    }
    sh.join.done();
  };
  sh.join.add(kWorkers);
  for (int i = 0; i < kWorkers; ++i) spawn(worker(*this, q, from, per_run, sh, progress, cancel));
  co_await sh.join.wait();
  if (!sh.res) co_return fail(sh.res.error());
  co_return sh.done;
}

// Step 1 of merge(): the top's parent is reopened for writing, then, with
// all I/O held, becomes the write layer; the top's bitmap is kept in
// merge_top_state_ from here on (see cow.h).
Result<> CowTarget::merge_begin(std::size_t n) {
  LayerFile& top = *layers_[n - 1];
  LayerFile& parent = *layers_[n - 2];
  if (parent.remote())
    return fail(EROFS, fmt::format("merge: layer {} is a shared layer on remote storage: a host never writes one "
                                   "(merge where it lives, once no host reads it)",
                                   parent.path()));
  // Exclusive use of the parent: no other stack may share it while it changes.
  if (::flock(parent.fd(), LOCK_EX | LOCK_NB) < 0)
    return fail(EBUSY, fmt::format("merge: layer {} is shared with another process", parent.path()));
  // The parent opened for writing, its bitmap read and its header marked
  // writable, before I/O is held: nothing writes a parent, so its bitmap
  // cannot change meanwhile, and a crash leaves a parent marked in use,
  // which reads the same. (Under the hold, with the drop of its page cache,
  // these held writes 60-130 ms under bench/cow.sh's load.)
  Result<> r;
  std::vector<uint8_t> pstates;
  auto rw = LayerFile::open(parent.path(), true, false);
  const uint32_t flags = rw ? (*rw)->header().flags : 0;
  if (!rw) {
    r = fail(rw.error());
  } else {
    auto st = (*rw)->read_bitmap();
    if (!st) r = fail(st.error());
    if (r) {
      pstates = std::move(*st);
      (*rw)->mutable_header().flags &= ~LayerFile::kFlagReadOnly;
      (*rw)->mutable_header().flags |= LayerFile::kFlagInUse;
      r = (*rw)->write_header();
      if (r) r = (*rw)->sync();
    }
  }
  // 1. Make the parent the write layer, with all I/O held. No flush of the
  // top first: its last writes stay in the page cache, and only a FLUSH
  // that comes during the merge writes them (see merge_top_unsynced_); the
  // copy reads them from there. (A flush here, with writes held, wrote back
  // what a write load had put in the top in the second before: a third of
  // the merge's time under load, bench/RESULTS.md 5e.)
  std::chrono::steady_clock::duration held{};
  if (r) {
    const auto h0 = std::chrono::steady_clock::now();
    gate_.freeze(Gate::kAll);
    if (nlayers_.load() != n || write_layer_.load() + 1 != n)
      r = fail(EBUSY, "merge: the stack changed as the merge began (a snapshot); run the merge again");
    if (r) {
      // The lock moves to the new fd (a retired fd must hold none: flock
      // is per open file, and a later snapshot or merge locks this file).
      MutexLock ll(layers_mu_);
      retire(layers_[n - 2]);
      if (::flock((*rw)->fd(), LOCK_EX | LOCK_NB) < 0)
        LOG_WARN("merge: cannot lock {} again: {}", (*rw)->path(), std::strerror(errno));
      layers_[n - 2] = std::move(*rw);
    }
    if (r) {
      MutexLock l(mu_);
      // The top's dirty pages (bits not yet in its file) stay dirty in
      // merge_top_dirty_: a FLUSH during the merge writes them after the top's
      // data (merge_top_unsynced_).
      merge_top_state_ = std::move(top_state_);
      merge_top_held_ = top_held_;
      merge_top_unsynced_ = true;
      // Page generations go on from the top's: persist() skips a page whose
      // generation is not newer than the one in the file.
      merge_top_dirty_ = dirty_;
      merge_top_ = &top;
      top_state_ = std::move(pstates);
      top_held_ = static_cast<uint64_t>(
          std::count_if(top_state_.begin(), top_state_.end(), [](uint8_t x) { return x != kAbsent; }));
      dirty_.pages.clear();
      write_layer_.store(n - 2);
    }
    gate_.thaw();
    held = std::chrono::steady_clock::now() - h0;
  }
  if (!r) {
    if (rw && *rw) {  // the parent's header as it was
      (*rw)->mutable_header().flags = flags;
      if (!(*rw)->write_header() || !(*rw)->sync())
        LOG_WARN("merge: cannot restore the header of {}", parent.path());
    }
    (void)::flock(parent.fd(), LOCK_SH);  // shared again, as before the merge
    return fail(r.error());
  }
  LOG_INFO("merge: writes now go to {} (I/O held {} us); copying down what {} holds", layers_[n - 2]->path(),
           std::chrono::duration_cast<std::chrono::microseconds>(held).count(), top.path());
  return {};
}

Result<uint64_t> CowTarget::merge(Queue& q, const std::function<void(uint64_t, uint64_t)>& progress,
                                  const std::atomic<bool>* cancel) {
  if (read_only_) return fail(EROFS, "merge: the stack is read-only");
  const std::size_t n = nlayers_.load();
  if (n < 2) return fail(EINVAL, "merge: the top layer has no parent layer (the base is never written)");
  if (merging_.exchange(true)) return fail(EBUSY, "merge: a merge is already running");
  merge_total_.store(0);  // set again once the copy starts (status: the copy runs)
  merge_done_.store(0);
  struct Done {
    std::atomic<bool>& b;
    ~Done() { b.store(false); }
  } done{merging_};
  // A merge of this top that stopped in its copy (an I/O error, no space)
  // left the parent as the write layer: go on from step 2.
  const bool resume = write_layer_.load() + 2 == n;
  if (!resume && write_layer_.load() + 1 != n) return fail(EBUSY, "merge: a merge is already running");
  LayerFile& top = *layers_[n - 1];
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  if (resume)
    LOG_INFO("merge: resuming the merge of {}", top.path());
  else
    TRY(merge_begin(n));
  // A pause between the switch and the copy, for the test that cuts the
  // power while the top still holds its last writes.
  failpoint_delay("STRATA_FAILPOINT_MERGE_COPY_DELAY_MS");

  // 2. Copy down.
  // Meanwhile this thread starts the writeback of what the copy wrote, a
  // tenth of a second at a time: the copy keeps the CPU busy, the disk would
  // sit idle until the final flush, which then took longer than the copy
  // (bench/cow-merge.sh). Only earlier than the kernel would anyway: the
  // crash order is still the flush's (data, then bits).
  const auto t1 = Clock::now();
  auto copying = std::async(std::launch::async, [&] {
    return q.call([&] { return merge_copy(q, static_cast<uint8_t>(n), progress, cancel); });
  });
  {
    const LayerFile& parent = *layers_[n - 2];
    while (copying.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready)
      (void)::sync_file_range(parent.fd(), static_cast<off64_t>(parent.header().data_offset), 0,
                              SYNC_FILE_RANGE_WRITE);
  }
  auto cr = copying.get();
  const auto t2 = Clock::now();
  if (!cr)
    return fail(cr.error().code, "merge: " + cr.error().message +
                                     " (the stack still has every layer; run the merge again to finish it)");

  // 3. Drop the top. One flush, begun after the copy ended, with I/O
  // flowing, makes every chunk the top held durable in the parent (the
  // copy's data, then the parent's bits, then the top's bits cleared); a
  // later write to such a chunk changes the parent's copy in place, and a
  // crash keeps either that copy or the newer bytes. So the hold that
  // follows only takes the top out of the stack: it needs no flush of what
  // the load writes meanwhile. (Flushing until a flush was quick, then
  // again with I/O held, chased a 4k random write load faster than the
  // disk: four flushes, 1.8-2.0 s, bench/RESULTS.md 5e.)
  Result<> r = q.call([&] { return flush(q); });
  if (!r) return fail(r.error().code, "merge: " + r.error().message + " (the stack still has every layer)");
  const auto t3 = Clock::now();
  gate_.freeze(Gate::kAll);
  std::string top_path = top.path();
  LayerFile& p = *layers_[n - 2];
  {
    MutexLock l(mu_);
    merge_top_ = nullptr;
    merge_top_state_.clear();
    merge_top_held_ = 0;
    merge_top_unsynced_ = false;
    merge_top_dirty_ = {};
  }
  {
    MutexLock ll(layers_mu_);
    retire(layers_[n - 1]);
    layers_.pop_back();
    nlayers_.store(n - 1);
  }
  gate_.thaw();
  const auto t4 = Clock::now();
  // The parent takes the top's name (the table line still names the top)
  // with I/O flowing: renaming over a file makes ext4 start the writeback of
  // the renamed file's delayed allocations (auto_da_alloc), which under a
  // write load held I/O 25-96 ms when it was done in the hold. Until it is
  // done the top's file is there, every bit cleared (the flush above): a
  // crash brings back a stack that reads the same, and a snapshot waits for
  // the merge's end (it is refused while merging_).
  {
    bool same_dir = std::filesystem::path(top_path).parent_path() == std::filesystem::path(p.path()).parent_path();
    MutexLock ll(layers_mu_);
    if (same_dir && ::rename(p.path().c_str(), top_path.c_str()) == 0) {
      p.rename_to(top_path);
    } else {
      ::unlink(top_path.c_str());
      top_path_ = p.path();
    }
  }
  // The rename (or unlink) durable. Until then a crash may bring the top
  // back, every bit of it cleared: the stack reads the same.
  sync_parent_dir(top_path);
  auto ms = [](Clock::duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
  LOG_INFO("merge: {} chunks copied down; {} ms to begin, {} ms to copy, {} ms to flush the parent and drop the top "
           "(I/O held {} us)",
           *cr, ms(t1 - t0), ms(t2 - t1), ms(Clock::now() - t2),
           std::chrono::duration_cast<std::chrono::microseconds>(t4 - t3).count());
  return cr;
}

// Folding a read-only layer in the middle of the stack into the layer below
// it (qemu's intermediate commit). Neither layer is written by I/O, and
// every chunk `from` holds is read from `from` (or a layer above), so the
// copy into `into` runs on the control thread while I/O goes on without
// seeing it. Then, with all I/O held for a moment: the child of `from` is
// relinked to `into`, the index entries of `from` move to `into`, and `from`
// leaves the stack. Crash order: `into`'s data, then its bitmap, then the
// child's header are durable before `from` is deleted; a crash at any point
// leaves a stack that reads the same (before the relink, `from` still
// overrides everything `into` gained).
Result<uint64_t> CowTarget::merge_layer(Queue& q, const std::string& path,
                                        const std::function<void(uint64_t, uint64_t)>& progress,
                                        const std::atomic<bool>* cancel) {
  const std::size_t n = nlayers_.load();
  std::size_t j = n;
  for (std::size_t i = 0; i < n; ++i)
    if (std::filesystem::weakly_canonical(layers_[i]->path()) == std::filesystem::weakly_canonical(path)) j = i;
  if (j == n) return fail(ENOENT, fmt::format("merge: {} is not a layer of this stack", path));
  if (j + 1 == n) return merge(q, progress, cancel);
  if (j == 0)
    return fail(EINVAL, fmt::format("merge: {} is the bottom layer; below it is the base device, which is never "
                                    "written",
                                    path));
  if (read_only_) return fail(EROFS, "merge: the stack is read-only");
  if (write_layer_.load() + 1 != n) return fail(EBUSY, "merge: a merge is already running");
  LayerFile& from = *layers_[j];
  LayerFile& into_old = *layers_[j - 1];
  if (into_old.remote() || from.remote())
    return fail(EROFS, fmt::format("merge: layer {} is a shared layer on remote storage: a host never writes one "
                                   "(merge where it lives, once no host reads it)",
                                   (into_old.remote() ? into_old : from).path()));
  if (::flock(into_old.fd(), LOCK_EX | LOCK_NB) < 0)
    return fail(EBUSY, fmt::format("merge: layer {} is shared with another process", into_old.path()));
  auto rw = LayerFile::open(into_old.path(), true, false);
  if (!rw) return fail(rw.error());
  LayerFile& into = **rw;
  auto fs = from.read_bitmap();
  if (!fs) return fail(fs.error());
  auto is = into.read_bitmap();
  if (!is) return fail(is.error());
  std::vector<uint8_t>& into_states = *is;
  uint64_t total = 0, done = 0;
  for (uint8_t st : *fs) total += st != kAbsent;
  Buffer buf = Buffer::get(1 << 20);
  const uint64_t per_run = buf.size() / chunk_;
  for (uint64_t c = 0; c < chunks_;) {
    uint8_t st = (*fs)[c];
    if (st == kAbsent) {
      ++c;
      continue;
    }
    uint64_t e = c + 1;
    while (e < chunks_ && e - c < per_run && (*fs)[e] == st) ++e;
    const uint64_t off = c * chunk_, len = std::min<uint64_t>((e - c) * chunk_, size_ - off);
    if (st == kPresent) {
      ssize_t got = ::pread(from.fd(), buf.data(), len, from.header().data_offset + off);
      if (got != static_cast<ssize_t>(len))
        return posix_error(fmt::format("merge: read {} at {}", from.path(), off), got < 0 ? errno : EIO);
      ssize_t put = ::pwrite(into.fd(), buf.data(), len, into.header().data_offset + off);
      if (put != static_cast<ssize_t>(len))
        return posix_error(fmt::format("merge: write {} at {}", into.path(), off), put < 0 ? errno : EIO);
    } else {
      // "Zeros here": no data needed (the hole is punched if the filesystem can).
      (void)::fallocate(into.fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, into.header().data_offset + off,
                        len);
    }
    for (uint64_t k = c; k < e; ++k) into_states[k] = st;
    done += e - c;
    if (progress) progress(done, total);
    c = e;
  }
  // Data, then the bitmap, durable in `into`.
  TRY(into.sync());
  const uint64_t pages = (into.header().bitmap_bytes + 4095) / 4096;
  if (pages) TRY(into.write_bitmap_pages(into_states, 0, pages - 1));
  TRY(into.sync());

  // Relink and switch, with all I/O held.
  gate_.freeze(Gate::kAll);
  Result<> r;
  LayerFile& child = *layers_[j + 1];
  std::filesystem::path cdir = std::filesystem::absolute(child.path()).parent_path();
  std::string rel = std::filesystem::absolute(into.path()).lexically_relative(cdir).string();
  {
    auto crw = LayerFile::open(child.path(), true, false);
    if (!crw) {
      r = fail(crw.error());
    } else {
      (*crw)->mutable_header().parent_uuid = into.header().uuid;
      (*crw)->mutable_header().parent_path = rel;
      r = (*crw)->write_header();
      if (r) r = (*crw)->sync();
    }
  }
  if (r) {
    child.mutable_header().parent_uuid = into.header().uuid;
    child.mutable_header().parent_path = rel;
    const uint8_t hf = static_cast<uint8_t>(j + 1);  // holder number of `from`
    for (uint64_t c = 0; c < chunks_; ++c) {
      uint8_t h = index_[c].load(std::memory_order_relaxed);
      uint8_t l = h & ~kZeroBit;
      if (l >= hf) index_[c].store(static_cast<uint8_t>((l - 1) | (h & kZeroBit)), std::memory_order_relaxed);
    }
    recount();
    MutexLock ll(layers_mu_);
    retire(layers_[j - 1]);  // old fds stay open until exit, without their locks
    if (::flock(into.fd(), LOCK_SH | LOCK_NB) < 0)
      LOG_WARN("merge: cannot lock {} again: {}", into.path(), std::strerror(errno));
    layers_[j - 1] = std::move(*rw);
    layers_[j - 1]->release_claim();  // written: other hosts may read it again
    retire(layers_[j]);
    layers_.erase(layers_.begin() + static_cast<std::ptrdiff_t>(j));
    nlayers_.store(n - 1);
    layers_[n - 2]->prepare_for_writes();
    write_layer_.store(n - 2);
  }
  gate_.thaw();
  if (!r) return fail(r.error().code, "merge: relinking " + child.path() + ": " + r.error().message +
                                          " (the stack still has every layer)");
  std::string gone = retired_.back()->path();
  ::unlink(gone.c_str());
  LOG_INFO("merge: {} folded into {} ({} chunks); {} now names it as parent", gone, layers_[j - 1]->path(), done,
           layers_[j]->path());
  return done;
}

}  // namespace strata
