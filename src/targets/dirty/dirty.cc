// Design notes: see dirty.h. The file format is documented in
// docs/dirty-maps.md; this is its only reader and writer.
#include "targets/dirty/dirty.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <future>

#include <fmt/core.h>

#include "core/bytes.h"
#include "core/log.h"

namespace strata {

// ------------------------------------------------------------------ DirtyMap

uint64_t DirtyMap::words_for(uint64_t granularity, uint64_t size) {
  return ((size + granularity - 1) / granularity + 63) / 64;
}

DirtyMap::DirtyMap(uint64_t granularity, uint64_t size)
    : granularity_(granularity),
      size_(size),
      nbits_((size + granularity - 1) / granularity),
      nwords_(words_for(granularity, size)),
      own_(new std::atomic<uint64_t>[std::max<uint64_t>(nwords_, 1)]) {
  words_ = own_.get();
  for (uint64_t i = 0; i < std::max<uint64_t>(nwords_, 1); ++i) words_[i].store(0, std::memory_order_relaxed);
}

DirtyMap::DirtyMap(uint64_t granularity, uint64_t size, std::atomic<uint64_t>* words, std::shared_ptr<void> owner)
    : granularity_(granularity),
      size_(size),
      nbits_((size + granularity - 1) / granularity),
      nwords_(words_for(granularity, size)),
      owner_(std::move(owner)),
      words_(words) {}

std::shared_ptr<DirtyMap> DirtyMap::copy() const {
  auto c = std::make_shared<DirtyMap>(granularity_, size_);
  for (uint64_t i = 0; i < nwords_; ++i) c->set_word(i, word(i));
  return c;
}

bool DirtyMap::mark(uint64_t offset, uint64_t length, uint64_t& first_word, uint64_t& last_word) {
  if (length == 0 || offset >= size_) return false;
  uint64_t b0 = offset / granularity_;
  uint64_t b1 = std::min(nbits_ - 1, (offset + length - 1) / granularity_);
  bool changed = false;
  for (uint64_t w = b0 / 64; w <= b1 / 64; ++w) {
    uint64_t lo = w == b0 / 64 ? b0 % 64 : 0;
    uint64_t hi = w == b1 / 64 ? b1 % 64 : 63;
    uint64_t mask = (hi == 63 ? ~uint64_t{0} : ((uint64_t{1} << (hi + 1)) - 1)) & ~((uint64_t{1} << lo) - 1);
    if ((words_[w].load(std::memory_order_relaxed) & mask) == mask) continue;
    uint64_t old = words_[w].fetch_or(mask, std::memory_order_acq_rel);
    if ((old & mask) != mask) {
      if (!changed) first_word = w;
      last_word = w;
      changed = true;
    }
  }
  return changed;
}

void DirtyMap::merge(const DirtyMap& o) {
  for (uint64_t i = 0; i < std::min(nwords_, o.nwords_); ++i) words_[i].fetch_or(o.word(i));
}

bool DirtyMap::dirty(uint64_t block) const { return (word(block / 64) >> (block % 64)) & 1; }

uint64_t DirtyMap::dirty_blocks() const {
  uint64_t n = 0;
  for (uint64_t i = 0; i < nwords_; ++i) n += __builtin_popcountll(word(i));
  return n;
}

std::vector<std::pair<uint64_t, uint64_t>> DirtyMap::ranges(uint64_t offset, uint64_t length) const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  uint64_t end = length == UINT64_MAX ? size_ : std::min(size_, offset + length);
  if (offset >= end) return out;
  uint64_t b = offset / granularity_;
  const uint64_t bend = (end + granularity_ - 1) / granularity_;
  while (b < bend) {
    uint64_t w = word(b / 64) >> (b % 64);
    if (w == 0) {  // skip the rest of a clean word
      b = (b / 64 + 1) * 64;
      continue;
    }
    b += __builtin_ctzll(w);
    if (b >= bend) break;
    uint64_t start = b;
    while (b < bend && dirty(b)) ++b;
    uint64_t s = std::max(offset, start * granularity_), e = std::min(end, b * granularity_);
    if (!out.empty() && out.back().first + out.back().second == s)
      out.back().second += e - s;
    else
      out.push_back({s, e - s});
  }
  return out;
}

