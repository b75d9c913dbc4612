// The I/O path of a cow stack (reads through the index, copy-up writes under
// per-chunk locks, flush of data then bitmaps, block status) and snapshot.
// Opening and status are cow_load.cc; merge and flatten cow_merge.cc. Design
// notes: see cow.h; the on-disk format is in layer.h and docs/format.md.
#include "targets/cow/cow.h"

#include <fcntl.h>
#include <cstdlib>
#include <linux/falloc.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <set>
#include <thread>

#include <fmt/core.h>

#include "core/buffer.h"
#include "core/log.h"

namespace strata {

// ------------------------------------------------------------------- reads

Task<Result<>> CowTarget::read_run(Queue& q, uint8_t h, std::byte* buf, uint64_t offset, uint64_t length) {
  if ((h & kZeroBit) || (h == 0 && !base_)) {
    std::memset(buf, 0, length);
    co_return Result<>{};
  }
  if (h == 0) co_return co_await base_->read(q, {buf, length}, offset);
  const LayerFile& l = *layers_[h - 1];
  uint64_t off = l.header().data_offset + offset;
  if (const auto& dev = l.remote_device()) {
    // A shared layer: only while this host's lease on it holds (a writer
    // may change it once the lease has lapsed).
    if (!l.remote()->lease_ok())
      co_return fail(EIO, fmt::format("read layer {}@{}: this host's lease on the shared layer has lapsed",
                                      l.path(), offset));
    co_return co_await dev->read(q, {buf, length}, off);
  }
  while (length > 0) {
    int n = co_await q.ring().read(l.fd(), {buf, length}, off);
    if (n == -EINTR || n == -EAGAIN) continue;
    if (n < 0) co_return posix_error(fmt::format("read layer {}@{}", l.path(), offset), -n);
    if (n == 0) co_return fail(EIO, fmt::format("read layer {}@{}: unexpected end of file", l.path(), offset));
    buf += n;
    off += n;
    length -= n;
  }
  co_return Result<>{};
}

Task<Result<>> CowTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  // Reads pass the same gate as writes, so a merge can swap layers with no
  // I/O in flight.
  co_await gate_.enter(q, Gate::kRead);
  auto r = co_await read_stack(q, buf, offset);
  gate_.leave(q, Gate::kRead);
  co_return r;
}

std::optional<uint8_t> CowTarget::single_holder(uint64_t offset, uint64_t length) const {
  const uint64_t c0 = offset / chunk_, c1 = (offset + length - 1) / chunk_;
  const uint8_t h = holder(c0);
  for (uint64_t c = c0 + 1; c <= c1; ++c)
    if (holder(c) != h) return std::nullopt;
  return h;
}

std::optional<std::span<const std::byte>> CowTarget::read_view(Queue& q, uint64_t offset, uint64_t length) {
  // Ranges that all come from one place: the base (its own view: a file's
  // page cache), one layer's data (its mapping), or zeros. While a merge
  // swaps layers (reads frozen) reads wait in read() instead.
  if (length == 0 || gate_.frozen(q, Gate::kRead)) return std::nullopt;
  auto h = single_holder(offset, length);
  if (!h) return std::nullopt;
  std::optional<std::span<const std::byte>> v;
  if ((*h & kZeroBit) || (*h == 0 && !base_)) {
    v = zero_view(length);
  } else if (*h == 0) {
    v = base_->read_view(q, offset, length);
  } else {
    // A layer's data: the LayerFile stays open (retired, not closed) when a
    // merge takes it out of the stack, so its mapping outlives the reply.
    v = layers_[*h - 1]->data_view(offset, length);
    if (v) IoStats::bump(layer_views_);
  }
  if (v) {
    IoStats::bump(stats_.reads);
    IoStats::bump(stats_.read_bytes, length);
  }
  return v;
}

