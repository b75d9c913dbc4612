// Opening a cow stack (create: its options, the chain of layer files, the
// index of which layer holds each chunk) and what it reports (caps, identity,
// table line, layer status, info). The I/O path, flush and snapshot are
// cow.cc; merge and flatten cow_merge.cc. Design notes: see cow.h.
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

#include <fmt/core.h>

#include "core/buffer.h"
#include "core/log.h"

namespace strata {

Result<std::shared_ptr<Target>> CowTarget::create(Params& p, Resolver& r) {
  std::shared_ptr<CowTarget> t(new CowTarget());
  t->top_path_ = TRY(p.arg(0, "top-layer"));
  auto base = p.option("base");
  t->read_only_ = p.flag("ro") || p.read_only;
  unsigned lease = 30;
  if (auto v = p.option("lease")) {
    auto n = parse_u64(*v);
    if (!n || *n < 2 || *n > 3600) return fail(EINVAL, fmt::format("option lease={}: must be 2..3600 seconds", *v));
    lease = static_cast<unsigned>(*n);
  }
  t->lease_ = lease;
  if (auto v = p.option("prealloc")) {
    auto n = parse_size(*v);
    if (!n || (*n != 0 && (*n < 4096 || *n > (uint64_t{1} << 30) || *n % 4096 != 0)))
      return fail(EINVAL, fmt::format("option prealloc={}: must be 0 (off) or a multiple of 4K from 4K to 1G",
                                      log_escape(*v)));
    t->prealloc_ = *n;
  }
  TRY(p.finish(1));
  if (is_remote_url(t->top_path_) && !t->read_only_)
    return fail(EINVAL, fmt::format("layer {}: the writable top of a stack is a local file (a layer on shared "
                                    "storage is read-only: add `ro`, or create a local top over it)",
                                    t->top_path_));
  if (base) {
    auto b = r.device(*base);
    if (!b) return fail(b.error().code, fmt::format("base={}: {}", *base, b.error().message));
    t->base_ = std::move(*b);
    t->base_name_ = *base;
  }
  // Open the chain top-down, following parent links.
  std::vector<std::unique_ptr<LayerFile>> chain;
  std::string path = t->top_path_;
  bool top = true;
  std::set<std::pair<dev_t, ino_t>> seen;  // a parent cycle is named as one, not as a lock conflict
  std::set<std::string> seen_urls;
  for (;;) {
    if (chain.size() >= kMaxLayers) return fail(ELOOP, fmt::format("{}: more than {} layers", t->top_path_, kMaxLayers));
    const bool remote = is_remote_url(path);
    if (remote ? !seen_urls.insert(path).second
               : [&] {
                   struct stat st {};
                   return ::stat(path.c_str(), &st) == 0 && !seen.insert({st.st_dev, st.st_ino}).second;
                 }())
      return fail(ELOOP, fmt::format("layer {}: parent cycle: its parent {} is already in the stack",
                                     chain.back()->path(), path));
    // A shared layer on remote storage: this host's lease on it first (refused
    // while someone writes it), then its header and bitmap.
    auto l = remote ? [&]() -> Result<std::unique_ptr<LayerFile>> {
      auto f = TRY(r.remote_file(path));
      TRY(f->hold_lease(lease));
      return LayerFile::open_remote(std::move(f));
    }()
                    : LayerFile::open(path, top && !t->read_only_);
    // A parent that is not there: say whose parent it is, as `layer check` does.
    if (!l && !chain.empty() && l.error().code == ENOENT)
      return fail(ENOENT, fmt::format("layer {}: broken parent link: {}", chain.back()->path(), l.error().message));
    if (!l) return fail(l.error());
    if (top && !t->read_only_ && ((*l)->header().flags & LayerFile::kFlagReadOnly))
      return fail(EROFS, fmt::format("layer {} is a read-only (snapshot) layer: serve it with `ro`, or create a "
                                     "new top over it (strata layer create NEW --parent {})",
                                     path, path));
    if (!chain.empty()) {
      const auto& child = chain.back()->header();
      if ((*l)->header().uuid != child.parent_uuid)
        return fail(EINVAL, fmt::format("layer {}: broken parent link: its parent {} has UUID {}, but it expects {}",
                                        chain.back()->path(), path, uuid_string((*l)->header().uuid),
                                        uuid_string(child.parent_uuid)));
      if ((*l)->header().size != child.size || (*l)->header().chunk_size != child.chunk_size)
        return fail(EINVAL, fmt::format("layer {}: size or chunk size differs from its child's", path));
    }
    std::string parent = (*l)->parent_full_path();
    chain.push_back(std::move(*l));
    top = false;
    if (parent.empty()) break;
    path = parent;
  }
  const auto& h = chain.front()->header();
  t->size_ = h.size;
  t->chunk_ = h.chunk_size;
  t->chunks_ = chain.front()->chunks();
  if (t->prealloc_ > 0 && !t->read_only_)
    t->prealloc_done_.reset(new std::atomic<uint64_t>[(t->size_ / t->prealloc_ + 64) / 64]());
  else
    t->prealloc_ = 0;
  if (p.length != t->size_)
    return fail(EINVAL, fmt::format("layer {} is {} bytes, the segment {}", t->top_path_, t->size_, p.length));
  if (t->base_ && t->base_->size() < t->size_)
    return fail(EINVAL, fmt::format("base={} has {} bytes, the layers {}", t->base_name_, t->base_->size(), t->size_));
  // Build the index bottom-up: the last layer to claim a chunk is its holder.
  t->layers_.reserve(kMaxLayers);
  t->index_.reset(new std::atomic<uint8_t>[std::max<uint64_t>(t->chunks_, 1)]);
  for (uint64_t c = 0; c < t->chunks_; ++c) t->index_[c].store(0, std::memory_order_relaxed);
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
    auto states = (*it)->read_bitmap();
    if (!states) return fail(states.error());
    uint8_t li = static_cast<uint8_t>(t->layers_.size() + 1);
    for (uint64_t c = 0; c < t->chunks_; ++c) {
      uint8_t s = (*states)[c];
      if (s == kPresent) t->index_[c].store(li, std::memory_order_relaxed);
      if (s == kZero) t->index_[c].store(li | kZeroBit, std::memory_order_relaxed);
    }
    if (it + 1 == chain.rend()) {
      MutexLock l(t->mu_);  // not shared yet: for the analysis only
      t->top_state_ = std::move(*states);
      t->top_held_ = static_cast<uint64_t>(
          std::count_if(t->top_state_.begin(), t->top_state_.end(), [](uint8_t x) { return x != kAbsent; }));
    }
    t->layers_.push_back(std::move(*it));
  }
  t->nlayers_ = t->layers_.size();
  t->write_layer_ = t->layers_.size() - 1;
  t->recount();
  if (!t->read_only_) {
    auto& top = *t->layers_.back();
    if (top.header().flags & LayerFile::kFlagInUse)
      LOG_WARN("layer {} was not closed cleanly: chunks written after its last flush were dropped; every chunk "
               "its bitmap holds was flushed before its bit",
               top.path());
    top.mutable_header().flags |= LayerFile::kFlagInUse;
    TRY(top.write_header());
    TRY(top.sync());
  }
  return std::shared_ptr<Target>(std::move(t));
}

