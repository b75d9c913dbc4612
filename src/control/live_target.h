// LiveTarget: the table of a device that can change while it is served
// (dmsetup's active and inactive tables). It sits between the device's
// DirtyTarget (dirty maps, which thus survive a reload) and its TableTarget,
// and adds the suspend gate:
//   suspend()  flushes the table while requests still flow (unless told not
//              to), then holds every new request and returns once those in
//              flight are done (and, if asked, flushes again while they are
//              held);
//   load()     builds nothing: it attaches an already validated table to the
//              queues and keeps it as the inactive table;
//   resume()   swaps in the inactive table, if one is loaded, and releases the
//              requests held, which then run on the new table.
// Requests wait; none fails.
//
// Flushes across a swap. A write acknowledged on the old table after the
// suspend's first flush may not be on stable storage yet when the new table
// takes over. It is not lost for the client: the retired table is flushed in
// the background at once, and a FLUSH on the new table flushes every retired
// table whose background flush has not yet succeeded, so a client's FLUSH
// still covers every write acknowledged before it (docs/control.md).
//
// Threads. Each queue reads only its own PerQueue (the table it uses, the
// gate, its count of requests in flight), changed by closures post()ed to that
// queue: the I/O path takes no lock. The control side (suspend, load, resume,
// reap, and the const queries) may run on any thread but the queues'; ctl_mu_
// serialises it.
//
// Views. A read_view() hands a connection bytes that live in the table's
// memory and stay in use until its reply is sent, after the request has left
// the gate. A replaced table is therefore kept (retired) until every NBD
// connection older than the swap has closed: reap() is given the id of the
// oldest connection still open.
#pragma once

#include <atomic>
#include <chrono>
#include <coroutine>
#include <functional>
#include <memory>
#include <vector>

#include "core/queue.h"
#include "core/target.h"
#include "core/thread_annotations.h"
#include "table/table.h"

namespace strata::control {

// What suspend() flushes (strata suspend's --noflush, default, --sync).
enum class SuspendFlush {
  kNone,   // nothing: hold and drain only
  kFirst,  // the table, while requests still flow; then hold and drain
  kHeld,   // kFirst, and again once drained: every acknowledged write is on
           // stable storage when suspend() returns (for a copy underneath)
};

class LiveTarget final : public Target {
 public:
  explicit LiveTarget(std::shared_ptr<TableTarget> table);
  ~LiveTarget() override;
  LiveTarget(const LiveTarget&) = delete;
  LiveTarget& operator=(const LiveTarget&) = delete;

  // ---- Target ----
  uint64_t size() const override { return size_.load(std::memory_order_acquire); }
  Caps caps() const override;
  BlockSizes block_sizes() const override;
  std::string table_line() const override;
  std::string identity() const override;
  void info(InfoSink& out) const override;
  Result<> attach_queue(Queue& q) override;
  Task<Result<>> read(Queue& q, std::span<std::byte> buf, uint64_t offset) override;
  std::optional<std::span<const std::byte>> read_view(Queue& q, uint64_t offset, uint64_t length) override;
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override;
  Task<Result<>> flush(Queue& q) override;
  Task<Result<>> trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<>> zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) override;
  Task<Result<Extents>> extents(Queue& q, uint64_t offset, uint64_t length) override;
  Task<Result<>> cache(Queue& q, uint64_t offset, uint64_t length) override;
  std::vector<std::string> contexts() const override;
  Task<Result<Extents>> context_extents(Queue& q, std::string_view context, uint64_t offset,
                                        uint64_t length) override;