Task<Result<>> CowTarget::read_stack(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.reads);
  IoStats::bump(stats_.read_bytes, buf.size());
  uint64_t pos = offset, end = offset + buf.size();
  while (pos < end) {
    uint64_t c = pos / chunk_;
    uint8_t h = holder(c);
    uint64_t run_end = std::min(end, (c + 1) * chunk_);
    while (run_end < end && holder(run_end / chunk_) == h) run_end = std::min(end, run_end + chunk_);
    CO_TRY(co_await read_run(q, h, buf.data() + (pos - offset), pos, run_end - pos));
    pos = run_end;
  }
  co_return Result<>{};
}

// ------------------------------------------------------------------ writes

Task<Result<>> CowTarget::lock_chunks(Queue& q, uint64_t c0, uint64_t c1) {
  // Takes every chunk of [c0, c1] or none; waits on the first busy one and
  // tries again when it is released.
  struct Take {
    CowTarget* t;
    Queue* q;
    uint64_t c0, c1;
    bool taken = false;
    bool try_take() REQUIRES(t->mu_) {
      for (uint64_t c = c0; c <= c1; ++c)
        if (t->busy_.count(c)) return false;
      for (uint64_t c = c0; c <= c1; ++c) t->busy_[c];
      return true;
    }
    bool await_ready() {
      MutexLock l(t->mu_);
      return taken = try_take();
    }
    bool await_suspend(std::coroutine_handle<> h) {
      MutexLock l(t->mu_);
      if ((taken = try_take())) return false;
      for (uint64_t c = c0; c <= c1; ++c) {
        auto it = t->busy_.find(c);
        if (it != t->busy_.end()) {
          it->second.push_back({q, h});
          break;
        }
      }
      return true;
    }
    bool await_resume() const noexcept { return taken; }
  };
  for (;;) {
    bool taken = co_await Take{this, &q, c0, c1};
    if (taken) break;
  }
  co_return Result<>{};
}

void CowTarget::unlock_chunks(uint64_t c0, uint64_t c1) {
  std::vector<std::pair<Queue*, std::coroutine_handle<>>> wake;
  {
    MutexLock l(mu_);
    for (uint64_t c = c0; c <= c1; ++c) {
      auto it = busy_.find(c);
      if (it == busy_.end()) continue;
      for (auto& w : it->second) wake.push_back(w);
      busy_.erase(it);
    }
  }
  for (auto& [q, h] : wake) q->post([h = h] { h.resume(); });
}

Task<void> CowTarget::prealloc(Queue& q, std::size_t layer, uint64_t offset, uint64_t length) {
  const uint64_t words = (size_ / prealloc_ + 64) / 64;
  if (prealloc_layer_.load(std::memory_order_relaxed) != layer) {
    // Another write layer (a snapshot, a merge): none of its regions asked
    // for yet. Racy by design: a bit wrongly set or cleared costs speed only.
    prealloc_layer_.store(layer, std::memory_order_relaxed);
    for (uint64_t w = 0; w < words; ++w) prealloc_done_[w].store(0, std::memory_order_relaxed);
  }
  const LayerFile& l = *layers_[layer];
  for (uint64_t r = offset / prealloc_; r <= (offset + length - 1) / prealloc_; ++r) {
    const uint64_t bit = uint64_t{1} << (r % 64);
    if (prealloc_done_[r / 64].load(std::memory_order_relaxed) & bit) continue;
    if (prealloc_done_[r / 64].fetch_or(bit, std::memory_order_relaxed) & bit) continue;
    const uint64_t rs = r * prealloc_, rl = std::min(prealloc_, size_ - rs);
    // Mode 0 allocates only the holes and never changes data, so a write into
    // the region racing this is safe; a failure (ENOSPC, EOPNOTSUPP) leaves the
    // writes to allocate as before.
    (void)co_await q.ring().fallocate(l.fd(), 0, l.header().data_offset + rs, rl);
  }
}

