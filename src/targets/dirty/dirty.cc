// DirtyTarget: the device's outermost target. It marks the dirty maps
// (dirty_map.cc) on writes, keeps them across restarts in the state dir, and
// serves control (start, stop, read and clear a map, the copy-before-write of
// a sync, pacing, the moved fence). Design notes: see dirty.h.
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
