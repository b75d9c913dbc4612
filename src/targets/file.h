// FileTarget: a linear range of a regular file or block device (as
// dm-file): device byte p is file byte offset + p. All I/O goes through the
// queue's io_uring; the fd is shared by every queue, so a flush on one queue
// covers writes completed on all of them (multi-conn is safe).
#pragma once

#include <coroutine>
#include <memory>
#include <string>
#include <vector>

#include "core/queue.h"
#include "core/target.h"
#include "targets/file_lock.h"
#include "targets/mapped_range.h"
#include "targets/resolver.h"

namespace strata {

class FileTarget final : public Target {
 public:
  static constexpr std::string_view kHelp =
      "file <path> <offset> [direct=on|off] [ro] [lock=on|off]\n"
      "  A range of a regular file or block device starting at byte <offset>.\n"
      "  direct=on opens it O_DIRECT (no page cache; offset and segment must be\n"
      "  multiples of 4096). ro opens it read-only. The file is locked (an OFD\n"
      "  lock: exclusive when writable, shared when ro) unless lock=off.";
  static Result<std::shared_ptr<Target>> create(Params& p, Resolver& r);

  FileTarget(const FileTarget&) = delete;
  FileTarget& operator=(const FileTarget&) = delete;
  ~FileTarget() override;

  uint64_t size() const override { return length_; }
  Caps caps() const override;
  BlockSizes block_sizes() const override;
  std::string table_line() const override;
  std::string identity() const override;
  void info(InfoSink& out) const override;

  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override;
  // From a shared read-only mapping of the segment (MappedRange), when every
  // page of the range is in the page cache: the NBD export then sends the
  // pages by reference. Not with direct=on.
  std::optional<std::span<const std::byte>> read_view(Queue& q, uint64_t offset, uint64_t length) override;
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override;
  Task<Result<>> flush(Queue& q) override;
  Task<Result<>> trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<>> zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<Extents>> extents(Queue& q, uint64_t offset, uint64_t length) override;
  Task<Result<>> cache(Queue& q, uint64_t offset, uint64_t length) override;

 private:
  FileTarget() = default;
  Task<Result<>> sync_if(Queue& q, bool fua);
  Task<Result<>> fdatasync(Queue& q);

  // Flush combining, per queue (no locks): a FLUSH needs an fdatasync that
  // starts after the FLUSH arrived; FLUSHes that arrive while one runs share
  // the next one instead of each starting their own.
  struct FlushState {
    uint64_t requested = 0;  // tickets handed out
    uint64_t completed = 0;  // tickets covered by a finished fdatasync
    bool running = false;
    uint64_t failed_from = 0, failed_to = 0;  // tickets whose fdatasync failed
    Error error;
    std::vector<std::coroutine_handle<>> waiters;
  };
  std::unique_ptr<FlushState[]> flush_state_{new FlushState[kMaxQueues]};
  Result<Extents> seek_extents(uint64_t offset, uint64_t length) const;

  std::string path_;
  int fd_ = -1;
  std::shared_ptr<FileLock> lock_;  // null with lock=off
  MappedRange map_;  // the segment, for read_view
  uint64_t offset_ = 0;
  uint64_t length_ = 0;
  bool direct_ = false;
  bool read_only_ = false;
  bool regular_ = true;
  bool async_writes_ = false;  // buffered writes cannot be non-blocking here
  mutable IoStats stats_;
  std::atomic<uint64_t> mapped_reads_{0};  // reads answered by read_view
};

}  // namespace strata
