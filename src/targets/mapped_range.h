// MappedRange: a read-only shared mapping of a file range, from which reads
// may be answered without a copy (Target::read_view): the mapping is the
// page cache itself. view() offers a range only when every page of it is
// cached (cachestat), so a queue thread that sends from it never waits on
// the disk. Whether a file may be mapped at all is decided once, at map():
//  - local filesystems only (NFS, CIFS, FUSE... revalidate cached pages on
//    read(), a fault does not);
//  - if strata may punch holes in it or zero it, only on ext4 and tmpfs,
//    which clear cached pages over exactly the bytes asked for (XFS may drop
//    and zero cached pages over a range rounded out past a TRIM, and a reply
//    sent by reference still holds such a page);
//  - cachestat must work (Linux 6.5; no cheap residency check otherwise).
// Thread-safe after map(); the memory stays valid until destruction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace strata {

class MappedRange {
 public:
  MappedRange() = default;
  ~MappedRange();
  MappedRange(const MappedRange&) = delete;
  MappedRange& operator=(const MappedRange&) = delete;

  // Maps [offset, offset + length) of fd; `punched`: strata may punch holes
  // in or zero ranges of this file. Returns false (and leaves it unmapped,
  // with the reason logged at debug level under `name`) when views are not
  // safe or not possible.
  bool map(int fd, uint64_t offset, uint64_t length, bool punched, const std::string& name);
  bool mapped() const { return base_ != nullptr; }

  // Bytes [pos, pos + length) of the range, when all of them are cached.
  std::optional<std::span<const std::byte>> view(uint64_t pos, uint64_t length) const;

 private:
  int fd_ = -1;
  uint64_t offset_ = 0, length_ = 0;
  uint64_t page_ = 4096;
  std::byte* base_ = nullptr;  // the mapping, from the page holding offset_
  std::size_t skew_ = 0;       // offset_ - the mapping's file offset
  std::size_t len_ = 0;        // of the mapping
};

}  // namespace strata