Task<Result<>> CowTarget::write_top(Queue& q, const std::byte* buf, uint64_t offset, uint64_t length, bool fua) {
  if (prealloc_ > 0) co_await prealloc(q, write_layer_.load(), offset, length);
  const LayerFile& l = *layers_[write_layer_.load()];
  uint64_t off = l.header().data_offset + offset;
  int flags = fua ? RWF_DSYNC : 0;
  // (Not IOSQE_ASYNC, unlike the file target: in bench/cow.sh it halved
  // fresh-chunk writes on ext4, 26.6k -> 12.4k IOPS, the io-wq workers of
  // two rings spinning on the layer file's inode lock.)
  while (length > 0) {
    int n = co_await q.ring().write(l.fd(), {buf, length}, off, flags);
    if (n == -EINTR || n == -EAGAIN) continue;
    if (n < 0) co_return posix_error(fmt::format("write layer {}@{}", l.path(), offset), -n);
    if (n == 0) co_return fail(EIO, fmt::format("write layer {}@{}: wrote nothing", l.path(), offset));
    buf += n;
    off += n;
    length -= n;
  }
  co_return Result<>{};
}

void CowTarget::set_states(uint64_t c0, uint64_t c1, uint8_t state) {
  uint8_t top = static_cast<uint8_t>(write_layer_.load() + 1);
  MutexLock l(mu_);
  for (uint64_t c = c0; c <= c1; ++c) {
    top_held_ += (state != kAbsent) - (top_state_[c] != kAbsent);
    top_state_[c] = state;
    const uint8_t before = index_[c].load(std::memory_order_relaxed);
    const uint8_t after = state == kZero ? (top | kZeroBit) : top;
    index_[c].store(after, std::memory_order_release);
    if ((before & ~kZeroBit) != (after & ~kZeroBit)) {
      held_by_[before & ~kZeroBit].fetch_sub(1, std::memory_order_relaxed);
      held_by_[after & ~kZeroBit].fetch_add(1, std::memory_order_relaxed);
    }
    dirty_.touch(c);
    if (merge_top_ && merge_top_state_[c] != kAbsent) {
      // The parent holds this chunk now (newer, or a copy): the merged top
      // must not claim it after a restart.
      merge_top_state_[c] = kAbsent;
      --merge_top_held_;
      merge_top_dirty_.touch(c);
    }
  }
}

// Writes buf (or zeros) at [offset, offset+length) into the top, copying up
// partial chunks the top does not hold.
Task<Result<>> CowTarget::modify(Queue& q, const std::byte* buf, uint64_t offset, uint64_t length, bool zero,
                                 IoFlags f) {
  if (length == 0) co_return Result<>{};
  const uint64_t end = offset + length;
  const uint64_t c0 = offset / chunk_, c1 = (end - 1) / chunk_;
  CO_TRY(co_await lock_chunks(q, c0, c1));
  Result<> res;
  Buffer chunk;
  for (uint64_t c = c0; c <= c1 && res; ++c) {
    uint64_t cs = c * chunk_, ce = std::min(cs + chunk_, size_);
    uint64_t ps = std::max(offset, cs), pe = std::min(end, ce);
    bool whole = ps == cs && pe == ce;
    uint8_t state;
    {
      MutexLock l(mu_);
      state = top_state_[c];
    }
    // In place only where the write layer is what reads see (see in_place()).
    const bool here = in_place(c);
    if (zero && whole) {
      // "Zeros here": whole chunks need no data; punch what the top held.
      if (state == kPresent) {
        const LayerFile& l = *layers_[write_layer_.load()];
        (void)co_await q.ring().fallocate(l.fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                          l.header().data_offset + cs, ce - cs);
      }
      set_states(c, c, kZero);
      continue;
    }
    if (whole || here) {
      // Write in place; consecutive such chunks go in one write.
      uint64_t run_end = pe;
      uint64_t cc = c;
      while (cc + 1 <= c1) {
        uint64_t ncs = (cc + 1) * chunk_, nce = std::min(ncs + chunk_, size_);
        uint64_t npe = std::min(end, nce);
        if (!((npe == nce) || in_place(cc + 1))) break;
        if (zero && npe == nce) break;  // whole zero chunks take the branch above
        ++cc;
        run_end = npe;
      }
      if (zero) {
        Buffer z = Buffer::get(run_end - ps);
        std::memset(z.data(), 0, z.size());
        res = co_await write_top(q, z.data(), ps, run_end - ps, f.fua);
      } else {
        res = co_await write_top(q, buf + (ps - offset), ps, run_end - ps, f.fua);
      }
      if (res) set_states(c, cc, kPresent);
      c = cc;
      continue;
    }
    // Copy up: the whole chunk as it reads now, with this write laid over it.
    if (chunk.size() < chunk_) chunk = Buffer::get(chunk_);
    res = co_await read_stack(q, {chunk.data(), ce - cs}, cs);
    if (!res) break;
    if (zero)
      std::memset(chunk.data() + (ps - cs), 0, pe - ps);
    else
      std::memcpy(chunk.data() + (ps - cs), buf + (ps - offset), pe - ps);
    res = co_await write_top(q, chunk.data(), cs, ce - cs, f.fua);
    if (res) {
      copy_ups_.fetch_add(1, std::memory_order_relaxed);
      set_states(c, c, kPresent);
    }
  }
  unlock_chunks(c0, c1);
  if (res && f.fua) res = co_await flush(q);  // the bits too
  co_return res;
}