  // ---- control (never on a queue thread) ----
  // The table requests go to (the active one).
  std::shared_ptr<TableTarget> active() const EXCLUDES(ctl_mu_);
  bool suspended() const EXCLUDES(ctl_mu_);
  bool has_inactive() const EXCLUDES(ctl_mu_);
  // Holds new requests; returns once none is in flight; flushes the active
  // table as `how` says. Suspending a suspended device does nothing.
  Result<> suspend(SuspendFlush how) EXCLUDES(ctl_mu_);
  // Attaches `t` to every queue this device is attached to and keeps it as
  // the inactive table (replacing one loaded before).
  Result<> load(std::shared_ptr<TableTarget> t) EXCLUDES(ctl_mu_);
  // Drops the inactive table.
  void clear_inactive() EXCLUDES(ctl_mu_);
  // Swaps in the inactive table (suspending first if needed) and releases
  // the requests held. `conn_mark`: the id the next NBD connection will get
  // (see Views). Returns whether a table was swapped in.
  bool resume(uint64_t conn_mark) EXCLUDES(ctl_mu_);
  // Frees retired tables no connection older than `oldest_conn` can still
  // read from.
  void reap(uint64_t oldest_conn) EXCLUDES(ctl_mu_);
  // A copy of the quiet active table (a flatten of a suspended device) keeps
  // the device suspended: pin_suspended() returns false if it is not
  // suspended; while pinned, resume() refuses (returns false, releases
  // nothing). Every successful pin is matched by one unpin().
  bool pin_suspended() EXCLUDES(ctl_mu_);
  void unpin() EXCLUDES(ctl_mu_);
  bool pinned() const EXCLUDES(ctl_mu_);
  // How long the gate was closed (requests held) in the last suspend that
  // was resumed: from the gate closing to every queue released.
  uint64_t last_hold_us() const { return last_hold_us_.load(std::memory_order_relaxed); }
  // The last suspend's flush before the gate closed, its drain (gate closed
  // to no request in flight) and its flush under the gate (kHeld only).
  uint64_t last_preflush_us() const { return last_preflush_us_.load(std::memory_order_relaxed); }
  uint64_t last_drain_us() const { return last_drain_us_.load(std::memory_order_relaxed); }
  uint64_t last_flush_us() const { return last_flush_us_.load(std::memory_order_relaxed); }
  // Retired tables whose writes are not yet known to be flushed (tests).
  size_t unflushed_retired() const EXCLUDES(ctl_mu_);
  // Requests held by the gate now.
  uint64_t held_requests() const { return held_.load(std::memory_order_relaxed); }

 private:
  // Retired tables that may hold acknowledged writes not yet flushed; `done`
  // once a flush of all of them succeeded (set from any queue).
  struct Unflushed {
    std::vector<std::shared_ptr<TableTarget>> tables;
    std::atomic<bool> done{false};
  };
  struct PerQueue {
    std::shared_ptr<TableTarget> table;
    std::shared_ptr<Unflushed> unflushed;
    bool suspended = false;
    uint64_t in_flight = 0;
    std::vector<std::coroutine_handle<>> parked;
    std::function<void()> on_drained;
  };
  struct Gate;  // awaiter: parks a request while its queue is suspended
  void leave(PerQueue& pq);
  void publish_shape(const TableTarget& t);

  std::atomic<uint64_t> size_{0};
  std::atomic<uint32_t> caps_bits_{0};
  std::atomic<uint32_t> bs_min_{1}, bs_pref_{4096}, bs_max_{0};
  std::atomic<uint64_t> held_{0};

  mutable Mutex ctl_mu_;
  std::shared_ptr<TableTarget> active_ GUARDED_BY(ctl_mu_);
  std::shared_ptr<TableTarget> inactive_ GUARDED_BY(ctl_mu_);
  bool suspended_ GUARDED_BY(ctl_mu_) = false;
  std::chrono::steady_clock::time_point closed_at_ GUARDED_BY(ctl_mu_);
  // Whether the active table was flushed with every request held (kHeld):
  // nothing acknowledged on it can then be unflushed at a swap.
  bool clean_at_gate_ GUARDED_BY(ctl_mu_) = false;
  std::shared_ptr<Unflushed> unflushed_ GUARDED_BY(ctl_mu_);
  std::atomic<uint64_t> last_hold_us_{0}, last_preflush_us_{0}, last_drain_us_{0}, last_flush_us_{0};
  int pins_ GUARDED_BY(ctl_mu_) = 0;
  std::vector<Queue*> queues_ GUARDED_BY(ctl_mu_);
  struct Retired {
    std::shared_ptr<TableTarget> table;
    uint64_t mark;  // connections with an id below it may hold views
  };
  std::vector<Retired> retired_ GUARDED_BY(ctl_mu_);
  std::unique_ptr<PerQueue[]> per_queue_{new PerQueue[kMaxQueues]};
};

}  // namespace strata::control