Extents DirtyMap::extents(uint64_t offset, uint64_t length) const {
  Extents e;
  uint64_t pos = offset, end = offset + length;
  for (const auto& [s, n] : ranges(offset, length)) {
    append_extent(e, s - pos, 0);
    append_extent(e, n, 1);
    pos = s + n;
  }
  append_extent(e, end - pos, 0);
  return e;
}

// ------------------------------------------------------------------- MapFile

namespace {

constexpr char kMagic[8] = {'S', 'T', 'R', 'D', 'M', 'A', 'P', '1'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kHeaderSize = 4096;
constexpr uint32_t kFlagInUse = 1, kFlagInconsistent = 2, kFlagPendingSync = 4;

}  // namespace

std::string current_boot_id() {
  char buf[64] = {};
  int fd = ::open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "unknown";
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  std::string s(buf, n > 0 ? n : 0);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

MapFile::~MapFile() {
  if (map_) ::munmap(map_, map_len_);
  if (fd_ >= 0) ::close(fd_);
}

uint64_t MapFile::slot_offset(uint32_t slot) const {
  uint64_t slot_bytes = (DirtyMap::words_for(h_.granularity, h_.size) * 8 + 4095) / 4096 * 4096;
  return kHeaderSize + slot * slot_bytes;
}

std::shared_ptr<DirtyMap> MapFile::slot(uint32_t s) {
  auto* w = reinterpret_cast<std::atomic<uint64_t>*>(map_ + slot_offset(s));
  return std::make_shared<DirtyMap>(h_.granularity, h_.size, w, shared_from_this());
}

void MapFile::zero_slot(uint32_t s) { std::memset(map_ + slot_offset(s), 0, slot_offset(1) - slot_offset(0)); }

Result<> MapFile::write_header() {
  std::byte b[kHeaderSize] = {};
  std::memcpy(b, kMagic, 8);
  store_le<uint32_t>(b, 8, kVersion);
  store_le<uint32_t>(b, 12, (h_.in_use ? kFlagInUse : 0) | (h_.inconsistent ? kFlagInconsistent : 0) |
                           (h_.pending_sync ? kFlagPendingSync : 0));
  store_le<uint64_t>(b, 16, h_.granularity);
  store_le<uint64_t>(b, 24, h_.size);
  store_le<uint32_t>(b, 32, h_.active_slot);
  store_le<uint64_t>(b, 40, h_.generation);
  std::memcpy(b + 48, h_.boot_id.data(), std::min<std::size_t>(h_.boot_id.size(), 63));
  std::memcpy(b + 112, h_.name.data(), std::min<std::size_t>(h_.name.size(), 255));
  seal_header(b, kHeaderSize);
  if (::pwrite(fd_, b, kHeaderSize, 0) != static_cast<ssize_t>(kHeaderSize))
    return posix_error(fmt::format("dirty map {}: write header", path_), errno ? errno : EIO);
  return {};
}

Result<> MapFile::sync() {
  if (map_ && ::msync(map_, map_len_, MS_SYNC) < 0) return posix_error(fmt::format("dirty map {}: msync", path_), errno);
  if (::fdatasync(fd_) < 0) return posix_error(fmt::format("dirty map {}: fdatasync", path_), errno);
  return {};
}

namespace {
Result<> map_file(int fd, bool shared, uint64_t len, std::byte*& out, const std::string& path) {
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, shared ? MAP_SHARED : MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) return posix_error(fmt::format("dirty map {}: mmap", path), errno);
  // Keep the bitmap resident so marking a block never waits for a page-in
  // on a queue thread (best effort: RLIMIT_MEMLOCK may refuse).
  if (shared) (void)::mlock(p, len);
  out = static_cast<std::byte*>(p);
  return {};
}
}  // namespace

Result<std::shared_ptr<MapFile>> MapFile::create(const std::string& path, const std::string& name,
                                                 uint64_t granularity, uint64_t size) {
  std::shared_ptr<MapFile> f(new MapFile());
  f->path_ = path;
  f->fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (f->fd_ < 0) return posix_error(fmt::format("dirty map {}", path), errno);
  f->h_.granularity = granularity;
  f->h_.size = size;
  f->h_.name = name;
  f->h_.in_use = true;
  f->h_.boot_id = current_boot_id();
  f->h_.generation = 1;
  f->map_len_ = f->slot_offset(2);
  if (::ftruncate(f->fd_, f->map_len_) < 0) return posix_error(fmt::format("dirty map {}", path), errno);
  TRY(f->write_header());
  TRY(map_file(f->fd_, true, f->map_len_, f->map_, path));
  TRY(f->sync());
  return f;
}

Result<std::shared_ptr<MapFile>> MapFile::open(const std::string& path, bool read_only, bool& consistent,
                                               std::string& why) {
  std::shared_ptr<MapFile> f(new MapFile());
  f->path_ = path;
  f->fd_ = ::open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (f->fd_ < 0) return posix_error(fmt::format("dirty map {}", path), errno);
  std::byte b[kHeaderSize];
  if (::pread(f->fd_, b, kHeaderSize, 0) != static_cast<ssize_t>(kHeaderSize))
    return fail(EINVAL, fmt::format("dirty map {}: header is truncated", path));
  if (std::memcmp(b, kMagic, 8) != 0) return fail(EINVAL, fmt::format("dirty map {}: bad magic", path));
  if (!header_checksum_ok(b, kHeaderSize))
    return fail(EINVAL, fmt::format("dirty map {}: header checksum mismatch", path));
  if (load_le<uint32_t>(b, 8) != kVersion)
    return fail(EINVAL, fmt::format("dirty map {}: unsupported version {}", path, load_le<uint32_t>(b, 8)));
  uint32_t flags = load_le<uint32_t>(b, 12);
  auto& h = f->h_;
  h.in_use = flags & kFlagInUse;
  h.inconsistent = flags & kFlagInconsistent;
  h.pending_sync = flags & kFlagPendingSync;
  h.granularity = load_le<uint64_t>(b, 16);
  h.size = load_le<uint64_t>(b, 24);
  h.active_slot = load_le<uint32_t>(b, 32);
  h.generation = load_le<uint64_t>(b, 40);
  h.boot_id = std::string(reinterpret_cast<const char*>(b + 48), strnlen(reinterpret_cast<const char*>(b + 48), 63));
  h.name = std::string(reinterpret_cast<const char*>(b + 112), strnlen(reinterpret_cast<const char*>(b + 112), 255));
  if (h.granularity < 512 || (h.granularity & (h.granularity - 1)) || h.active_slot > 1 || h.size == 0)
    return fail(EINVAL, fmt::format("dirty map {}: bad granularity, size or slot in the header", path));
  f->map_len_ = f->slot_offset(2);
  struct stat st;
  if (::fstat(f->fd_, &st) < 0 || static_cast<uint64_t>(st.st_size) < f->map_len_)
    return fail(EINVAL, fmt::format("dirty map {}: file is shorter than its bitmaps", path));
  TRY(map_file(f->fd_, !read_only, f->map_len_, f->map_, path));
  if (h.pending_sync) {
    // A sync was interrupted: what it took is dirty again.
    auto active = f->slot(h.active_slot);
    active->merge(*f->slot(1 - h.active_slot));
    h.pending_sync = false;
    why = "a sync was interrupted; its blocks are dirty again";
  }
  consistent = true;
  if (h.inconsistent) {
    consistent = false;
    why = "marked inconsistent earlier";
  } else if (h.in_use && h.boot_id != current_boot_id()) {
    consistent = false;
    why = "the machine restarted while the map was in use (bits not yet on disk may be lost)";
  } else if (h.in_use && why.empty()) {
    why = "strata stopped without closing it; complete (same boot: every bit reached the page cache)";
  }
  return f;
}

// --------------------------------------------------------------- DirtyTarget

Result<std::shared_ptr<DirtyTarget>> DirtyTarget::create(std::shared_ptr<Target> lower, std::string device,
                                                         std::string state_dir) {
  std::shared_ptr<DirtyTarget> t(new DirtyTarget(std::move(lower), std::move(device), std::move(state_dir)));
  if (t->dir_.empty()) return t;
  DIR* d = ::opendir(t->dir_.c_str());
  if (!d) {
    if (errno == ENOENT) return t;
    return posix_error(fmt::format("state dir {}", t->dir_), errno);
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 5 && n.ends_with(".dmap")) names.push_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  if (!names.empty()) TRY(t->lock_dir());
  for (const auto& n : names) {
    std::string path = t->dir_ + "/" + n;
    bool consistent = false;
    std::string why;
    auto f = MapFile::open(path, false, consistent, why);
    if (!f) return fail(f.error());
    if ((*f)->header().size != t->size()) {
      // Not this device's map (another server's, a device since resized):
      // its bits say nothing here. The device still serves, with a fresh map
      // of the same name marked inconsistent (its consumer must copy
      // everything); the old file is kept beside it.
      uint64_t was = (*f)->header().size, gran = (*f)->header().granularity;
      std::string name = (*f)->header().name;
      f->reset();
      std::string aside = path + ".wrong-size";
      if (::rename(path.c_str(), aside.c_str()) < 0) return posix_error(fmt::format("dirty map {}: rename", path), errno);
      auto nf = MapFile::create(path, name, gran, t->size());
      if (!nf) return fail(nf.error());
      f = std::move(nf);
      consistent = false;
      why = fmt::format("made for a device of {} bytes, this one has {}: replaced by an empty map marked "
                        "INCONSISTENT (a full copy is needed); the old file is {}",
                        was, t->size(), aside);
      LOG_WARN("dirty map {}/{}: {}", t->device_, n.substr(0, n.size() - 5), why);
      why.clear();
    }
    auto m = std::make_shared<Map>();
    m->name = n.substr(0, n.size() - 5);
    m->slot = (*f)->header().active_slot;
    m->bits = (*f)->slot(m->slot);
    m->consistent = consistent;
    auto& h = (*f)->mutable_header();
    h.in_use = true;
    h.inconsistent = !consistent;
    h.boot_id = current_boot_id();
    TRY((*f)->write_header());
    TRY((*f)->sync());
    m->file = std::move(*f);
    if (!why.empty()) LOG_INFO("dirty map {}/{}: {}", t->device_, m->name, why);
    t->maps_.push_back(std::move(m));
  }
  return t;
}

DirtyTarget::~DirtyTarget() = default;

Result<> DirtyTarget::lock_dir() {
  // This device's maps are this server's alone: an OFD lock on DIR/.lock
  // (shared within the process, so a device re-created in place is not
  // refused), taken before a map is opened or made. A device with no map
  // takes none: servers may share a state dir while their maps differ.
  MutexLock serial(dir_lock_mu_);
  if (dir_lock_) return {};
  std::string lock = dir_ + "/.lock";
  int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return posix_error(fmt::format("state dir {}", lock), errno);
  auto l = FileLock::acquire(fd, lock, /*write=*/true);
  std::string who = l ? "" : FileLock::holder(fd);
  ::close(fd);
  if (!l && l.error().code == EBUSY)
    return fail(EBUSY, fmt::format("dirty maps of device '{}' ({}): in use by another server{}: give each server "
                                   "its own --state-dir",
                                   device_, dir_, who.empty() ? "" : " (" + who + ")"));
  if (!l) return fail(l.error());
  dir_lock_ = std::move(*l);
  return {};
}

Result<> DirtyTarget::attach_queue(Queue& q) {
  TRY(lower_->attach_queue(q));
  MutexLock l(mu_);
  gate_.attach(q);
  per_queue_[q.id()].maps = std::make_shared<const MapList>(maps_);
  per_queue_[q.id()].copy = copy_;
  return {};
}

std::shared_ptr<DirtyTarget::Map> DirtyTarget::find(const std::string& name) const {
  for (const auto& m : maps_)
    if (m->name == name) return m;
  return nullptr;
}

void DirtyTarget::on_every_queue(const std::function<void(PerQueue&)>& fn) {
  gate_.on_every_queue([this, &fn](Queue& q) { fn(per_queue_[q.id()]); });
}

void DirtyTarget::publish() {
  MutexLock serial(publish_mu_);
  std::shared_ptr<const MapList> list;
  {
    MutexLock l(mu_);
    list = std::make_shared<const MapList>(maps_);
  }
  // Writes in flight marked the old list before their data reached the
  // device: wait for them, so that whoever reads the blocks of the old bits
  // next (a checkpoint's caller) reads their data.
  std::mutex fm;
  std::vector<std::future<void>> drained;
  on_every_queue([&](PerQueue& pq) {
    pq.maps = list;
    uint64_t old = pq.epoch++;
    auto p = std::make_shared<std::promise<void>>();
    {
      std::lock_guard<std::mutex> l(fm);
      drained.push_back(p->get_future());
    }
    if (pq.in_flight_by_epoch[old & 1] == 0)
      p->set_value();
    else
      pq.on_old_drained = [p] { p->set_value(); };
  });
  for (auto& f : drained) f.get();
}

// ---- data path

Failure DirtyTarget::refuse(Queue& q) {
  gate_.leave(q);
  return moved_error();
}

void DirtyTarget::leave(Queue& q, uint64_t epoch) {
  PerQueue& pq = per_queue_[q.id()];
  // The last write that marked a list publish() is replacing.
  if (--pq.in_flight_by_epoch[epoch & 1] == 0 && epoch != pq.epoch && pq.on_old_drained)
    std::exchange(pq.on_old_drained, nullptr)();
  gate_.leave(q);
}

uint64_t DirtyTarget::mark(Queue& q, uint64_t offset, uint64_t length) {
  PerQueue& pq = per_queue_[q.id()];
  ++pq.in_flight_by_epoch[pq.epoch & 1];
  // The bits live in the mapped map file: setting them is the persisting.
  for (const auto& m : *pq.maps) {
    uint64_t first = 0, last = 0;
    m->bits->mark(offset, length, first, last);
  }
  return pq.epoch;
}

Task<Result<>> DirtyTarget::write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  // Every write is counted, even with no map: freeze() and publish() wait
  // for the writes in flight, and one that went around the count could land
  // after a map started or a point-in-time copy began.
  return write_tracked(q, buf, offset, f);
}

