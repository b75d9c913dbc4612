// FuseExport: every device as one regular file in a FUSE mount, so that
// `losetup` turns it into a kernel block device (/dev/loopN) on machines
// without nbd, ublk or device-mapper (nbdfuse's idea).
//
// It speaks the FUSE protocol itself (linux/fuse.h) instead of going through
// libfuse 3.14, for two reasons measured to matter: libfuse 3.14 cannot set
// FOPEN_PARALLEL_DIRECT_WRITES, without which the kernel serializes every
// direct write to the file (the loop device's writes would run one at a
// time); and its loop reads /dev/fuse with blocking threads, while here every
// queue keeps reads of /dev/fuse posted on its own io_uring and serves each
// request as a coroutine on that queue, like an NBD request: no thread
// hand-off on the data path. The protocol subset is small: one directory of
// fixed-size files.
//
// Files are opened FOPEN_DIRECT_IO (no page cache in FUSE; the loop device or
// the application above has its own). fsync and close (FLUSH) of a file are
// a FLUSH of the device; fallocate punch-hole / zero-range are TRIM and
// WRITE_ZEROES. Errors reach the kernel as the target's errno.
//
// Threads: start()/stop() on the control thread; requests on queue threads.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "core/queue.h"
#include "core/target.h"

namespace strata::fuse {

struct Device {
  std::string name;  // file name in the mount
  std::shared_ptr<Target> target;
  bool read_only = false;
};

class FuseExport {
 public:
  FuseExport(std::vector<Queue*> queues, std::vector<Device> devices);
  ~FuseExport();
  FuseExport(const FuseExport&) = delete;
  FuseExport& operator=(const FuseExport&) = delete;

  // Mounts at `mountpoint` (replacing a stale mount left by a crashed
  // server) and starts serving.
  Result<> start(const std::string& mountpoint);
  // Unmounts and waits until no request is being served.
  void stop();
  const std::string& mountpoint() const { return mountpoint_; }

 private:
  Task<void> slot(Queue& q);
  Task<void> handle(Queue& q, std::byte* req, std::size_t len);
  void reply(uint64_t unique, int error, const void* data = nullptr, std::size_t n = 0,
             const void* data2 = nullptr, std::size_t n2 = 0);
  const Device* device_of(uint64_t nodeid) const;
  void fill_attr(void* attr, uint64_t nodeid) const;

  std::vector<Queue*> queues_;
  std::vector<Device> devices_;
  std::string mountpoint_;
  int fd_ = -1;
  uint32_t max_write_ = 1 << 20;
  int64_t start_time_ = 0;
  std::atomic<int> slots_{0};
  std::atomic<bool> stopping_{false};
};

}  // namespace strata::fuse
