#include "control/live_target.h"

#include <future>

#include <fmt/core.h>

#include "core/log.h"

namespace strata::control {
namespace {

uint32_t pack(const Caps& c) {
  return c.can_write | c.can_flush << 1 | c.can_fua << 2 | c.can_trim << 3 | c.can_zero << 4 |
         c.can_fast_zero << 5 | c.can_extents << 6 | c.can_cache << 7 | c.can_multi_conn << 8;
}

Caps unpack(uint32_t b) {
  Caps c;
  c.can_write = b & 1;
  c.can_flush = b & 2;
  c.can_fua = b & 4;
  c.can_trim = b & 8;
  c.can_zero = b & 16;
  c.can_fast_zero = b & 32;
  c.can_extents = b & 64;
  c.can_cache = b & 128;
  c.can_multi_conn = b & 256;
  return c;
}

// A request held across a reload that shrank the device (FUSE, or NBD with
// --force) may lie past the new end.
Failure past_end(uint64_t offset, uint64_t length, uint64_t size) {
  return fail(ENOSPC, fmt::format("request [{}, +{}) lies past the end of the reloaded device ({} bytes)", offset,
                                  length, size));
}

}  // namespace

struct LiveTarget::Gate {
  PerQueue& pq;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) { pq.parked.push_back(h); }
  void await_resume() const noexcept {}
};

LiveTarget::LiveTarget(std::shared_ptr<TableTarget> table) {
  publish_shape(*table);
  MutexLock l(ctl_mu_);
  active_ = std::move(table);
}

LiveTarget::~LiveTarget() = default;

void LiveTarget::publish_shape(const TableTarget& t) {
  caps_bits_.store(pack(t.caps()), std::memory_order_release);
  BlockSizes b = t.block_sizes();
  bs_min_.store(b.minimum);
  bs_pref_.store(b.preferred);
  bs_max_.store(b.maximum);
  size_.store(t.size(), std::memory_order_release);
}

Caps LiveTarget::caps() const { return unpack(caps_bits_.load(std::memory_order_acquire)); }

BlockSizes LiveTarget::block_sizes() const { return {bs_min_.load(), bs_pref_.load(), bs_max_.load()}; }

std::string LiveTarget::table_line() const { return active()->table_line(); }

std::string LiveTarget::identity() const { return active()->identity(); }

void LiveTarget::info(InfoSink& out) const { active()->info(out); }

std::vector<std::string> LiveTarget::contexts() const { return active()->contexts(); }

std::shared_ptr<TableTarget> LiveTarget::active() const {
  MutexLock l(ctl_mu_);
  return active_;
}

bool LiveTarget::suspended() const {
  MutexLock l(ctl_mu_);
  return suspended_;
}

bool LiveTarget::pin_suspended() {
  MutexLock l(ctl_mu_);
  if (!suspended_) return false;
  ++pins_;
  return true;
}

void LiveTarget::unpin() {
  MutexLock l(ctl_mu_);
  --pins_;
}

bool LiveTarget::pinned() const {
  MutexLock l(ctl_mu_);
  return pins_ > 0;
}

bool LiveTarget::has_inactive() const {
  MutexLock l(ctl_mu_);
  return inactive_ != nullptr;
}

Result<> LiveTarget::attach_queue(Queue& q) {
  std::shared_ptr<TableTarget> t = active();
  TRY(t->attach_queue(q));
  per_queue_[q.id()].table = t;
  MutexLock l(ctl_mu_);
  queues_.push_back(&q);
  return {};
}

void LiveTarget::leave(PerQueue& pq) {
  if (--pq.in_flight == 0 && pq.on_drained) {
    auto fn = std::move(pq.on_drained);
    pq.on_drained = nullptr;
    fn();
  }
}

// Every I/O method: wait at the gate, count the request, run it on the
// queue's table (held for the request's life), uncount it.
#define LIVE_ENTER(q)                            \
  PerQueue& pq = per_queue_[(q).id()];           \
  if (pq.suspended) {                            \
    held_.fetch_add(1, std::memory_order_relaxed); \
    while (pq.suspended) co_await Gate{pq};      \
    held_.fetch_sub(1, std::memory_order_relaxed); \
  }                                              \
  ++pq.in_flight;                                \
  std::shared_ptr<TableTarget> t = pq.table

Task<Result<>> LiveTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  LIVE_ENTER(q);
  Result<> r;
  if (in_range(t->size(), offset, buf.size()))
    r = co_await t->read(q, buf, offset);
  else
    r = past_end(offset, buf.size(), t->size());
  leave(pq);
  co_return r;
}

std::optional<std::span<const std::byte>> LiveTarget::read_view(Queue& q, uint64_t offset, uint64_t length) {
  PerQueue& pq = per_queue_[q.id()];
  if (pq.suspended || !pq.table || !in_range(pq.table->size(), offset, length)) return std::nullopt;
  return pq.table->read_view(q, offset, length);
}

Task<Result<>> LiveTarget::write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  LIVE_ENTER(q);
  Result<> r;
  if (in_range(t->size(), offset, buf.size()))
    r = co_await t->write(q, buf, offset, f);
  else
    r = past_end(offset, buf.size(), t->size());
  leave(pq);
  co_return r;
}

