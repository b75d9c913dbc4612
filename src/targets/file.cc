// Design notes
//
// The file target maps [0, length) of the device to [offset, offset + length)
// of a file. What the table gives is checked once, at load, each
// failure with its own message: the path exists and is a regular file or block
// device; the offset is a number within the file; the file holds the whole
// segment from the offset; it opens for writing unless `ro` or the export is
// read-only. After that the data path trusts the range (the table and NBD
// layers bounds-check every request).
//
// Data path: io_uring read/write at offset + position, resubmitting short
// transfers and retrying EINTR/EAGAIN. FUA is RWF_DSYNC on the write itself,
// which costs one io_uring op instead of a write plus an fdatasync. FLUSH is
// fdatasync. TRIM punches a hole. WRITE_ZEROES punches a hole when the client
// allows holes, else uses FALLOC_FL_ZERO_RANGE, else (no fallocate support)
// writes zeros - unless the client asked for a fast zero, which then fails
// with ENOTSUP as NBD requires. Block status comes from SEEK_DATA/SEEK_HOLE,
// run on the blocking pool because lseek is not an io_uring operation and can
// read extent metadata from disk.
#include "targets/file.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <fmt/core.h>

#include "core/queue.h"

namespace strata {

constexpr uint32_t kDirectAlign = 4096;
constexpr std::size_t kAsyncReadBytes = 256 * 1024;

Result<std::shared_ptr<Target>> FileTarget::create(Params& p, Resolver& r) {
  (void)r;
  std::shared_ptr<FileTarget> t(new FileTarget());
  t->path_ = TRY(p.arg(0, "path"));
  t->offset_ = TRY(p.arg_u64(1, "offset"));
  t->direct_ = TRY(p.option_bool("direct", false));
  t->read_only_ = p.flag("ro") || p.read_only;
  const bool lock = TRY(p.option_bool("lock", true));
  TRY(p.finish(2));
  t->length_ = p.length;

  struct stat st;
  if (::stat(t->path_.c_str(), &st) < 0) return posix_error(fmt::format("file {}", t->path_), errno);
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    return fail(EINVAL, fmt::format("file {}: not a regular file or block device", t->path_));
  t->regular_ = S_ISREG(st.st_mode);

  if (t->direct_ && (t->offset_ % kDirectAlign || t->length_ % kDirectAlign))
    return fail(EINVAL, fmt::format("file {}: direct=on needs the offset ({}) and the segment length ({}) "
                                    "to be multiples of {}",
                                    t->path_, t->offset_, t->length_, kDirectAlign));

  int flags = O_CLOEXEC | (t->read_only_ ? O_RDONLY : O_RDWR) | (t->direct_ ? O_DIRECT : 0);
  t->fd_ = ::open(t->path_.c_str(), flags);
  if (t->fd_ < 0) {
    int e = errno;
    if (!t->read_only_ && (e == EACCES || e == EROFS || e == EPERM))
      return posix_error(fmt::format("file {}: cannot open for writing (add `ro` or serve --read-only)", t->path_), e);
    if (t->direct_ && e == EINVAL)
      return fail(EINVAL, fmt::format("file {}: the filesystem does not support direct=on (O_DIRECT)", t->path_));
    return posix_error(fmt::format("file {}: open", t->path_), e);
  }

  // Before anything else touches the file: another server may be serving it.
  if (lock) t->lock_ = TRY(FileLock::acquire(t->fd_, t->path_, !t->read_only_));

  uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (!t->regular_) {
    if (::ioctl(t->fd_, BLKGETSIZE64, &file_size) < 0)
      return posix_error(fmt::format("file {}: BLKGETSIZE64", t->path_), errno);
  }
  if (!t->direct_ && t->regular_ && !t->read_only_) {
    // Can this filesystem write to the page cache without blocking?
    t->async_writes_ = Ring::buffered_writes_block(t->fd_, t->offset_);
  }
  if (t->offset_ > file_size)
    return fail(EINVAL, fmt::format("file {}: offset {} is beyond the end of the file ({} bytes)", t->path_,
                                    t->offset_, file_size));
  if (t->length_ > file_size - t->offset_)
    return fail(EINVAL, fmt::format("file {}: file too small: need {} bytes from offset {}, file has {}", t->path_,
                                    t->length_, t->offset_, file_size));
  // TRIM and WRITE_ZEROES punch holes unless the file is read-only.
  if (!t->direct_ && t->regular_)
    t->map_.map(t->fd_, t->offset_, t->length_, !t->read_only_, fmt::format("file {}", t->path_));
  return std::shared_ptr<Target>(std::move(t));
}

FileTarget::~FileTarget() {
  if (fd_ >= 0) ::close(fd_);
}

Caps FileTarget::caps() const {
  Caps c;
  c.can_write = !read_only_;
  c.can_flush = true;
  c.can_fua = true;
  c.can_trim = !read_only_;
  c.can_zero = !read_only_;
  c.can_fast_zero = !read_only_;
  c.can_extents = regular_;
  c.can_cache = true;
  c.can_multi_conn = true;
  return c;
}

BlockSizes FileTarget::block_sizes() const {
  BlockSizes b;
  if (direct_) b.minimum = kDirectAlign;
  return b;
}

// The file as fstat() sees it now: device, inode, size, mtime and ctime
// (every write through any fd moves them), and the range served.
std::string FileTarget::identity() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) return {};
  return fmt::format("file:{}:{}:{}:{}.{}:{}.{}@{}+{}", st.st_dev, st.st_ino, st.st_size, st.st_mtim.tv_sec,
                     st.st_mtim.tv_nsec, st.st_ctim.tv_sec, st.st_ctim.tv_nsec, offset_, length_);
}

