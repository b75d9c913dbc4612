#include "targets/cache/cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include <fmt/core.h>

#include "core/log.h"

namespace strata {
namespace {

constexpr char kMagic[16] = {'S', 'T', 'R', 'A', 'T', 'A', '-', 'C', 'A', 'C', 'H', 'E', 0, 0, 0, 1};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kMaxIdentity = 3000;
constexpr uint64_t kChecksumAt = CacheTarget::kHeaderSize - 8;
constexpr auto kFlushInterval = std::chrono::milliseconds(200);
constexpr uint64_t kMaxFillBytes = 64 << 20;  // copies waiting to be written to the cache file

void put64(std::byte* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = std::byte(v >> (8 * i));
}
uint64_t get64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
void put32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = std::byte(v >> (8 * i));
}
uint32_t get32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
uint64_t fnv1a(const std::byte* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<uint8_t>(p[i])) * 0x100000001b3ull;
  return h;
}

Result<> pwrite_all(int fd, const void* buf, size_t n, uint64_t off, const std::string& path) {
  const auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return posix_error(fmt::format("cache file {}: write", log_escape(path)), w < 0 ? errno : EIO);
    p += w;
    n -= static_cast<size_t>(w);
    off += static_cast<uint64_t>(w);
  }
  return {};
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Result<std::shared_ptr<Target>> CacheTarget::create(Params& p, Resolver& r) {
  std::string name = TRY(p.arg(0, "device"));
  std::string path = TRY(p.arg(1, "cache-file"));
  std::shared_ptr<CacheTarget> t(new CacheTarget());
  if (auto v = p.option("chunk")) {
    auto n = parse_size(*v);
    if (!n) return fail(EINVAL, fmt::format("option chunk={}: {}", log_escape(*v), n.error().message));
    if (*n < 4096 || *n > (4u << 20) || (*n & (*n - 1)) != 0)
      return fail(EINVAL, fmt::format("option chunk={}: must be a power of two from 4K to 4M", log_escape(*v)));
    t->chunk_ = static_cast<uint32_t>(*n);
  }
  std::optional<uint64_t> size;
  if (auto v = p.option("size")) {
    auto n = parse_size(*v);
    if (!n) return fail(EINVAL, fmt::format("option size={}: {}", log_escape(*v), n.error().message));
    size = *n;
  }
  TRY(p.finish(2));
  auto src = r.device(name);
  if (!src) return fail(src.error().code, fmt::format("argument 1 (device): {}", src.error().message));
  t->source_ = std::move(*src);
  t->source_name_ = name;
  t->path_ = path;
  t->length_ = p.length;
  if (t->source_->size() < t->length_)
    return fail(EINVAL, fmt::format("device {} is too small: the segment needs {} bytes, it has {}", name,
                                    t->length_, t->source_->size()));
  if (t->source_->caps().can_write)
    return fail(EINVAL, fmt::format("device {} is writable: a cache serves only a device whose segments are "
                                    "read-only (`ro` on its file, nfs or cow segments; an rbd snapshot)",
                                    name));
  std::string identity = t->source_->identity();
  if (identity.empty())
    return fail(EINVAL, fmt::format("device {} cannot tell when its data changes (file, nfs, rbd snapshots and "
                                    "read-only cow stacks over them can): it cannot be cached",
                                    name));
  if (identity.size() > kMaxIdentity) identity = fmt::format("{:016x}", fnv1a(reinterpret_cast<const std::byte*>(identity.data()), identity.size()));
  uint64_t want = size.value_or(t->length_);
  if (want < t->chunk_) want = t->chunk_;
  uint64_t nslots = (want + t->chunk_ - 1) / t->chunk_;
  uint64_t nchunks = (t->length_ + t->chunk_ - 1) / t->chunk_;
  nslots = std::min(nslots, std::max<uint64_t>(nchunks, 1));
  if (nslots > (uint64_t{1} << 31)) return fail(EINVAL, fmt::format("option size=: too many chunks ({})", nslots));
  t->nslots_ = static_cast<uint32_t>(nslots);
  t->cache_bytes_ = nslots * t->chunk_;
  t->data_off_ = (kHeaderSize + nslots * 8 + 4095) / 4096 * 4096;
  t->data_off_ = (t->data_off_ + t->chunk_ - 1) / t->chunk_ * t->chunk_;
  TRY(t->open_file(identity));
  t->identity_ = identity;
  t->next_identity_check_ns_ = now_ns() + 1'000'000'000;
  t->flusher_ = std::thread([raw = t.get()] { raw->flusher(); });
  return std::shared_ptr<Target>(std::move(t));
}