Failure DirtyTarget::moved_error() const {
  return fail(ESHUTDOWN, fmt::format("device '{}' has moved to another host (sync --move): reconnect there",
                                     log_escape(device_)));
}

Task<Result<>> DirtyTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  if (moved()) co_return moved_error();
  IoMetrics::Request m(metrics_, q.id(), IoOp::kRead, buf.size());
  auto r = co_await lower_->read(q, buf, offset);
  m.done(r.has_value());
  co_return r;
}

Task<Result<>> DirtyTarget::flush(Queue& q) {
  if (moved()) co_return moved_error();
  IoMetrics::Request m(metrics_, q.id(), IoOp::kFlush, 0);
  auto r = co_await lower_->flush(q);
  m.done(r.has_value());
  co_return r;
}

Task<Result<>> DirtyTarget::write_tracked(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  IoMetrics::Request m(metrics_, q.id(), IoOp::kWrite, buf.size());
  co_await pace(q, buf.size());
  co_await gate_.enter(q);  // held while frozen; a write let go after a fence fails
  if (moved()) co_return refuse(q);
  uint64_t epoch = mark(q, offset, buf.size());
  if (auto c = per_queue_[q.id()].copy) co_await c->before_write(q, offset, buf.size());
  auto r = co_await lower_->write(q, buf, offset, f);
  leave(q, epoch);
  m.done(r.has_value());
  co_return r;
}

