// Dirty maps in memory (DirtyMap: the bits, marking, ranges) and on disk
// (MapFile: the mapped file of one map, its header, open and create). The file
// format is documented in docs/dirty-maps.md; this is its only reader and
// writer. The target that keeps them (DirtyTarget) is dirty.cc.
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

}  // namespace strata