// A FLUSH covers every write acknowledged before it: those on tables a
// reload retired too, until a flush of them succeeded (see the header).
Task<Result<>> LiveTarget::flush(Queue& q) {
  LIVE_ENTER(q);
  Result<> r;
  if (std::shared_ptr<Unflushed> u = pq.unflushed) {
    if (!u->done.load(std::memory_order_acquire)) {
      for (auto& old : u->tables) {
        r = co_await old->flush(q);
        if (!r) {
          r = fail(r.error().code, "flush of the table a reload replaced: " + r.error().message);
          break;
        }
      }
      if (r) u->done.store(true, std::memory_order_release);
    }
    if (r && pq.unflushed == u) pq.unflushed = nullptr;
  }
  if (r) r = co_await t->flush(q);
  leave(pq);
  co_return r;
}

Task<Result<>> LiveTarget::trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  LIVE_ENTER(q);
  Result<> r;
  if (in_range(t->size(), offset, length))
    r = co_await t->trim(q, offset, length, f);
  else
    r = past_end(offset, length, t->size());
  leave(pq);
  co_return r;
}

Task<Result<>> LiveTarget::zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  LIVE_ENTER(q);
  Result<> r;
  if (in_range(t->size(), offset, length))
    r = co_await t->zero(q, offset, length, f);
  else
    r = past_end(offset, length, t->size());
  leave(pq);
  co_return r;
}

Task<Result<Extents>> LiveTarget::extents(Queue& q, uint64_t offset, uint64_t length) {
  LIVE_ENTER(q);
  Result<Extents> r;
  if (in_range(t->size(), offset, length))
    r = co_await t->extents(q, offset, length);
  else
    r = past_end(offset, length, t->size());
  leave(pq);
  co_return r;
}

Task<Result<>> LiveTarget::cache(Queue& q, uint64_t offset, uint64_t length) {
  LIVE_ENTER(q);
  Result<> r;
  if (in_range(t->size(), offset, length))
    r = co_await t->cache(q, offset, length);
  else
    r = past_end(offset, length, t->size());
  leave(pq);
  co_return r;
}

Task<Result<Extents>> LiveTarget::context_extents(Queue& q, std::string_view context, uint64_t offset,
                                                  uint64_t length) {
  LIVE_ENTER(q);
  Result<Extents> r;
  if (in_range(t->size(), offset, length))
    r = co_await t->context_extents(q, context, offset, length);
  else
    r = past_end(offset, length, t->size());
  leave(pq);
  co_return r;
}

#undef LIVE_ENTER