Task<Result<>> DirtyTarget::trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  // Every write is counted, even with no map: freeze() and publish() wait
  // for the writes in flight, and one that went around the count could land
  // after a map started or a point-in-time copy began.
  return trim_tracked(q, offset, length, f);
}

Task<Result<>> DirtyTarget::trim_tracked(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  IoMetrics::Request m(metrics_, q.id(), IoOp::kTrim, length);
  co_await gate_.enter(q);  // held while frozen; a write let go after a fence fails
  if (moved()) co_return refuse(q);
  uint64_t epoch = mark(q, offset, length);
  if (auto c = per_queue_[q.id()].copy) co_await c->before_write(q, offset, length);
  auto r = co_await lower_->trim(q, offset, length, f);
  leave(q, epoch);
  m.done(r.has_value());
  co_return r;
}

Task<Result<>> DirtyTarget::zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  // Every write is counted, even with no map: freeze() and publish() wait
  // for the writes in flight, and one that went around the count could land
  // after a map started or a point-in-time copy began.
  return zero_tracked(q, offset, length, f);
}

Task<Result<>> DirtyTarget::zero_tracked(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  IoMetrics::Request m(metrics_, q.id(), IoOp::kZero, length);
  co_await pace(q, std::min<uint64_t>(length, 1 << 20));
  co_await gate_.enter(q);  // held while frozen; a write let go after a fence fails
  if (moved()) co_return refuse(q);
  uint64_t epoch = mark(q, offset, length);
  if (auto c = per_queue_[q.id()].copy) co_await c->before_write(q, offset, length);
  auto r = co_await lower_->zero(q, offset, length, f);
  leave(q, epoch);
  m.done(r.has_value());
  co_return r;
}