Task<Result<>> CowTarget::write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.writes);
  IoStats::bump(stats_.write_bytes, buf.size());
  co_await gate_.enter(q);
  auto r = co_await modify(q, buf.data(), offset, buf.size(), false, f);
  gate_.leave(q);
  if (!r) IoStats::bump(stats_.errors);
  co_return r;
}

Task<Result<>> CowTarget::trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  IoStats::bump(stats_.trims);
  IoStats::bump(stats_.trim_bytes, length);
  co_await gate_.enter(q);
  auto r = co_await modify(q, nullptr, offset, length, true, f);
  gate_.leave(q);
  co_return r;
}

Task<Result<>> CowTarget::zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  IoStats::bump(stats_.zeros);
  IoStats::bump(stats_.zero_bytes, length);
  co_await gate_.enter(q);
  auto r = co_await modify(q, nullptr, offset, length, true, f);
  gate_.leave(q);
  co_return r;
}

// ------------------------------------------------------------------- flush

std::vector<CowTarget::PageCopy> CowTarget::DirtyPages::copy(const std::vector<uint8_t>& states) {
  std::vector<PageCopy> out;
  for (uint64_t p : pages) {
    uint64_t c0 = p * kStatesPerPage, c1 = std::min<uint64_t>(c0 + kStatesPerPage, states.size());
    out.push_back({p, gen[p], std::vector<uint8_t>(states.begin() + c0, states.begin() + c1)});
  }
  return out;
}

void CowTarget::DirtyPages::clean(const std::vector<PageCopy>& copies) {
  for (const auto& pg : copies)
    if (gen[pg.page] == pg.gen) pages.erase(pg.page);
}

Result<> CowTarget::persist(LayerFile& layer, const std::vector<PageCopy>& pages) {
  {
    MutexLock l(persist_mu_);
    std::vector<uint8_t> raw(4096);
    for (const auto& pg : pages) {
      uint64_t& in_file = persisted_gen_[{&layer, pg.page}];
      if (pg.gen <= in_file) continue;  // a newer copy was written by another flush
      std::fill(raw.begin(), raw.end(), 0);
      for (std::size_t i = 0; i < pg.states.size(); ++i)
        raw[i / 4] |= static_cast<uint8_t>((pg.states[i] & 3) << (2 * (i % 4)));
      if (::pwrite(layer.fd(), raw.data(), raw.size(), layer.header().bitmap_offset + pg.page * 4096) != 4096)
        return posix_error(fmt::format("layer {}: write bitmap", layer.path()), errno ? errno : EIO);
      in_file = pg.gen;
    }
  }
  // Also makes durable a newer copy another flush wrote meanwhile.
  return layer.sync();
}