std::string FileTarget::table_line() const {
  std::string s = fmt::format("file {} {}", path_, offset_);
  if (direct_) s += " direct=on";
  if (read_only_) s += " ro";
  if (!lock_) s += " lock=off";
  return s;
}

void FileTarget::info(InfoSink& out) const {
  out.add("path", path_);
  out.add("locked", lock_ ? (read_only_ ? "shared" : "exclusive") : "no");
  stats_.report(out);
  out.add("mapped_reads", mapped_reads_.load(std::memory_order_relaxed));
}

Task<Result<>> FileTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.reads);
  IoStats::bump(stats_.read_bytes, buf.size());
  // A large read from the page cache is a long memcpy: run it on an io-wq
  // worker so the queue thread keeps serving (and another core copies).
  const unsigned sqe_flags = buf.size() >= kAsyncReadBytes ? IOSQE_ASYNC : 0;
  while (!buf.empty()) {
    int n = co_await q.ring().read(fd_, buf, offset_ + offset, sqe_flags);
    if (n == -EINTR || n == -EAGAIN) continue;
    if (n < 0) {
      IoStats::bump(stats_.errors);
      co_return posix_error(fmt::format("read {}@{}", path_, offset_ + offset), -n);
    }
    if (n == 0) {
      IoStats::bump(stats_.errors);
      co_return fail(EIO, fmt::format("read {}@{}: unexpected end of file", path_, offset_ + offset));
    }
    buf = buf.subspan(n);
    offset += n;
  }
  co_return Result<>{};
}

std::optional<std::span<const std::byte>> FileTarget::read_view(Queue& q, uint64_t offset, uint64_t length) {
  (void)q;
  auto v = map_.view(offset, length);
  if (!v) return std::nullopt;
  IoStats::bump(stats_.reads);
  IoStats::bump(stats_.read_bytes, length);
  IoStats::bump(mapped_reads_);
  return v;
}

Task<Result<>> FileTarget::write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.writes);
  IoStats::bump(stats_.write_bytes, buf.size());
  int rw_flags = f.fua ? RWF_DSYNC : 0;
  // Where the filesystem cannot do non-blocking buffered writes (ext4:
  // RWF_NOWAIT is EOPNOTSUPP), io_uring's inline attempt always fails and the
  // write is punted anyway: punt it at once.
  const unsigned sqe_flags = async_writes_ ? IOSQE_ASYNC : 0;
  while (!buf.empty()) {
    int n = co_await q.ring().write(fd_, buf, offset_ + offset, rw_flags, sqe_flags);
    if (n == -EINTR || n == -EAGAIN) continue;
    if (n < 0) {
      IoStats::bump(stats_.errors);
      co_return posix_error(fmt::format("write {}@{}", path_, offset_ + offset), -n);
    }
    if (n == 0) {
      IoStats::bump(stats_.errors);
      co_return fail(EIO, fmt::format("write {}@{}: wrote nothing", path_, offset_ + offset));
    }
    buf = buf.subspan(n);
    offset += n;
  }
  co_return Result<>{};
}

Task<Result<>> FileTarget::fdatasync(Queue& q) {
  int r;
  do {
    r = co_await q.ring().fdatasync(fd_);
  } while (r == -EINTR || r == -EAGAIN);
  if (r < 0) co_return posix_error(fmt::format("fdatasync {}", path_), -r);
  co_return Result<>{};
}

namespace {
struct WaitFlush {
  std::vector<std::coroutine_handle<>>& waiters;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) { waiters.push_back(h); }
  void await_resume() const noexcept {}
};
}  // namespace