std::vector<std::string> DirtyTarget::contexts() const {
  std::vector<std::string> out = lower_->contexts();
  MutexLock l(mu_);
  for (const auto& m : maps_) out.push_back(std::string(kContextPrefix) + m->name);
  return out;
}

Task<Result<Extents>> DirtyTarget::context_extents(Queue& q, std::string_view context, uint64_t offset,
                                                   uint64_t length) {
  if (context.starts_with(kContextPrefix)) {
    auto list = per_queue_[q.id()].maps;
    for (const auto& m : *list)
      if (m->name == context.substr(kContextPrefix.size())) co_return m->bits->extents(offset, length);
    co_return fail(EINVAL, fmt::format("no dirty map '{}'", context.substr(kContextPrefix.size())));
  }
  co_return co_await lower_->context_extents(q, context, offset, length);
}

// ---- control

Result<> DirtyTarget::start_map(const std::string& name, uint64_t granularity, bool full) {
  if (granularity < 512 || (granularity & (granularity - 1)))
    return fail(EINVAL, fmt::format("granularity {} must be a power of two of at least 512", granularity));
  if (name.empty() || name.size() > 200 || name.find_first_of("/:. \t\n") != std::string::npos)
    return fail(EINVAL, fmt::format("map name '{}' may not be empty or hold '/', ':', '.' or spaces", name));
  auto m = std::make_shared<Map>();
  m->name = name;
  {
    MutexLock l(mu_);
    if (find(name)) return fail(EEXIST, fmt::format("device '{}' already has a dirty map '{}'", device_, name));
  }
  if (!dir_.empty()) {
    if (::mkdir(dir_.c_str(), 0700) < 0 && errno != EEXIST) return posix_error(fmt::format("state dir {}", dir_), errno);
    TRY(lock_dir());
    auto f = MapFile::create(dir_ + "/" + name + ".dmap", name, granularity, size());
    if (!f) return fail(f.error());
    m->file = std::move(*f);
    m->bits = m->file->slot(0);
  } else {
    m->bits = std::make_shared<DirtyMap>(granularity, size());
  }
  if (full && size() > 0) {
    uint64_t first = 0, last = 0;
    m->bits->mark(0, size(), first, last);
  }
  {
    MutexLock l(mu_);
    maps_.push_back(m);
  }
  publish();
  return {};
}

