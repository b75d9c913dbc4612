// RbdTarget: the first bytes of a Ceph RBD image (or of one of its
// snapshots, read-only), through librbd's asynchronous API.
//
// One librbd image handle serves every queue (librbd is thread-safe for aio,
// and one handle is one exclusive-lock owner). Each queue has its own
// completion mailbox (RbdQueue): an eventfd the queue's io_uring reads and a
// lock-free list that librbd's completion callback pushes onto, so a request
// is submitted and resumed on its own queue thread, with no lock and no hop
// through another thread. Setup (connect, open, lock) blocks and runs when
// the table loads; block status runs on the blocking pool.
//
// A flush through the one handle covers writes completed on every queue, so
// the export may advertise multi-conn.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "core/queue.h"
#include "core/target.h"
#include "targets/rbd/rbd_session.h"
#include "targets/resolver.h"

namespace strata {

struct RbdQueue;

class RbdTarget final : public Target {
 public:
  static constexpr std::string_view kHelp =
      "rbd <pool>/<image>[@<snap>] [id=NAME] [conf=PATH] [keyring=PATH] [namespace=NS]\n"
      "    [exclusive=on|off] [timeout=S] [ro]\n"
      "  The first bytes of a Ceph RBD image through librbd (a snapshot: read-only,\n"
      "  needs ro). id: the cephx client name (default admin); conf: ceph.conf\n"
      "  (default CEPH_CONF or /etc/ceph/ceph.conf); namespace: a RADOS namespace.\n"
      "  exclusive=on (default when writable): hold the image's exclusive lock, so\n"
      "  no other client writes it; a dead holder's lock is broken. timeout:\n"
      "  seconds for the cluster to answer, at load and per request (default 30).";
  static Result<std::shared_ptr<Target>> create(Params& p, Resolver& r);

  RbdTarget(const RbdTarget&) = delete;
  RbdTarget& operator=(const RbdTarget&) = delete;
  ~RbdTarget() override;

  uint64_t size() const override { return length_; }
  Caps caps() const override;
  BlockSizes block_sizes() const override;
  std::string table_line() const override;
  std::string identity() const override;
  void info(InfoSink& out) const override;
  Result<> attach_queue(Queue& q) override;

  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override;
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override;
  Task<Result<>> flush(Queue& q) override;
  Task<Result<>> trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<>> zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<Extents>> extents(Queue& q, uint64_t offset, uint64_t length) override;

 private:
  RbdTarget() = default;
  RbdQueue& queue_state(Queue& q);
  Error io_error(std::string_view op, uint64_t offset, uint64_t length, ssize_t r) const;
  // Asks librbd (may wait: blocking pool or load only).
  bool query_fast_diff() const;
  Result<Extents> diff_extents(uint64_t offset, uint64_t length) const;

  RbdSpec spec_;
  std::unique_ptr<RbdSession> session_;
  rbd_image_t image_ = nullptr;
  uint64_t length_ = 0;
  bool read_only_ = false;
  bool locked_ = false;  // we took the exclusive lock at load
  // Kept here because info() and caps() must not wait: librbd's own queries
  // take image locks that its refresh may hold across cluster round trips.
  mutable std::atomic<bool> lock_lost_{false};       // a request failed for want of the lock
  mutable std::atomic<bool> fast_diff_{false};  // refreshed by extents(), on the blocking pool
  std::unique_ptr<std::atomic<RbdQueue*>[]> queues_{new std::atomic<RbdQueue*>[kMaxQueues]{}};

  mutable IoStats stats_;
  // Latency sums (ns) of completed requests, for the mean in info().
  std::atomic<uint64_t> read_ns_{0}, write_ns_{0}, flush_ns_{0};
  std::atomic<uint64_t> fua_flushes_{0};
};

}  // namespace strata