Task<Result<>> CowTarget::flush(Queue& q) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.flushes);
  if (read_only_) co_return Result<>{};
  // A snapshot's old top first (see wait_seal).
  if (seal_pending_.load(std::memory_order_acquire)) {
    Result<> sr = co_await q.blocking([this] { return wait_seal(); });
    if (!sr) {
      IoStats::bump(stats_.errors);
      co_return sr;
    }
  }
  // Copy the changed pages *before* the data sync: every bit in the copy
  // belongs to a write that had completed, so its data is in this sync.
  // The pages stay dirty until a flush has them in the file: a flush that
  // starts while another one is persisting a page persists it too, rather
  // than returning before the bits of the writes it covers are in the file.
  // The layer is taken with the copy: a snapshot or merge may change the
  // write layer meanwhile, and these states belong to this one.
  std::vector<PageCopy> pages, merge_pages;
  LayerFile* wl;
  LayerFile* mt;
  bool sync_top = false;
  {
    MutexLock l(mu_);
    wl = layers_[write_layer_.load()].get();
    pages = dirty_.copy(top_state_);
    // During a merge: the top's cleared bits, written only once the parent's
    // data and bits for those chunks are durable (below).
    mt = merge_top_;
    if (mt) {
      merge_pages = merge_top_dirty_.copy(merge_top_state_);
      // The top's own last writes (before the merge began), unless none of
      // them is still the top's to answer for (merge_top_unsynced_).
      sync_top = merge_top_unsynced_ && merge_top_held_ > 0;
    }
  }
  int r = 0;
  Result<> res;
  if (sync_top) {
    do {
      r = co_await q.ring().fdatasync(mt->fd());
    } while (r == -EINTR || r == -EAGAIN);
    if (r < 0) {
      res = posix_error(fmt::format("fdatasync {}", mt->path()), -r);
    } else {
      MutexLock l(mu_);
      if (merge_top_ == mt) merge_top_unsynced_ = false;
    }
  }
  if (res) do {
      r = co_await q.ring().fdatasync(wl->fd());
    } while (r == -EINTR || r == -EAGAIN);
  if (res && r < 0) res = posix_error(fmt::format("fdatasync {}", wl->path()), -r);
  if (res && !pages.empty()) res = co_await q.blocking([this, wl, &pages] { return persist(*wl, pages); });
  if (res && !merge_pages.empty())
    res = co_await q.blocking([this, mt, &merge_pages] { return persist(*mt, merge_pages); });
  if (res) {
    // Clean again unless changed since the copy.
    MutexLock l(mu_);
    dirty_.clean(pages);
    if (merge_top_ == mt) merge_top_dirty_.clean(merge_pages);
  } else {
    IoStats::bump(stats_.errors);
  }
  if (res && base_) res = co_await base_->flush(q);
  co_return res;
}

// ------------------------------------------------------------ block status

Task<Result<Extents>> CowTarget::extents(Queue& q, uint64_t offset, uint64_t length) {
  Extents out;
  uint64_t pos = offset, end = offset + length;
  while (pos < end) {
    uint64_t c = pos / chunk_;
    uint8_t h = holder(c);
    uint64_t run_end = std::min(end, (c + 1) * chunk_);
    while (run_end < end && holder(run_end / chunk_) == h) run_end = std::min(end, run_end + chunk_);
    if ((h & kZeroBit) || (h == 0 && !base_)) {
      append_extent(out, run_end - pos, Extent::kHole | Extent::kZero);
    } else if (h == 0) {
      CO_TRY_ASSIGN(Extents be, co_await base_->extents(q, pos, run_end - pos));
      // Through the stack a base hole is still a hole here.
      for (const auto& x : be) append_extent(out, x.length, x.flags);
    } else {
      append_extent(out, run_end - pos, 0);
    }
    pos = run_end;
  }
  co_return out;
}