Result<> CacheTarget::open_file(const std::string& identity) {
  // Only a regular file, checked before a blocking open (a FIFO would hang).
  struct stat st;
  if (::stat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    return fail(EINVAL, fmt::format("cache file {}: not a regular file", log_escape(path_)));
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd_ < 0) return posix_error(fmt::format("cache file {}", log_escape(path_)), errno);
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode))
    return fail(EINVAL, fmt::format("cache file {}: not a regular file", log_escape(path_)));
  lock_ = TRY(FileLock::acquire(fd_, path_, true));
  direct_fd_ = ::open(path_.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC | O_NOFOLLOW);
  std::vector<std::byte> h(kHeaderSize);
  ssize_t n = ::pread(fd_, h.data(), h.size(), 0);
  std::string why;
  if (n != static_cast<ssize_t>(h.size())) {
    why = st.st_size == 0 ? "" : "short header";
  } else if (std::memcmp(h.data(), kMagic, sizeof kMagic) != 0) {
    why = "no cache header";
  } else if (get64(h.data() + kChecksumAt) != fnv1a(h.data(), kChecksumAt)) {
    why = "header checksum mismatch";
  } else if (get32(h.data() + 16) != kVersion || get32(h.data() + 20) != chunk_ || get64(h.data() + 24) != nslots_ ||
             get64(h.data() + 32) != length_ || get64(h.data() + 40) != data_off_) {
    why = "another geometry (chunk, size or device size)";
  } else {
    uint32_t idlen = get32(h.data() + 48);
    if (idlen > kMaxIdentity ||
        std::string_view(reinterpret_cast<const char*>(h.data()) + 52, idlen) != std::string_view(identity))
      why = "the device's identity changed (its data may differ)";
  }
  if (why.empty() && n == static_cast<ssize_t>(h.size())) {
    // Load the slot table; an entry naming no chunk of this device, or a chunk
    // another slot holds already, is dropped.
    std::vector<std::byte> tab(uint64_t{nslots_} * 8);
    ssize_t m = ::pread(fd_, tab.data(), tab.size(), kHeaderSize);
    if (m != static_cast<ssize_t>(tab.size())) return init_file(identity);
    const uint64_t nchunks = (length_ + chunk_ - 1) / chunk_;
    uint64_t dropped = 0;
    MutexLock l(mu_);
    slots_.assign(nslots_, SlotState{});
    for (uint32_t s = 0; s < nslots_; ++s) {
      uint64_t e = get64(tab.data() + uint64_t{s} * 8);
      if (e != kFree && e - 1 < nchunks && !where_.count(e - 1)) {
        slots_[s] = {e - 1, 0, Slot::kValid, false};
        where_[e - 1] = s;
        used_.fetch_add(1, std::memory_order_relaxed);
      } else {
        if (e != kFree) {
          ++dropped;
          evicting_.push_back(s);  // its entry is cleared by the first persist round
          slots_[s].state = Slot::kEvicting;
          continue;
        }
        free_.push_back(s);
      }
    }
    LOG_INFO("cache {}: {} of {} chunks cached{}", log_escape(path_), used_.load(), nslots_,
             dropped ? fmt::format(", {} bad entries dropped", dropped) : std::string());
    return {};
  }
  if (!why.empty()) LOG_WARN("cache {}: emptied: {}", log_escape(path_), why);
  return init_file(identity);
}

