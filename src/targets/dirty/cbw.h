// CopyBeforeWrite: a point-in-time copy of a live device into a file (qemu's
// backup job with its copy-before-write filter). The copy holds the device as
// it was at one moment: when the job was installed with no write in flight
// (DirtyTarget::start_copy). From then on a copier walks the device block by
// block, and a write, TRIM or WRITE_ZEROES that reaches a block the copy has
// not taken yet first copies that block's old contents. Either way a block is
// copied once, under its block lock, before anything changes it.
//
// Invariants (each block):
// - done[b] goes from false to true once, under mu_, after the block's old
//   data is in the file.
// - Nothing writes a block of the source while it is not done, except with
//   its lock held by the one who copies it first (before_write holds the lock
//   through its copy; the write itself runs once done[b] is set).
// So when every block is done, the file is the device at the moment of the
// install, whatever the writes did meanwhile.
//
// A copy that fails (the file's disk full, a read error) fails the job, not
// the client's write: the write goes on, and the job reports the error.
#pragma once

#include <coroutine>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "core/queue.h"
#include "core/result.h"
#include "core/target.h"
#include "core/thread_annotations.h"

namespace strata {

class CopyBeforeWrite {
 public:
  // Copies `source` (size() bytes) into `fd` (owned; closed by the
  // destructor), which reads as zeros where nothing is written: blocks that
  // read as zeros are skipped.
  CopyBeforeWrite(Target& source, int fd, std::string path, uint64_t block = 64 << 10);
  // The copier's own writes (copy()) go through this second descriptor of
  // the same file, opened O_DIRECT (owned): they reach the disk as they are
  // made instead of piling up in the page cache for the final fdatasync.
  // Writes that are not 4 KiB-aligned, and those of before_write (a client's
  // write waits for them), keep the buffered one.
  void set_direct_fd(int fd) { direct_fd_ = fd; }
  ~CopyBeforeWrite();
  CopyBeforeWrite(const CopyBeforeWrite&) = delete;
  CopyBeforeWrite& operator=(const CopyBeforeWrite&) = delete;

  uint64_t size() const { return size_; }
  uint64_t block() const { return block_; }
  uint64_t blocks() const { return nblocks_; }
  int fd() const { return fd_; }

  // On a queue, before a write/trim/zero of [offset, offset+length) reaches
  // the source: copies the blocks of that range the copy lacks.
  Task<void> before_write(Queue& q, uint64_t offset, uint64_t length);
  // The copier, on a queue: copies the blocks of [b0, b1) the copy lacks,
  // waiting for a block a writer is copying.
  Task<Result<>> copy(Queue& q, uint64_t b0, uint64_t b1);
  // The first error of any copy (before_write's included).
  Result<> status() const;
  // Blocks copied because a write was about to change them.
  uint64_t copied_by_writes() const;

 private:
  Task<void> lock(Queue& q, uint64_t b0, uint64_t b1);
  void unlock(uint64_t b0, uint64_t b1);
  // With [b0, b1) locked: reads and stores the blocks not done yet.
  Task<Result<>> copy_locked(Queue& q, uint64_t b0, uint64_t b1, bool direct = false);
  void fail_job(const Error& e);

  Target& source_;
  int fd_;
  int direct_fd_ = -1;
  std::string path_;
  const uint64_t block_, size_, nblocks_;
  mutable Mutex mu_;
  std::vector<bool> done_ GUARDED_BY(mu_);
  std::map<uint64_t, std::vector<std::pair<Queue*, std::coroutine_handle<>>>> busy_ GUARDED_BY(mu_);
  Result<> status_ GUARDED_BY(mu_);
  uint64_t by_writes_ GUARDED_BY(mu_) = 0;
};

}  // namespace strata