Result<> DirtyTarget::stop_map(const std::string& name) {
  std::shared_ptr<Map> m;
  {
    MutexLock l(mu_);
    m = find(name);
    if (!m) return fail(ENOENT, fmt::format("device '{}' has no dirty map '{}'", device_, name));
    maps_.erase(std::remove(maps_.begin(), maps_.end(), m), maps_.end());
  }
  publish();
  if (m->file) ::unlink(m->file->path().c_str());
  return {};
}

std::vector<DirtyTarget::MapInfo> DirtyTarget::maps() const {
  MutexLock l(mu_);
  std::vector<MapInfo> out;
  for (const auto& m : maps_)
    out.push_back({m->name, m->bits->granularity(), m->bits->dirty_blocks(), m->consistent,
                   m->file ? m->file->path() : ""});
  return out;
}

Result<std::shared_ptr<DirtyMap>> DirtyTarget::map_bits(const std::string& name, bool* consistent) const {
  MutexLock l(mu_);
  auto m = find(name);
  if (!m) return fail(ENOENT, fmt::format("device '{}' has no dirty map '{}'", device_, name));
  if (consistent) *consistent = m->consistent;
  return m->bits;
}

Result<std::shared_ptr<DirtyMap>> DirtyTarget::checkpoint(const std::string& name, bool* consistent,
                                                         bool for_sync) {
  std::shared_ptr<Map> old;
  {
    MutexLock l(mu_);
    old = find(name);
  }
  if (!old) return fail(ENOENT, fmt::format("device '{}' has no dirty map '{}'", device_, name));
  if (old->syncing) return fail(EBUSY, fmt::format("dirty map '{}' is being synced", name));
  auto fresh = std::make_shared<Map>(*old);
  fresh->syncing = for_sync;
  // A sync of an inconsistent map copies the whole device; until it has
  // finished (finish_sync), and after it failed or was interrupted, the
  // replica may lack any block: the map stays inconsistent.
  fresh->consistent = for_sync ? old->consistent : true;
  if (fresh->file) {
    // The fresh slot is cleared and made the active one on disk before any
    // write can land in it.
    fresh->slot = 1 - old->slot;
    fresh->file->zero_slot(fresh->slot);
    fresh->bits = fresh->file->slot(fresh->slot);
    auto& h = fresh->file->mutable_header();
    h.active_slot = fresh->slot;
    h.generation++;
    h.inconsistent = !fresh->consistent;
    h.pending_sync = for_sync;
    TRY(fresh->file->sync());
    TRY(fresh->file->write_header());
    TRY(fresh->file->sync());
  } else {
    fresh->bits = std::make_shared<DirtyMap>(old->bits->granularity(), size());
  }
  {
    MutexLock l(mu_);
    std::replace(maps_.begin(), maps_.end(), old, fresh);
  }
  // After every queue has switched, nothing writes to the old bits any more;
  // hand back a copy (the old slot is reused by the next checkpoint).
  publish();
  if (consistent) *consistent = old->consistent;
  return old->bits->copy();
}

