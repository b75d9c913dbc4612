// Design notes
//
// Load (blocking, on the thread that loads the table; see rbd_session.cc):
// connect, open the image (read-only at a snapshot), check that it holds the
// segment, take the exclusive lock unless read-only or exclusive=off. A
// snapshot opened writable is refused: it cannot be written.
//
// Data path. Each request is one librbd aio call, made on the request's
// queue thread, that returns at once (librbd queues it on its own threads:
// rbd_non_blocking_aio). Its rbd_completion_t carries a callback that runs on
// a librbd thread when the request is done: it stores the result, pushes the
// request onto its queue's lock-free list and, when the list was empty,
// writes the queue's eventfd. The queue's io_uring has a read of that eventfd
// outstanding while the queue has requests in librbd; the read's completion
// takes the whole list and resumes each request's coroutine on the queue
// thread. This is what librbd's own event socket does
// (rbd_set_image_notification + rbd_poll_io_events), but per queue: the
// event socket is one fd per image, and several queues share one image
// handle (two handles would be two lock owners), so reading it from several
// rings would wake all of them, or make one pass completions to the others.
//
// Buffers go to librbd as iovecs (rbd_aio_readv / rbd_aio_writev) and are
// not copied: reads scatter into the request's buffer, writes go out
// zero-copy (rbd_disable_zero_copy_writes=false; librbd completes a write
// only once the messenger has dropped the pages). The request's coroutine
// frame outlives the call, since it waits for the completion.
//
// FLUSH is rbd_aio_flush, FUA a write then a flush, TRIM rbd_aio_discard,
// WRITE_ZEROES rbd_aio_write_zeroes (thick-provisioned when the client
// forbids holes). Block status: rbd_diff_iterate2 over whole objects with the
// parent included, when the image has fast-diff and its object map is valid
// (one read of the object map, on the blocking pool); otherwise everything
// is data, which is always correct.
//
// Errors: librbd's negative errno, with ETIMEDOUT (the request outlived
// timeout=) and ESHUTDOWN (this client was blocklisted: another client broke
// our lock) turned into EIO with a message saying so. Nothing is retried
// here: librados already resends across OSD restarts until the timeout.
#include "targets/rbd/rbd.h"

#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include <fmt/core.h>

#include "core/log.h"

namespace strata {

namespace {

using Clock = std::chrono::steady_clock;

uint64_t ns_since(Clock::time_point t0) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
}

struct RbdOp;

}  // namespace

// One queue's completion mailbox. `done` is pushed by librbd threads and
// taken by the queue thread; everything else is the queue thread's.
struct RbdQueue : Completion {
  Ring* ring = nullptr;
  int efd = -1;
  std::atomic<RbdOp*> done{nullptr};
  bool armed = false;
  uint64_t in_flight = 0;
  alignas(8) std::byte buf[8];
  ~RbdQueue() {
    if (efd >= 0) ::close(efd);
  }
  void arm();
  static void on_read(Completion* c);
};