CowTarget::~CowTarget() {
  if (read_only_ || layers_.empty()) return;
  // Clean close: the bitmap as it is, then the in-use flag cleared.
  auto& top = *layers_[write_layer_.load()];
  if (::fdatasync(top.fd()) == 0) {
    MutexLock l(mu_);
    uint64_t pages = (top_state_.size() + kStatesPerPage - 1) / kStatesPerPage;
    if (pages && top.write_bitmap_pages(top_state_, 0, pages - 1) && top.sync()) {
      top.mutable_header().flags &= ~LayerFile::kFlagInUse;
      if (!top.write_header() || !top.sync()) LOG_ERROR("layer {}: cannot mark it closed", top.path());
      // A merge that stopped part-way: the top's bits for chunks its parent
      // took, after the parent's (see merge_top_).
      if (merge_top_ && !merge_top_dirty_.pages.empty() &&
          (!merge_top_unsynced_ || merge_top_held_ == 0 || ::fdatasync(merge_top_->fd()) == 0)) {
        uint64_t mpages = (merge_top_state_.size() + kStatesPerPage - 1) / kStatesPerPage;
        if (!merge_top_->write_bitmap_pages(merge_top_state_, 0, mpages - 1) || !merge_top_->sync())
          LOG_ERROR("layer {}: cannot write its bitmap", merge_top_->path());
      }
    }
  }
}