Task<Result<>> FileTarget::flush(Queue& q) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.flushes);
  FlushState& st = flush_state_[q.id()];
  const uint64_t ticket = ++st.requested;
  while (st.completed < ticket) {
    if (st.running) {
      co_await WaitFlush{st.waiters};
      continue;
    }
    st.running = true;
    const uint64_t covers = st.requested;  // every ticket so far predates this fdatasync
    const uint64_t from = st.completed + 1;
    auto r = co_await fdatasync(q);
    if (!r) {
      IoStats::bump(stats_.errors);
      st.failed_from = from;
      st.failed_to = covers;
      st.error = r.error();
    }
    st.completed = covers;
    st.running = false;
    auto waiters = std::move(st.waiters);
    st.waiters.clear();
    for (auto h : waiters) h.resume();
  }
  if (ticket >= st.failed_from && ticket <= st.failed_to) co_return fail(st.error);
  co_return Result<>{};
}

Task<Result<>> FileTarget::sync_if(Queue& q, bool fua) {
  if (!fua) co_return Result<>{};
  co_return co_await flush(q);
}

Task<Result<>> FileTarget::trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.trims);
  IoStats::bump(stats_.trim_bytes, length);
  if (length == 0) co_return co_await sync_if(q, f.fua);  // fallocate refuses length 0
  int r = co_await q.ring().fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset_ + offset, length);
  // TRIM is advisory: a filesystem that cannot punch holes just keeps the data.
  if (r < 0 && r != -EOPNOTSUPP) {
    IoStats::bump(stats_.errors);
    co_return posix_error(fmt::format("punch hole {}@{}+{}", path_, offset_ + offset, length), -r);
  }
  co_return co_await sync_if(q, f.fua);
}

Task<Result<>> FileTarget::zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.zeros);
  IoStats::bump(stats_.zero_bytes, length);
  if (length == 0) co_return co_await sync_if(q, f.fua);  // fallocate refuses length 0
  uint64_t off = offset_ + offset;
  if (f.may_trim && regular_) {
    int r = co_await q.ring().fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, length);
    if (r == 0) co_return co_await sync_if(q, f.fua);
    if (r != -EOPNOTSUPP) co_return posix_error(fmt::format("punch hole {}@{}+{}", path_, off, length), -r);
  }
  int r = co_await q.ring().fallocate(fd_, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off, length);
  if (r == 0) co_return co_await sync_if(q, f.fua);
  if (r != -EOPNOTSUPP && r != -EINVAL && r != -ENODEV)
    co_return posix_error(fmt::format("zero range {}@{}+{}", path_, off, length), -r);
  if (f.fast_zero) co_return fail(ENOTSUP, fmt::format("{}: no fast zeroing on this file", path_));
  co_return co_await Target::zero(q, offset, length, f);
}

Result<Extents> FileTarget::seek_extents(uint64_t offset, uint64_t length) const {
  Extents e;
  int64_t pos = static_cast<int64_t>(offset_ + offset);
  const int64_t end = pos + static_cast<int64_t>(length);
  while (pos < end) {
    off_t data = ::lseek(fd_, pos, SEEK_DATA);
    if (data < 0 && errno == ENXIO) data = end;  // only a hole up to EOF
    if (data < 0) return posix_error(fmt::format("lseek(SEEK_DATA) {}@{}", path_, pos), errno);
    if (data > pos) {
      int64_t hole_end = std::min<int64_t>(data, end);
      append_extent(e, hole_end - pos, Extent::kHole | Extent::kZero);
      pos = hole_end;
      if (pos >= end) break;
    }
    off_t hole = ::lseek(fd_, pos, SEEK_HOLE);
    if (hole < 0) return posix_error(fmt::format("lseek(SEEK_HOLE) {}@{}", path_, pos), errno);
    int64_t data_end = std::min<int64_t>(std::max<int64_t>(hole, pos + 1), end);
    append_extent(e, data_end - pos, 0);
    pos = data_end;
  }
  return e;
}

Task<Result<Extents>> FileTarget::extents(Queue& q, uint64_t offset, uint64_t length) {
  if (!regular_) co_return co_await Target::extents(q, offset, length);
  co_return co_await q.blocking([this, offset, length] { return seek_extents(offset, length); });
}

Task<Result<>> FileTarget::cache(Queue& q, uint64_t offset, uint64_t length) {
  // The hint is best effort: an error is not the client's problem.
  while (length > 0) {
    uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(length, 1u << 30));
    co_await q.ring().fadvise(fd_, offset_ + offset, n, POSIX_FADV_WILLNEED);
    offset += n;
    length -= n;
  }
  co_return Result<>{};
}

}  // namespace strata