namespace {

// A request in librbd; lives in the awaiting coroutine's frame.
struct RbdOp {
  RbdQueue* q = nullptr;
  std::coroutine_handle<> handle;
  ssize_t ret = 0;
  RbdOp* next = nullptr;
};

// librbd thread: must not touch the op after pushing it (the queue thread
// may resume and free it at once).
void on_complete(rbd_completion_t c, void* arg) {
  auto* op = static_cast<RbdOp*>(arg);
  op->ret = rbd_aio_get_return_value(c);
  rbd_aio_release(c);
  RbdQueue* q = op->q;
  RbdOp* head = q->done.load(std::memory_order_relaxed);
  do {
    op->next = head;
  } while (!q->done.compare_exchange_weak(head, op, std::memory_order_release, std::memory_order_relaxed));
  if (head == nullptr) {
    uint64_t one = 1;
    ssize_t w = ::write(q->efd, &one, sizeof one);
    (void)w;
  }
}

// co_await Aio{q, [&](rbd_completion_t c) { return rbd_aio_...(..., c); }}
// yields librbd's result (>= 0) or a negative errno.
template <typename Start>
struct Aio {
  RbdQueue& q;
  Start start;
  RbdOp op{};
  bool await_ready() const noexcept { return false; }
  bool await_suspend(std::coroutine_handle<> h) {
    op.q = &q;
    op.handle = h;
    rbd_completion_t c;
    int r = rbd_aio_create_completion(&op, &on_complete, &c);
    if (r < 0) {
      op.ret = r;
      return false;
    }
    r = start(c);
    if (r < 0) {
      rbd_aio_release(c);
      op.ret = r;
      return false;
    }
    ++q.in_flight;
    q.arm();
    return true;
  }
  ssize_t await_resume() const noexcept { return op.ret; }
};
template <typename Start>
Aio(RbdQueue&, Start) -> Aio<Start>;

}  // namespace

void RbdQueue::arm() {
  if (armed) return;
  armed = true;
  callback = &RbdQueue::on_read;
  io_uring_sqe* sqe = ring->get_sqe();
  io_uring_prep_read(sqe, efd, buf, sizeof buf, 0);
  io_uring_sqe_set_data(sqe, static_cast<Completion*>(this));
}

void RbdQueue::on_read(Completion* c) {
  auto* q = static_cast<RbdQueue*>(c);
  q->armed = false;
  if (c->res < 0 && c->res != -EINTR && c->res != -EAGAIN) LOG_ERROR("rbd: completion eventfd read: {}", c->res);
  RbdOp* list = q->done.exchange(nullptr, std::memory_order_acquire);
  RbdOp* fifo = nullptr;  // oldest first
  while (list) {
    RbdOp* n = list->next;
    list->next = fifo;
    fifo = list;
    list = n;
  }
  while (fifo) {
    RbdOp* n = fifo->next;  // the frame may be gone after resume
    --q->in_flight;
    fifo->handle.resume();
    fifo = n;
  }
  if (q->in_flight > 0) q->arm();
}

// ---- load

Result<std::shared_ptr<Target>> RbdTarget::create(Params& p, Resolver& r) {
  (void)r;
  std::shared_ptr<RbdTarget> t(new RbdTarget());
  const std::string name = TRY(p.arg(0, "image"));
  t->spec_ = TRY(parse_rbd_spec(name));
  RbdSpec& s = t->spec_;
  if (auto v = p.option("id")) {
    s.id = v->rfind("client.", 0) == 0 ? v->substr(7) : *v;
    if (s.id.empty()) return fail(EINVAL, "option id=: empty client name");
  }
  if (auto v = p.option("conf")) s.conf = *v;
  if (auto v = p.option("keyring")) s.keyring = *v;
  if (auto v = p.option("namespace")) s.ns = *v;
  if (auto v = p.option("timeout")) {
    auto n = parse_u64(*v);
    if (!n) return fail(EINVAL, fmt::format("option timeout={}: {}", *v, n.error().message));
    if (*n == 0 || *n > 3600) return fail(EINVAL, fmt::format("option timeout={}: must be 1..3600 seconds", *v));
    s.timeout = std::chrono::seconds(*n);
  }
  const bool ro_flag = p.flag("ro");
  t->read_only_ = ro_flag || p.read_only;
  auto excl = p.option("exclusive");
  s.exclusive = TRY(excl ? parse_bool(*excl) : Result<bool>(true));
  TRY(p.finish(1));
  t->length_ = p.length;
  s.read_only = t->read_only_;

  if (!s.snap.empty() && !t->read_only_)
    return fail(EROFS, fmt::format("{}: a snapshot is read-only: add `ro` (or serve --read-only)", s.name()));
  if (excl && *parse_bool(*excl) && t->read_only_)
    return fail(EINVAL, fmt::format("{}: exclusive=on needs a writable image (drop `ro` or exclusive=on)",
                                    s.name()));

  t->session_ = TRY(RbdSession::open(s));
  t->image_ = t->session_->image();
  if (t->session_->size() < t->length_)
    return fail(EINVAL, fmt::format("{}: image too small: the segment needs {} bytes, the image has {} "
                                    "(rbd resize, or a shorter segment)",
                                    s.name(), t->length_, t->session_->size()));
  t->fast_diff_ = t->query_fast_diff();
  if (!t->read_only_ && s.exclusive) {
    TRY(t->session_->lock_exclusive());
    t->locked_ = true;
  }
  LOG_INFO("rbd {}: opened as {}{}{}", log_escape(s.name()), t->session_->self(), t->read_only_ ? ", read-only" : "",
           t->locked_ ? ", exclusive lock held" : "");
  return std::shared_ptr<Target>(std::move(t));
}

