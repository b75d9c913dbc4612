#include "targets/mapped_range.h"

#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/log.h"

namespace strata {

namespace {
// cachestat(2), Linux 6.5 (glibc 2.36 has no wrapper): page-cache counts of
// a file range, looked up in the page cache itself. (mincore would cost
// twice as much, walking our page tables under the mmap lock, and reports
// every page resident for a file the caller could not write.)
struct CachestatRange {
  uint64_t off, len;
};
struct Cachestat {
  uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};
constexpr long kSysCachestat = 451;

int cachestat(int fd, uint64_t off, uint64_t len, Cachestat& cs) {
  CachestatRange r{off, len};
  return static_cast<int>(::syscall(kSysCachestat, fd, &r, &cs, 0));
}

bool local_filesystem(unsigned long type) {
  switch (type) {
    case 0x6969:      // NFS
    case 0xFF534D42:  // CIFS
    case 0xFE534D42:  // SMB2
    case 0x517B:      // SMB
    case 0x65735546:  // FUSE
    case 0x00C36400:  // Ceph
    case 0x01021997:  // 9p
    case 0x73757245:  // Coda
    case 0x564C:      // NCP
    case 0x6B414653:  // AFS
    case 0x5346414F:  // OpenAFS
    case 0x47504653:  // GPFS
    case 0x0BD00BD0:  // Lustre
      return false;
    default:
      return true;
  }
}

bool exact_punch(unsigned long type) { return type == 0xEF53 /* ext2/3/4 */ || type == 0x01021994 /* tmpfs */; }
}  // namespace

MappedRange::~MappedRange() {
  if (base_) ::munmap(base_, len_);
}

bool MappedRange::map(int fd, uint64_t offset, uint64_t length, bool punched, const std::string& name) {
  if (length == 0) return false;
  struct statfs fs;
  if (::fstatfs(fd, &fs) < 0) return false;
  const auto type = static_cast<unsigned long>(fs.f_type);
  if (!local_filesystem(type)) {
    LOG_DEBUG("{}: on a network or FUSE filesystem; reads copy through a buffer", name);
    return false;
  }
  if (punched && !exact_punch(type)) {
    LOG_DEBUG("{}: writable on a filesystem that may clear more than a TRIM asks; reads copy through a buffer", name);
    return false;
  }
  Cachestat cs{};
  if (cachestat(fd, offset, 1, cs) < 0) {
    LOG_DEBUG("{}: cachestat: {}; reads copy through a buffer", name, std::strerror(errno));
    return false;
  }
  page_ = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t start = offset / page_ * page_;
  skew_ = offset - start;
  len_ = skew_ + length;
  void* m = ::mmap(nullptr, len_, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(start));
  if (m == MAP_FAILED) {
    LOG_DEBUG("{}: mmap: {}; reads copy through a buffer", name, std::strerror(errno));
    len_ = 0;
    return false;
  }
  fd_ = fd;
  offset_ = offset;
  length_ = length;
  base_ = static_cast<std::byte*>(m);
  return true;
}

std::optional<std::span<const std::byte>> MappedRange::view(uint64_t pos, uint64_t length) const {
  if (!base_ || length == 0 || pos > length_ || length > length_ - pos) return std::nullopt;
  // Sending from a page that is not in memory would read it from disk on
  // the queue thread (a page fault in the middle of the send); only a range
  // that is all in the page cache is offered. A page evicted between this
  // check and the send is read in then: rare, and correct, only slower.
  const uint64_t at = offset_ + pos;
  const uint64_t pages = (at + length + page_ - 1) / page_ - at / page_;
  Cachestat cs{};
  if (cachestat(fd_, at, length, cs) < 0 || cs.nr_cache < pages) return std::nullopt;
  return std::span<const std::byte>(base_ + skew_ + pos, length);
}

}  // namespace strata
