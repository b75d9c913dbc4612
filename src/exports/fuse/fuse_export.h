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
// Transport: where the kernel offers FUSE over io_uring (Linux 6.14+, the fuse
// module's enable_uring parameter), requests arrive as completions of
// IORING_OP_URING_CMD entries registered on the queues' own rings, and each
// reply is committed by the SQE that also fetches the next request: no
// read(2)/writev(2) of /dev/fuse per request, the request's data lands in a
// per-entry 4096-aligned buffer that O_DIRECT targets use as is, and a READ's
// data is read straight into the buffer the kernel copies it from. /dev/fuse
// still carries INIT, FORGET and INTERRUPT, and every request until the
// kernel has an entry for every CPU.
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

#include "core/device_registry.h"
#include "core/queue.h"
#include "core/target.h"
#include "exports/export.h"

namespace strata::fuse {

// What a mount shows: the devices of the registry when it was mounted.
struct Device {
  std::string name;  // file name in the mount
  std::shared_ptr<Target> target;
  bool read_only = false;  // as configured, or the target cannot write
};
std::vector<Device> devices_of(const DeviceRegistry& registry);

struct Options {
  // Use FUSE over io_uring when the kernel has it (turning on the fuse
  // module's enable_uring parameter if it is off and we may write it).
  bool io_uring = true;
};

class FuseExport final : public Export {
 public:
  FuseExport(std::vector<Queue*> queues, std::vector<Device> devices, Options opts = {});
  ~FuseExport();
  FuseExport(const FuseExport&) = delete;
  FuseExport& operator=(const FuseExport&) = delete;

  // Mounts at `mountpoint` (replacing a stale mount left by a crashed
  // server) and starts serving.
  Result<> start(const std::string& mountpoint);
  // Unmounts, waits until no request is being served and ends the connection. false: the mount was busy (a loop device
  // holds a file), so it was detached and requests may still come: the export
  // must stay alive (and keeps /dev/fuse open) until the process exits.
  bool stop() override;
  const std::string& mountpoint() const { return mountpoint_; }
  // The names of the devices it shows.
  std::vector<std::string> shown() const;

  // strata::Export (a mount shows the devices of its mount time: the
  // device of a target it shows cannot go away until it is stopped).
  std::string_view kind() const override { return "fuse"; }
  std::vector<std::string> describe() const override { return {mountpoint_}; }
  Users users_of(const Target* t) const override;
  void end_users_of(const Target*) override {}
  // Requests served so far through ring entries and through /dev/fuse.
  uint64_t uring_requests() const { return uring_requests_.load(std::memory_order_relaxed); }
  uint64_t dev_requests() const { return dev_requests_.load(std::memory_order_relaxed); }
  // Whether INIT negotiated FUSE over io_uring.
  bool io_uring() const { return uring_; }

  struct Request;
  struct Reply;

 private:
  Task<void> slot(Queue& q);
  Task<void> uring_slot(Queue& q, uint16_t qid);
  void start_uring();
  Task<Reply> handle(Queue& q, const Request& req);
  void reply_dev(uint64_t unique, const Reply& r);
  const Device* device_of(uint64_t nodeid) const;
  void fill_attr(void* attr, uint64_t nodeid) const;

  std::vector<Queue*> queues_;
  std::vector<Device> devices_;
  std::string mountpoint_;
  int fd_ = -1;
  uint32_t max_write_ = 1 << 20;
  int64_t start_time_ = 0;
  Options opts_;
  std::atomic<bool> uring_{false};  // negotiated at INIT
  uint32_t nr_qids_ = 1;
  std::atomic<uint64_t> uring_requests_{0};
  std::atomic<uint64_t> dev_requests_{0};
  std::atomic<int> slots_{0};
  std::atomic<bool> stopping_{false};
};

}  // namespace strata::fuse