RbdTarget::~RbdTarget() {
  // Close the image (which waits for librbd's callbacks) before the
  // mailboxes those callbacks write to.
  session_.reset();
  for (int i = 0; i < kMaxQueues; ++i) delete queues_[i].load();
}

Caps RbdTarget::caps() const {
  Caps c;
  c.can_write = !read_only_;
  c.can_flush = !read_only_;
  c.can_fua = !read_only_;
  c.can_trim = !read_only_;
  c.can_zero = !read_only_;
  c.can_fast_zero = !read_only_;
  c.can_extents = fast_diff_.load(std::memory_order_relaxed);
  c.can_multi_conn = true;
  return c;
}

BlockSizes RbdTarget::block_sizes() const {
  BlockSizes b;
  b.minimum = 1;
  b.preferred = 4096;
  return b;
}

// A snapshot never changes: its name and size. An image does (other
// clients write it): none.
std::string RbdTarget::identity() const {
  // Only a snapshot's bytes cannot change; the ids tell a snapshot (or an
  // image, a pool) made again under the same name from the one cached.
  if (spec_.snap.empty() || !session_ || session_->image_id().empty() || session_->snap_id() == 0) return {};
  return fmt::format("rbd:{}:pool {} image {} snap {}:{}+{}",
                     spec_.ns.empty() ? spec_.name() : spec_.ns + "/" + spec_.name(), session_->pool_id(),
                     session_->image_id(), session_->snap_id(), length_, session_->size());
}

std::string RbdTarget::table_line() const {
  std::string s = "rbd " + spec_.name();
  if (!spec_.id.empty()) s += " id=" + spec_.id;
  if (!spec_.conf.empty()) s += " conf=" + spec_.conf;
  if (!spec_.keyring.empty()) s += " keyring=" + spec_.keyring;
  if (!spec_.ns.empty()) s += " namespace=" + spec_.ns;
  if (!spec_.exclusive) s += " exclusive=off";
  if (spec_.timeout != std::chrono::seconds(30)) s += fmt::format(" timeout={}", spec_.timeout.count());
  if (read_only_) s += " ro";
  return s;
}

void RbdTarget::info(InfoSink& out) const {
  out.add("image", spec_.name());
  out.add("client", session_->self());
  const bool held = locked_ && !lock_lost_.load(std::memory_order_relaxed);
  out.add("lock", !locked_ ? "off" : held ? "held" : "lost");
  out.add("lock_owner", held ? session_->self() : std::string());
  out.add("fast_diff", fast_diff_.load(std::memory_order_relaxed) ? "valid" : "no");
  stats_.report(out);
  auto mean_us = [](uint64_t ns, uint64_t n) { return n ? ns / n / 1000 : 0; };
  out.add("read_latency_us", mean_us(read_ns_.load(std::memory_order_relaxed), stats_.reads.load()));
  out.add("write_latency_us", mean_us(write_ns_.load(std::memory_order_relaxed), stats_.writes.load()));
  out.add("flush_latency_us", mean_us(flush_ns_.load(std::memory_order_relaxed), stats_.flushes.load()));
  out.add("fua_flushes", fua_flushes_.load(std::memory_order_relaxed));
}