Task<Result<Extents>> CowTarget::context_extents(Queue& q, std::string_view context, uint64_t offset,
                                                 uint64_t length) {
  (void)q;
  if (context != "strata:allocation-depth") co_return fail(EINVAL, "no context " + std::string(context));
  // Depth 1 is the top layer, 2 the one below...; the base is layers+1.
  Extents out;
  const std::size_t n = nlayers_.load();
  uint64_t pos = offset, end = offset + length;
  while (pos < end) {
    uint64_t c = pos / chunk_;
    uint8_t h = holder(c) & ~kZeroBit;
    uint64_t run_end = std::min(end, (c + 1) * chunk_);
    while (run_end < end && (holder(run_end / chunk_) & ~kZeroBit) == h) run_end = std::min(end, run_end + chunk_);
    uint32_t depth = h == 0 ? static_cast<uint32_t>(n + 1) : static_cast<uint32_t>(n - h + 1);
    append_extent(out, run_end - pos, depth);
    pos = run_end;
  }
  co_return out;
}

// ---------------------------------------------------------------- snapshot

// Flushes with writes flowing, so that a flush with writes held (snapshot,
// merge) has little left to do and the pause stays short. A flush writes
// back at disk speed what the writes dirtied meanwhile, so each round leaves
// less for the next: repeat until one is quick (a few rounds converge even
// under a write load; the bound keeps a disk slower than the load from
// looping). Returns the number of rounds.
Result<> CowTarget::wait_seal() {
  MutexLock l(seal_mu_);
  seal_cv_.wait(seal_mu_, [&]() NO_THREAD_SAFETY_ANALYSIS { return !sealing_; });
  return seal_result_;
}

Result<int> CowTarget::flush_until_quick(Queue& q) {
  int rounds = 0;
  while (rounds < 4) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = q.call([&] { return flush(q); });
    if (!r) return fail(r.error());
    ++rounds;
    if (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(20)) break;
  }
  return rounds;
}