namespace {

uint64_t us_since(std::chrono::steady_clock::time_point t0) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace

Result<> LiveTarget::suspend(SuspendFlush how) {
  std::vector<Queue*> qs;
  std::shared_ptr<TableTarget> t;
  last_preflush_us_.store(0, std::memory_order_relaxed);
  if (how != SuspendFlush::kNone) {
    // The writeback while requests still flow: requests are held for the
    // drain alone, not for the page cache's writeback (bench/suspend.sh: 4k
    // randwrite QD32 was held 60-80 ms median when this flush ran under the
    // gate). What is written after it is covered by the client's next FLUSH,
    // on this table or, after a swap, through the retired table's flush.
    {
      MutexLock l(ctl_mu_);
      if (suspended_) return {};
      qs = queues_;
      t = active_;
    }
    if (!qs.empty() && t->caps().can_flush) {
      auto t0 = std::chrono::steady_clock::now();
      Queue* q = qs[0];
      auto r = q->call([&] { return t->flush(*q); });
      if (!r) return fail(r.error().code, "suspend: flush: " + r.error().message + " (the device is not suspended)");
      last_preflush_us_.store(us_since(t0), std::memory_order_relaxed);
    }
  }
  {
    MutexLock l(ctl_mu_);
    if (suspended_) return {};
    suspended_ = true;
    clean_at_gate_ = false;
    closed_at_ = std::chrono::steady_clock::now();
    qs = queues_;
    t = active_;
  }
  std::vector<std::future<void>> drained;
  for (Queue* q : qs) {
    auto p = std::make_shared<std::promise<void>>();
    drained.push_back(p->get_future());
    q->post([this, q, p] {
      PerQueue& pq = per_queue_[q->id()];
      pq.suspended = true;
      if (pq.in_flight == 0)
        p->set_value();
      else
        pq.on_drained = [p] { p->set_value(); };
    });
  }
  for (auto& f : drained) f.wait();
  std::chrono::steady_clock::time_point closed;
  {
    MutexLock l(ctl_mu_);
    closed = closed_at_;
  }
  last_drain_us_.store(us_since(closed), std::memory_order_relaxed);
  last_flush_us_.store(0, std::memory_order_relaxed);
  if (how == SuspendFlush::kHeld) {
    if (!qs.empty() && t->caps().can_flush) {
      auto t0 = std::chrono::steady_clock::now();
      Queue* q = qs[0];
      auto r = q->call([&] { return t->flush(*q); });
      if (!r) return fail(r.error().code, "suspend: flush: " + r.error().message + " (the device is suspended)");
      last_flush_us_.store(us_since(t0), std::memory_order_relaxed);
    }
    MutexLock l(ctl_mu_);
    clean_at_gate_ = true;
  }
  return {};
}

Result<> LiveTarget::load(std::shared_ptr<TableTarget> t) {
  std::vector<Queue*> qs;
  {
    MutexLock l(ctl_mu_);
    qs = queues_;
  }
  for (Queue* q : qs) TRY(q->call([&]() -> Task<Result<>> { co_return t->attach_queue(*q); }));
  MutexLock l(ctl_mu_);
  inactive_ = std::move(t);
  return {};
}

void LiveTarget::clear_inactive() {
  MutexLock l(ctl_mu_);
  inactive_.reset();
}

bool LiveTarget::resume(uint64_t conn_mark) {
  bool swapped = false;
  if (pinned()) {
    // A copy reads the quiet table: writes released now would make it fuzzy.
    LOG_WARN("resume: the device is being copied while suspended; it stays suspended");
    return false;
  }
  if (has_inactive()) {
    // A swap needs no request in flight: suspend (flushing) if not yet.
    if (auto r = suspend(SuspendFlush::kFirst); !r) LOG_WARN("resume: {}", r.error().message);
  }
  std::vector<Queue*> qs;
  std::shared_ptr<TableTarget> t;
  std::shared_ptr<Unflushed> unflushed;  // new, for the queues, if swapped
  {
    MutexLock l(ctl_mu_);
    if (!suspended_) return false;
    if (inactive_) {
      std::shared_ptr<TableTarget> old = active_;
      retired_.push_back({old, conn_mark});
      active_ = std::move(inactive_);
      inactive_.reset();
      swapped = true;
      publish_shape(*active_);
      auto u = std::make_shared<Unflushed>();
      if (unflushed_ && !unflushed_->done.load(std::memory_order_acquire)) u->tables = unflushed_->tables;
      if (!clean_at_gate_ && old->caps().can_flush) u->tables.push_back(old);
      unflushed_ = u->tables.empty() ? nullptr : u;
      unflushed = unflushed_;
      clean_at_gate_ = false;
    }
    qs = queues_;
    t = active_;
  }
  std::vector<std::future<void>> done;
  for (Queue* q : qs) {
    auto p = std::make_shared<std::promise<void>>();
    done.push_back(p->get_future());
    q->post([this, q, p, t, swapped, unflushed] {
      PerQueue& pq = per_queue_[q->id()];
      pq.table = t;
      if (swapped) pq.unflushed = unflushed;
      pq.suspended = false;
      auto parked = std::move(pq.parked);
      pq.parked.clear();
      p->set_value();
      for (auto h : parked) h.resume();
    });
  }
  for (auto& f : done) f.wait();
  if (unflushed && !qs.empty()) {
    // The retired tables' writeback, now, off the requests' path; a FLUSH
    // that comes first does it itself.
    Queue* q = qs[0];
    q->post([q, unflushed] {
      spawn([](Queue& q, std::shared_ptr<Unflushed> u) -> Task<void> {
        for (auto& old : u->tables) {
          Result<> r = co_await old->flush(q);
          if (!r) {
            LOG_WARN("flush of the table a reload replaced: {} (a client's next FLUSH tries again)",
                     r.error().message);
            co_return;
          }
        }
        u->done.store(true, std::memory_order_release);
      }(*q, unflushed));
    });
  }
  MutexLock l(ctl_mu_);
  suspended_ = false;
  last_hold_us_.store(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                                std::chrono::steady_clock::now() - closed_at_)
                                                .count()),
                      std::memory_order_relaxed);
  return swapped;
}

size_t LiveTarget::unflushed_retired() const {
  MutexLock l(ctl_mu_);
  return unflushed_ && !unflushed_->done.load(std::memory_order_acquire) ? unflushed_->tables.size() : 0;
}

void LiveTarget::reap(uint64_t oldest_conn) {
  // Retired tables flushed in the background: the queues let go of them.
  std::shared_ptr<Unflushed> flushed;
  std::vector<Queue*> qs;
  {
    MutexLock l(ctl_mu_);
    if (unflushed_ && unflushed_->done.load(std::memory_order_acquire)) {
      flushed = std::move(unflushed_);
      unflushed_.reset();
      qs = queues_;
    }
  }
  if (flushed) {
    std::vector<std::future<void>> done;
    for (Queue* q : qs) {
      auto p = std::make_shared<std::promise<void>>();
      done.push_back(p->get_future());
      q->post([this, q, p, flushed] {
        PerQueue& pq = per_queue_[q->id()];
        if (pq.unflushed == flushed) pq.unflushed = nullptr;
        p->set_value();
      });
    }
    for (auto& f : done) f.wait();
  }
  std::vector<std::shared_ptr<TableTarget>> drop;  // destroyed outside the lock
  MutexLock l(ctl_mu_);
  for (auto it = retired_.begin(); it != retired_.end();) {
    if (it->mark <= oldest_conn) {
      drop.push_back(std::move(it->table));
      it = retired_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace strata::control