Result<> RbdTarget::attach_queue(Queue& q) {
  auto& slot = queues_[q.id()];
  if (slot.load(std::memory_order_acquire)) return {};
  auto* rq = new RbdQueue();
  rq->ring = &q.ring();
  rq->efd = ::eventfd(0, EFD_CLOEXEC);
  if (rq->efd < 0) {
    int e = errno;
    delete rq;
    return posix_error(fmt::format("rbd {}: eventfd", spec_.name()), e);
  }
  slot.store(rq, std::memory_order_release);
  return {};
}

RbdQueue& RbdTarget::queue_state(Queue& q) {
  RbdQueue* rq = queues_[q.id()].load(std::memory_order_acquire);
  if (!rq) {
    auto r = attach_queue(q);
    CHECK(r.has_value());
    rq = queues_[q.id()].load(std::memory_order_acquire);
  }
  return *rq;
}

Error RbdTarget::io_error(std::string_view op, uint64_t offset, uint64_t length, ssize_t r) const {
  IoStats::bump(stats_.errors);
  const int e = static_cast<int>(-r);
  std::string what = fmt::format("rbd {} {}@{}+{}", op, spec_.name(), offset, length);
  if (e == ETIMEDOUT)
    return Error{EIO, fmt::format("{}: no answer from the cluster within {} s", what, spec_.timeout.count())};
  if ((e == ESHUTDOWN || e == EROFS) && locked_) lock_lost_.store(true, std::memory_order_relaxed);
  if (e == ESHUTDOWN)
    return Error{EIO, fmt::format("{}: this client was blocklisted (another client broke our exclusive lock): "
                                  "nothing more is written",
                                  what)};
  if (e == EROFS && !read_only_)
    return Error{EIO, fmt::format("{}: the image's exclusive lock is held by another client", what)};
  return Error{e > 0 ? e : EIO, fmt::format("{}: {}", what, std::strerror(e > 0 ? e : EIO))};
}

// ---- data path

Task<Result<>> RbdTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.reads);
  IoStats::bump(stats_.read_bytes, buf.size());
  const auto t0 = Clock::now();
  iovec iov{buf.data(), buf.size()};
  ssize_t r = co_await Aio{queue_state(q), [&](rbd_completion_t c) {
                             return rbd_aio_readv(image_, &iov, 1, offset, c);
                           }};
  read_ns_.fetch_add(ns_since(t0), std::memory_order_relaxed);
  if (r < 0) co_return fail(io_error("read", offset, buf.size(), r));
  if (static_cast<size_t>(r) != buf.size())
    co_return fail(EIO, fmt::format("rbd read {}@{}+{}: short read of {} bytes (the image shrank?)", spec_.name(),
                                    offset, buf.size(), r));
  co_return Result<>{};
}

Task<Result<>> RbdTarget::write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.writes);
  IoStats::bump(stats_.write_bytes, buf.size());
  const auto t0 = Clock::now();
  iovec iov{const_cast<std::byte*>(buf.data()), buf.size()};
  RbdQueue& rq = queue_state(q);
  ssize_t r = co_await Aio{rq, [&](rbd_completion_t c) { return rbd_aio_writev(image_, &iov, 1, offset, c); }};
  if (r >= 0 && f.fua) {
    IoStats::bump(fua_flushes_);
    r = co_await Aio{rq, [&](rbd_completion_t c) { return rbd_aio_flush(image_, c); }};
  }
  write_ns_.fetch_add(ns_since(t0), std::memory_order_relaxed);
  if (r < 0) co_return fail(io_error(f.fua ? "write+fua" : "write", offset, buf.size(), r));
  co_return Result<>{};
}