Caps CowTarget::caps() const {
  Caps c;
  c.can_write = !read_only_;
  c.can_trim = !read_only_;
  c.can_zero = !read_only_;
  c.can_fast_zero = !read_only_;
  c.can_extents = true;
  c.can_multi_conn = true;
  return c;
}

BlockSizes CowTarget::block_sizes() const {
  BlockSizes b;
  b.preferred = std::max<uint32_t>(4096, chunk_);
  return b;
}

// A read-only stack: its layers' UUIDs (a layer is never changed in place
// under its UUID while read-only) and its base's identity. A writable stack
// changes through its own writes: none.
std::string CowTarget::identity() const {
  if (!read_only_) return {};
  MutexLock ll(layers_mu_);
  std::string id = "cow:" + std::to_string(chunk_);
  for (std::size_t i = 0; i < nlayers_.load(); ++i) id += ":" + uuid_string(layers_[i]->header().uuid);
  if (base_) {
    std::string b = base_->identity();
    if (b.empty()) return {};
    id += "/" + b;
  }
  return id;
}

std::string CowTarget::table_line() const {
  std::string s = "cow " + top_path_;
  if (base_) s += " base=" + base_name_;
  if (lease_ != 30) s += " lease=" + std::to_string(lease_);
  if (!read_only_ && prealloc_ != kDefaultPrealloc) s += " prealloc=" + std::to_string(prealloc_);
  if (read_only_) s += " ro";
  return s;
}

std::vector<std::string> CowTarget::layer_paths() const {
  MutexLock ll(layers_mu_);
  std::vector<std::string> v;
  for (std::size_t i = 0; i < nlayers_.load(); ++i) v.push_back(layers_[i]->path());
  return v;
}

std::vector<CowTarget::LayerStatus> CowTarget::layer_status() const {
  MutexLock ll(layers_mu_);
  const std::size_t n = nlayers_.load();
  std::vector<LayerStatus> v(n);
  const std::size_t w = write_layer_.load();
  for (std::size_t i = 0; i < n; ++i) {
    const auto& l = *layers_[i];
    v[i].path = l.path();
    v[i].uuid = uuid_string(l.header().uuid);
    v[i].writable = !read_only_ && i == w;
    v[i].chunks = held_by_[i + 1].load(std::memory_order_relaxed);
    if (l.remote()) {
      v[i].file_bytes = l.remote()->size();
    } else if (struct stat st {}; ::fstat(l.fd(), &st) == 0) {
      v[i].file_bytes = static_cast<uint64_t>(st.st_size);
      v[i].allocated_bytes = static_cast<uint64_t>(st.st_blocks) * 512;
    }
  }
  return v;
}

void CowTarget::recount() {
  uint64_t held[kMaxLayers + 1] = {};
  for (uint64_t c = 0; c < chunks_; ++c) ++held[holder(c) & ~kZeroBit];
  for (std::size_t i = 0; i <= kMaxLayers; ++i) held_by_[i].store(held[i], std::memory_order_relaxed);
}

void CowTarget::info(InfoSink& out) const {
  out.add("layers", nlayers_.load());
  out.add("chunk_size", chunk_);
  {
    MutexLock ll(layers_mu_);
    out.add("top", nlayers_.load() == 0 ? "" : layers_[nlayers_.load() - 1]->path());
  }
  out.add("copy_ups", copy_ups_.load());
  out.add("merging", merging_.load() ? 1 : 0);
  out.add("merge_copied_chunks", merge_done_.load(std::memory_order_relaxed));
  out.add("merge_total_chunks", merge_total_.load(std::memory_order_relaxed));
  uint64_t held;
  {
    MutexLock l(mu_);
    held = top_held_;
  }
  out.add("top_chunks", held);
  out.add("mapped_reads", layer_views_.load(std::memory_order_relaxed));
  stats_.report(out);
}

Result<> CowTarget::attach_queue(Queue& q) {
  if (base_) TRY(base_->attach_queue(q));
  for (std::size_t i = 0; i < nlayers_.load(); ++i)
    if (const auto& d = layers_[i]->remote_device()) TRY(d->attach_queue(q));
  gate_.attach(q);
  return {};
}

}  // namespace strata