void CowTarget::failpoint_delay(const char* env) {
  const char* e = std::getenv(env);
  const long ms = e ? std::strtol(e, nullptr, 10) : 0L;
  if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

Result<std::string> CowTarget::snapshot(Queue& fq, SnapshotStats* stats) {
  using Clock = std::chrono::steady_clock;
  const auto t_start = Clock::now();
  if (read_only_) return fail(EROFS, "snapshot: the stack is read-only");
  if (write_layer_.load() + 1 != nlayers_.load()) return fail(EBUSY, "snapshot: a merge is running");
  if (nlayers_.load() >= kMaxLayers) return fail(EMLINK, "snapshot: too many layers");
  // One at a time: each makes TOP.snap-next and picks the next TOP.snapN.
  if (snapshotting_.exchange(true)) return fail(EBUSY, "snapshot: another snapshot of this stack is running");
  struct Done {
    std::atomic<bool>& b;
    ~Done() { b.store(false); }
  } done{snapshotting_};
  // Not until a merge has ended: after its drop it renames the parent to the
  // top's name, with I/O flowing.
  if (merging_.load()) return fail(EBUSY, "snapshot: a merge is running");
  LayerFile& old = *layers_[nlayers_.load() - 1];
  std::string snap;
  for (int i = 1;; ++i) {
    snap = fmt::format("{}.snap{}", top_path_, i);
    if (!std::filesystem::exists(snap)) break;
  }
  // The new top is made before writes are held, under a name of its own
  // (`TOP.snap-next`), already linked to the name the old top is about to take
  // and durable, so that the hold is only the switch. A crash before the
  // renames leaves a stray TOP.snap-next that the next snapshot replaces; the
  // stack is the old one. A crash after them leaves the new stack, the old
  // top holding what had reached its file (what a FLUSH had covered at least).
  const std::string next = top_path_ + ".snap-next";
  (void)::unlink(next.c_str());
  auto fresh = LayerFile::create(next, size_, chunk_, &old);
  if (!fresh) return fail(fresh.error());
  Result<> r;
  {
    (void)::flock((*fresh)->fd(), LOCK_EX | LOCK_NB);
    auto& fh = (*fresh)->mutable_header();
    fh.flags |= LayerFile::kFlagInUse;
    fh.parent_path = std::filesystem::path(snap).filename().string();
    r = (*fresh)->write_header();
    if (r) r = (*fresh)->sync();
    // The new file's name durable before the renames that rely on it.
    if (r) sync_parent_dir(next);
  }
  if (!r) {
    (void)::unlink(next.c_str());
    return fail(r.error());
  }
  auto fl = flush_until_quick(fq);
  if (!fl) {
    (void)::unlink(next.c_str());
    return fail(fl.error());
  }
  const int rounds = *fl;
  const auto t_hold = Clock::now();
  // Quiesce: new writes park, those in flight finish. Reads go on (they
  // never wait for a snapshot, so a steady read load cannot hold it off).
  gate_.freeze(Gate::kWrites);
  // Only the switch is under the hold: the renames (the new top is durable
  // already) and the index. The old top's last writes are made durable by
  // the seal below, after writes resume; flushes wait for it (wait_seal).
  Result<> r2;
  if (::rename(top_path_.c_str(), snap.c_str()) < 0) r2 = posix_error("snapshot: rename", errno);
  if (r2 && ::rename(next.c_str(), top_path_.c_str()) < 0) {
    r2 = posix_error("snapshot: rename", errno);
    (void)::rename(snap.c_str(), top_path_.c_str());
  }
  if (!r2) {
    gate_.thaw();
    (void)::unlink(next.c_str());
    return fail(r2.error());
  }
  {
    MutexLock l(seal_mu_);
    sealing_ = true;
  }
  seal_pending_.store(true, std::memory_order_release);
  old.rename_to(snap);
  (*fresh)->rename_to(top_path_);
  std::vector<PageCopy> pages;
  {
    MutexLock l(mu_);
    pages = dirty_.copy(top_state_);
    layers_.push_back(std::move(*fresh));  // capacity reserved: readers are safe
    top_state_.assign(chunks_, kAbsent);
    top_held_ = 0;
    dirty_.pages.clear();
  }
  nlayers_.store(layers_.size());
  write_layer_.store(layers_.size() - 1);
  gate_.thaw();
  const auto t_end = Clock::now();

  // The seal: the old top's data, then its bits, then its header (read-only,
  // no longer in use), then the renames, each durable before the next.
  // STRATA_FAILPOINT_SEAL_DELAY_MS: a pause before it, for the test that
  // kills strata while flushes wait for the seal (docs/targets/cow.md).
  failpoint_delay("STRATA_FAILPOINT_SEAL_DELAY_MS");
  Result<> seal;
  if (::fdatasync(old.fd()) < 0) seal = posix_error(fmt::format("snapshot: fdatasync {}", old.path()), errno);
  if (seal && !pages.empty()) seal = persist(old, pages);
  if (seal) {
    old.mutable_header().flags |= LayerFile::kFlagReadOnly;
    old.mutable_header().flags &= ~LayerFile::kFlagInUse;
    seal = old.write_header();
    if (seal) seal = old.sync();
  }
  (void)::flock(old.fd(), LOCK_SH | LOCK_NB);
  sync_parent_dir(top_path_);
  {
    MutexLock l(seal_mu_);
    sealing_ = false;
    if (!seal && seal_result_) seal_result_ = fail(seal.error());
  }
  seal_pending_.store(false, std::memory_order_release);
  seal_cv_.notify_all();
  if (!seal) {
    LOG_ERROR("snapshot: sealing {}: {} (every flush fails from now on)", snap, seal.error().message);
    return fail(seal.error());
  }
  if (stats) {
    auto us = [](Clock::duration d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); };
    stats->held_us = us(t_end - t_hold);
    stats->total_us = us(Clock::now() - t_start);
    stats->flush_rounds = rounds;
    stats->seal_us = us(Clock::now() - t_end);
  }
  return snap;
}

}  // namespace strata