Task<Result<>> RbdTarget::flush(Queue& q) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.flushes);
  const auto t0 = Clock::now();
  ssize_t r = co_await Aio{queue_state(q), [&](rbd_completion_t c) { return rbd_aio_flush(image_, c); }};
  flush_ns_.fetch_add(ns_since(t0), std::memory_order_relaxed);
  if (r < 0) co_return fail(io_error("flush", 0, 0, r));
  co_return Result<>{};
}

Task<Result<>> RbdTarget::trim(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.trims);
  IoStats::bump(stats_.trim_bytes, length);
  RbdQueue& rq = queue_state(q);
  ssize_t r = 0;
  if (length > 0)
    r = co_await Aio{rq, [&](rbd_completion_t c) { return rbd_aio_discard(image_, offset, length, c); }};
  if (r >= 0 && f.fua) r = co_await Aio{rq, [&](rbd_completion_t c) { return rbd_aio_flush(image_, c); }};
  if (r < 0) co_return fail(io_error("discard", offset, length, r));
  co_return Result<>{};
}

Task<Result<>> RbdTarget::zero(Queue& q, uint64_t offset, uint64_t length, IoFlags f) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.zeros);
  IoStats::bump(stats_.zero_bytes, length);
  RbdQueue& rq = queue_state(q);
  // NO_HOLE: the range stays allocated (thick); otherwise librbd may
  // deallocate whole objects.
  const int zflags = f.may_trim ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION;
  ssize_t r = 0;
  if (length > 0)
    r = co_await Aio{rq, [&](rbd_completion_t c) {
                       return rbd_aio_write_zeroes(image_, offset, length, c, zflags, 0);
                     }};
  if (r >= 0 && f.fua) r = co_await Aio{rq, [&](rbd_completion_t c) { return rbd_aio_flush(image_, c); }};
  if (r < 0) co_return fail(io_error("write_zeroes", offset, length, r));
  co_return Result<>{};
}

// ---- block status

bool RbdTarget::query_fast_diff() const {
  if (!(session_->features() & RBD_FEATURE_FAST_DIFF)) return false;
  uint64_t flags = 0;
  if (rbd_get_flags(image_, &flags) < 0) return false;
  return (flags & (RBD_FLAG_FAST_DIFF_INVALID | RBD_FLAG_OBJECT_MAP_INVALID)) == 0;
}

Result<Extents> RbdTarget::diff_extents(uint64_t offset, uint64_t length) const {
  struct State {
    Extents e;
    uint64_t pos, end;
  } st{{}, offset, offset + length};
  auto cb = [](uint64_t off, size_t len, int exists, void* arg) -> int {
    auto* s = static_cast<State*>(arg);
    uint64_t from = std::max(off, s->pos), to = std::min<uint64_t>(off + len, s->end);
    if (!exists || to <= from) return 0;
    if (from > s->pos) append_extent(s->e, from - s->pos, Extent::kHole | Extent::kZero);
    append_extent(s->e, to - from, 0);
    s->pos = to;
    return 0;
  };
  int r = rbd_diff_iterate2(image_, nullptr, offset, length, 1, 1, cb, &st);
  if (r < 0) return fail(io_error("diff_iterate", offset, length, r));
  if (st.pos < st.end) append_extent(st.e, st.end - st.pos, Extent::kHole | Extent::kZero);
  return std::move(st.e);
}

Task<Result<Extents>> RbdTarget::extents(Queue& q, uint64_t offset, uint64_t length) {
  if (length == 0 || !fast_diff_.load(std::memory_order_relaxed))
    co_return co_await Target::extents(q, offset, length);
  co_return co_await q.blocking([this, offset, length]() -> Result<Extents> {
    // The object map may have been invalidated since (librbd marks it so
    // after a failure to update it): then everything is data.
    if (!query_fast_diff()) {
      fast_diff_.store(false, std::memory_order_relaxed);
      return Extents{Extent{length, 0}};
    }
    return diff_extents(offset, length);
  });
}

}  // namespace strata