Result<> CacheTarget::init_file(const std::string& identity) {
  // 1. No valid header (durable), 2. an empty table and the new header
  // (durable): a crash in between finds no header and starts again.
  std::byte zero[sizeof kMagic] = {};
  TRY(pwrite_all(fd_, zero, sizeof zero, 0, path_));
  if (::fdatasync(fd_) != 0) return posix_error(fmt::format("cache file {}: fdatasync", log_escape(path_)), errno);
  if (::ftruncate(fd_, static_cast<off_t>(kHeaderSize)) != 0 ||
      ::ftruncate(fd_, static_cast<off_t>(data_off_ + cache_bytes_)) != 0)
    return posix_error(fmt::format("cache file {}: truncate", log_escape(path_)), errno);
  TRY(write_header(identity));
  if (::fdatasync(fd_) != 0) return posix_error(fmt::format("cache file {}: fdatasync", log_escape(path_)), errno);
  MutexLock l(mu_);
  slots_.assign(nslots_, SlotState{});
  where_.clear();
  free_.clear();
  for (uint32_t s = nslots_; s-- > 0;) free_.push_back(s);
  used_.store(0);
  return {};
}

Result<> CacheTarget::write_header(const std::string& identity) {
  std::vector<std::byte> h(kHeaderSize);
  std::memcpy(h.data(), kMagic, sizeof kMagic);
  put32(h.data() + 16, kVersion);
  put32(h.data() + 20, chunk_);
  put64(h.data() + 24, nslots_);
  put64(h.data() + 32, length_);
  put64(h.data() + 40, data_off_);
  put32(h.data() + 48, static_cast<uint32_t>(identity.size()));
  std::memcpy(h.data() + 52, identity.data(), identity.size());
  put64(h.data() + kChecksumAt, fnv1a(h.data(), kChecksumAt));
  return pwrite_all(fd_, h.data(), h.size(), 0, path_);
}