Result<> DirtyTarget::restore(const std::string& name, const DirtyMap& bits) {
  std::shared_ptr<Map> m;
  {
    MutexLock l(mu_);
    m = find(name);
  }
  if (!m) return fail(ENOENT, fmt::format("device '{}' has no dirty map '{}'", device_, name));
  m->bits->merge(bits);  // in the mapping: persisted with the page cache
  return end_sync(name, /*replica_has_all=*/false);
}

Result<> DirtyTarget::finish_sync(const std::string& name) { return end_sync(name, /*replica_has_all=*/true); }

Result<> DirtyTarget::end_sync(const std::string& name, bool replica_has_all) {
  std::shared_ptr<Map> m;
  {
    MutexLock l(mu_);
    m = find(name);
  }
  if (!m) return fail(ENOENT, fmt::format("device '{}' has no dirty map '{}'", device_, name));
  m->syncing = false;
  if (replica_has_all) m->consistent = true;
  if (m->file && (m->file->header().pending_sync || m->file->header().inconsistent != !m->consistent)) {
    m->file->mutable_header().pending_sync = false;
    m->file->mutable_header().inconsistent = !m->consistent;
    TRY(m->file->write_header());
    TRY(m->file->sync());
  }
  return {};
}

// The freeze outlives the call (the caller, sync.cc, thaws later): the
// analysis follows the gate within this file only.
void DirtyTarget::freeze() NO_THREAD_SAFETY_ANALYSIS { gate_.freeze(Gate::kWrites); }

void DirtyTarget::throttle(uint64_t bytes_per_sec) {
  on_every_queue([bytes_per_sec](PerQueue& pq) { pq.write_rate = bytes_per_sec; });
}

Task<void> DirtyTarget::pace(Queue& q, uint64_t bytes) {
  PerQueue& pq = per_queue_[q.id()];
  if (pq.write_rate == 0) co_return;
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  const int64_t start = std::max(now, pq.next_write_ns);
  pq.next_write_ns = start + static_cast<int64_t>(static_cast<double>(bytes) * 1e9 / pq.write_rate);
  if (start > now) co_await q.ring().sleep(std::chrono::nanoseconds(start - now));
}

void DirtyTarget::thaw() NO_THREAD_SAFETY_ANALYSIS { gate_.thaw(); }

Result<> DirtyTarget::start_copy(std::shared_ptr<CopyBeforeWrite> copy) {
  {
    MutexLock l(mu_);
    if (copy_) return fail(EBUSY, fmt::format("device '{}' is being copied already", device_));
    copy_ = copy;
  }
  // The moment of the copy: no write in flight, new ones held.
  gate_.freeze(Gate::kWrites);
  on_every_queue([&](PerQueue& pq) { pq.copy = copy; });
  gate_.thaw();
  return {};
}

void DirtyTarget::stop_copy() {
  on_every_queue([](PerQueue& pq) { pq.copy = nullptr; });
  MutexLock l(mu_);
  copy_ = nullptr;
}

void DirtyTarget::close_clean() {
  MutexLock l(mu_);
  for (const auto& m : maps_) {
    if (!m->file) continue;
    auto r = m->file->sync();
    if (r) {
      m->file->mutable_header().in_use = false;
      r = m->file->write_header();
    }
    if (r) r = m->file->sync();
    if (!r) LOG_ERROR("dirty map {}/{}: {}", device_, m->name, r.error().message);
  }
}

}  // namespace strata