CacheTarget::~CacheTarget() {
  if (flusher_.joinable()) {
    {
      MutexLock l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    flusher_.join();
  }
  // Fills still writing (their queues run them) end before the file closes.
  for (int i = 0; i < 5000 && fills_in_flight_.load() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (direct_fd_ >= 0) ::close(direct_fd_);
  if (fd_ >= 0) {
    persist_now();
    ::close(fd_);
  }
}

Caps CacheTarget::caps() const {
  Caps c;
  Caps s = source_->caps();
  c.can_write = false;
  c.can_flush = false;
  c.can_fua = false;
  c.can_trim = false;
  c.can_zero = false;
  c.can_extents = s.can_extents;
  c.can_cache = true;
  c.can_multi_conn = true;
  return c;
}

std::string CacheTarget::table_line() const {
  return fmt::format("cache {} {} size={} chunk={}", source_name_, path_, cache_bytes_, chunk_);
}

void CacheTarget::info(InfoSink& out) const {
  out.add("cache_file", path_);
  out.add("chunk_size", chunk_);
  out.add("cache_slots", nslots_);
  out.add("cache_used_slots", used_.load(std::memory_order_relaxed));
  out.add("hits", hits_.load(std::memory_order_relaxed));
  out.add("misses", misses_.load(std::memory_order_relaxed));
  out.add("hit_bytes", hit_bytes_.load(std::memory_order_relaxed));
  out.add("miss_bytes", miss_bytes_.load(std::memory_order_relaxed));
  out.add("fills", fills_.load(std::memory_order_relaxed));
  out.add("fills_skipped", fills_skipped_.load(std::memory_order_relaxed));
  out.add("evictions", evictions_.load(std::memory_order_relaxed));
  out.add("bypass", bypass_.load() ? 1 : 0);
}

void CacheTarget::check_identity() {
  int64_t now = now_ns(), next = next_identity_check_ns_.load(std::memory_order_relaxed);
  if (now < next || !next_identity_check_ns_.compare_exchange_strong(next, now + 1'000'000'000)) return;
  std::string id = source_->identity();
  if (id.size() > kMaxIdentity) id = fmt::format("{:016x}", fnv1a(reinterpret_cast<const std::byte*>(id.data()), id.size()));
  if (id != identity_ && !bypass_.exchange(true)) {
    invalidations_.fetch_add(1);
    LOG_WARN("cache {}: device {} changed while served: every read goes to it until the cache is loaded again "
             "(then emptied)",
             log_escape(path_), log_escape(source_name_));
  }
}

Task<Result<>> CacheTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  check_identity();
  if (bypass_.load(std::memory_order_relaxed)) {
    miss_bytes_.fetch_add(buf.size(), std::memory_order_relaxed);
    co_return co_await source_->read(q, buf, offset);
  }
  co_return co_await read_chunks(q, buf, offset);
}

Task<Result<>> CacheTarget::cache(Queue& q, uint64_t offset, uint64_t length) {
  std::vector<std::byte> tmp(std::min<uint64_t>(length, 1 << 20));
  while (length > 0) {
    uint64_t n = std::min<uint64_t>(length, tmp.size());
    Result<> r = co_await read(q, std::span(tmp.data(), n), offset);
    if (!r) co_return r;
    offset += n;
    length -= n;
  }
  co_return Result<>{};
}

Task<Result<>> CacheTarget::read_chunks(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  if (buf.empty()) co_return Result<>{};
  const uint64_t end = offset + buf.size();
  const uint64_t c0 = offset / chunk_, c1 = (end - 1) / chunk_;
  // Which chunks are cached: their slots pinned (no eviction while read).
  std::vector<int64_t> slot(c1 - c0 + 1, -1);
  {
    MutexLock l(mu_);
    for (uint64_t c = c0; c <= c1; ++c) {
      auto it = where_.find(c);
      if (it == where_.end()) continue;
      SlotState& s = slots_[it->second];
      if (s.state != Slot::kValid) continue;
      ++s.readers;
      s.referenced = true;
      slot[c - c0] = it->second;
    }
  }
  Result<> r;
  uint64_t c = c0;
  while (c <= c1) {
    if (slot[c - c0] >= 0) {
      const uint32_t s = static_cast<uint32_t>(slot[c - c0]);
      const uint64_t lo = std::max(offset, c * chunk_), hi = std::min(end, (c + 1) * chunk_);
      if (r) {
        std::span<std::byte> dst = buf.subspan(lo - offset, hi - lo);
        uint64_t done = 0;
        while (done < dst.size()) {
          int n = co_await q.ring().read(fd_, dst.subspan(done), slot_offset(s) + (lo - c * chunk_) + done);
          if (n <= 0) {
            r = n < 0 ? posix_error(fmt::format("cache file {}: read", log_escape(path_)), -n)
                      : fail(EIO, fmt::format("cache file {}: read past its end", log_escape(path_)));
            break;
          }
          done += static_cast<uint64_t>(n);
        }
        if (r) {
          hits_.fetch_add(1, std::memory_order_relaxed);
          hit_bytes_.fetch_add(hi - lo, std::memory_order_relaxed);
        }
      }
      MutexLock l(mu_);
      --slots_[s].readers;
      ++c;
      continue;
    }
    // A run of missing chunks: read whole chunks from the device (the cache
    // keeps whole chunks), hand the client its part, keep the rest.
    uint64_t ce = c;
    while (ce + 1 <= c1 && slot[ce + 1 - c0] < 0) ++ce;
    const uint64_t lo = c * chunk_, hi = std::min(length_, (ce + 1) * chunk_);
    if (r && lo >= offset && hi <= end && !bypass_.load(std::memory_order_relaxed)) {
      // The run lies inside the request (reads aligned to chunks: a boot's,
      // nbdcopy's): read it into the client's buffer and write the fill from
      // there before the reply, without a buffer and a copy of its own.
      std::span<std::byte> dst = buf.subspan(lo - offset, hi - lo);
      r = co_await source_->read(q, dst, lo);
      if (r) {
        misses_.fetch_add(1, std::memory_order_relaxed);
        miss_bytes_.fetch_add(hi - lo, std::memory_order_relaxed);
        fills_in_flight_.fetch_add(1);
        co_await fill_from(q, c, dst);
        fills_in_flight_.fetch_sub(1);
      }
    } else if (r) {
      auto data = std::make_shared<Buffer>(Buffer::get(hi - lo));
      r = co_await source_->read(q, {data->data(), data->size()}, lo);
      if (r) {
        const uint64_t a = std::max(offset, lo), b = std::min(end, hi);
        std::memcpy(buf.data() + (a - offset), data->data() + (a - lo), b - a);
        misses_.fetch_add(1, std::memory_order_relaxed);
        miss_bytes_.fetch_add(hi - lo, std::memory_order_relaxed);
        if (fill_bytes_in_flight_.load(std::memory_order_relaxed) + data->size() <= kMaxFillBytes &&
            !bypass_.load(std::memory_order_relaxed)) {
          fills_in_flight_.fetch_add(1);
          fill_bytes_in_flight_.fetch_add(data->size());
          spawn(fill(q, c, std::move(data)));
        } else {
          fills_skipped_.fetch_add(ce - c + 1, std::memory_order_relaxed);
        }
      }
    }
    c = ce + 1;
  }
  co_return r;
}

int64_t CacheTarget::claim_slot(uint64_t chunk) {
  if (where_.count(chunk)) return -1;
  if (free_.empty()) {
    if (!want_evict_) {
      want_evict_ = true;
      cv_.notify_all();
    }
    return -1;
  }
  uint32_t s = free_.back();
  free_.pop_back();
  slots_[s] = {chunk, 0, Slot::kFilling, true};
  where_[chunk] = s;
  return s;
}

Task<void> CacheTarget::fill(Queue& q, uint64_t first_chunk, std::shared_ptr<Buffer> data) {
  co_await fill_from(q, first_chunk, {data->data(), data->size()});
  fill_bytes_in_flight_.fetch_sub(data->size());
  fills_in_flight_.fetch_sub(1);
}

Task<void> CacheTarget::fill_from(Queue& q, uint64_t first_chunk, std::span<const std::byte> data) {
  const uint64_t n = (data.size() + chunk_ - 1) / chunk_;
  // The run's slots claimed together: from a fresh cache's free list they
  // follow each other, and a run of adjacent slots is one write.
  std::vector<int64_t> slot(n);
  {
    MutexLock l(mu_);
    for (uint64_t i = 0; i < n; ++i) slot[i] = claim_slot(first_chunk + i);
  }
  for (uint64_t i = 0; i < n;) {
    if (slot[i] < 0) {
      ++i;
      continue;
    }
    uint64_t j = i + 1;
    while (j < n && slot[j] == slot[j - 1] + 1) ++j;
    const uint64_t bytes = (j - 1 - i) * chunk_ + chunk_bytes(first_chunk + j - 1);
    std::span<const std::byte> part = data.subspan(i * chunk_, bytes);
    // Whole blocks from 4 KiB-aligned memory go O_DIRECT (slots are aligned);
    // a short last chunk of the device, or unaligned memory, through the cache.
    const bool aligned = part.size() % 4096 == 0 && reinterpret_cast<uintptr_t>(part.data()) % 4096 == 0;
    const int wfd = direct_fd_ >= 0 && aligned ? direct_fd_ : fd_;
    bool ok = true;
    uint64_t done = 0;
    while (done < part.size()) {
      int w = co_await q.ring().write(wfd, part.subspan(done), slot_offset(static_cast<uint32_t>(slot[i])) + done);
      if (w <= 0) {
        ok = false;
        break;
      }
      done += static_cast<uint64_t>(w);
    }
    MutexLock l(mu_);
    for (uint64_t k = i; k < j; ++k) {
      const auto s = static_cast<uint32_t>(slot[k]);
      SlotState& st = slots_[s];
      if (ok) {
        st.state = Slot::kValid;
        filled_.push_back(s);
        fills_.fetch_add(1, std::memory_order_relaxed);
        used_.fetch_add(1, std::memory_order_relaxed);
      } else {
        where_.erase(first_chunk + k);
        st = SlotState{};
        free_.push_back(s);
      }
    }
    i = j;
  }
}

void CacheTarget::flusher() {
  for (;;) {
    {
      // Locked by hand so the analysis sees mu_ held in the predicate.
      mu_.lock();
      cv_.wait_for(mu_, kFlushInterval, [&]() NO_THREAD_SAFETY_ANALYSIS { return stop_ || want_evict_; });
      bool stop = stop_;
      mu_.unlock();
      if (stop) return;
    }
    persist_round();
  }
}

void CacheTarget::persist_now() {
  persist_round();
  if (::fdatasync(fd_) != 0) LOG_WARN("cache {}: fdatasync: {}", log_escape(path_), std::strerror(errno));
}

// One round: choose victims if asked (CLOCK), clear their entries, make that
// and the data of the slots filled since the last round durable, then write
// those slots' entries and free the victims' slots.
void CacheTarget::persist_round() {
  static std::mutex round_mu;  // rounds of every cache run one at a time
  std::lock_guard<std::mutex> round(round_mu);
  std::vector<uint32_t> cleared;
  std::vector<std::pair<uint32_t, uint64_t>> written;
  {
    MutexLock l(mu_);
    if (want_evict_) {
      want_evict_ = false;
      const uint32_t want = std::max<uint32_t>(1, nslots_ / 32);
      uint32_t got = 0;
      for (uint64_t steps = 0; steps < 2 * uint64_t{nslots_} && got < want; ++steps) {
        SlotState& s = slots_[hand_];
        if (s.state == Slot::kValid && s.readers == 0) {
          if (s.referenced) {
            s.referenced = false;
          } else {
            where_.erase(s.chunk);
            s.state = Slot::kEvicting;
            evicting_.push_back(hand_);
            used_.fetch_sub(1, std::memory_order_relaxed);
            evictions_.fetch_add(1, std::memory_order_relaxed);
            ++got;
          }
        }
        hand_ = (hand_ + 1) % nslots_;
      }
    }
    cleared.swap(evicting_);
    for (uint32_t s : filled_)
      if (slots_[s].state == Slot::kValid) written.emplace_back(s, slots_[s].chunk);
    filled_.clear();
  }
  if (cleared.empty() && written.empty()) return;
  bool ok = true;
  std::byte e[8];
  for (uint32_t s : cleared) {
    put64(e, kFree);
    ok = ok && pwrite_all(fd_, e, 8, kHeaderSize + uint64_t{s} * 8, path_).has_value();
  }
  if (ok && ::fdatasync(fd_) != 0) ok = false;
  if (ok) {
    for (auto [s, chunk] : written) {
      put64(e, chunk + 1);
      if (!pwrite_all(fd_, e, 8, kHeaderSize + uint64_t{s} * 8, path_)) break;
    }
  } else {
    LOG_WARN("cache {}: writing the slot table failed: {}", log_escape(path_), std::strerror(errno));
  }
  MutexLock l(mu_);
  if (ok) {
    for (uint32_t s : cleared) {
      slots_[s] = SlotState{};
      free_.push_back(s);
    }
  } else {
    // Cleared in memory, not on disk: those slots stay out of use.
    for (uint32_t s : cleared) evicting_.push_back(s);
  }
}

Task<Result<>> CacheTarget::write(Queue&, std::span<const std::byte>, uint64_t, IoFlags) {
  co_return fail(EROFS, "a cache device is read-only");
}

Task<Result<>> CacheTarget::flush(Queue&) { co_return Result<>{}; }

}  // namespace strata
