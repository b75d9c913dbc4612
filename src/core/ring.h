// Ring: one io_uring, owned by one thread (the queue thread that created it),
// and awaitables for the operations strata uses. Not thread-safe: every method
// must be called on the owning thread.
//
// An awaitable prepares its SQE when the coroutine suspends and stores a
// pointer to its Completion (which lives in the coroutine frame) in
// sqe->user_data. SQEs are not submitted one by one: Ring::run_once() submits
// everything prepared since the last call in one io_uring_enter, then reaps
// completions and resumes their coroutines. A user_data of 0 marks an SQE
// whose completion nobody waits for (the CQE of a linked timeout).
#pragma once

#include <liburing.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <chrono>
#include <coroutine>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "core/result.h"

namespace strata {

// What a CQE wakes: a coroutine, or (for long-lived loop machinery such as a
// queue's mailbox) a plain callback.
struct Completion {
  std::coroutine_handle<> handle;
  int32_t res = 0;
  uint32_t flags = 0;
  void (*callback)(Completion*) = nullptr;
};

class Ring {
 public:
  Ring() = default;
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Creates the ring on the calling thread (SINGLE_ISSUER | DEFER_TASKRUN,
  // falling back to a plain ring on kernels without them).
  Result<> init(unsigned entries);

  // True when SQEs are 128 bytes (IORING_OP_URING_CMD with a big command).
  bool sqe128() const { return (ring_.flags & IORING_SETUP_SQE128) != 0; }

  // A free SQE; submits pending ones first if the SQ is full.
  io_uring_sqe* get_sqe();

  // Submits pending SQEs, waits for at least one completion if `wait`, and
  // resumes every completed coroutine. Returns the number of completions.
  int run_once(bool wait);

  // Generic awaitable: `prep(sqe)` fills the SQE when the coroutine suspends.
  template <typename Prep>
  struct Op {
    Ring& ring;
    Prep prep;
    Completion c;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      c.handle = h;
      io_uring_sqe* sqe = ring.get_sqe();
      prep(sqe);
      io_uring_sqe_set_data(sqe, &c);
    }
    int32_t await_resume() const noexcept { return c.res; }
  };
  template <typename Prep>
  Op<Prep> op(Prep prep) {
    return Op<Prep>{*this, std::move(prep), {}};
  }

  // sqe_flags: e.g. IOSQE_ASYNC to hand a large copy to an io-wq worker.
  auto read(int fd, std::span<std::byte> buf, uint64_t off, unsigned sqe_flags = 0) {
    return op([=](io_uring_sqe* s) {
      io_uring_prep_read(s, fd, buf.data(), buf.size(), off);
      s->flags |= sqe_flags;
    });
  }
  auto write(int fd, std::span<const std::byte> buf, uint64_t off, int rw_flags = 0, unsigned sqe_flags = 0) {
    return op([=](io_uring_sqe* s) {
      io_uring_prep_write(s, fd, buf.data(), buf.size(), off);
      s->rw_flags = rw_flags;
      s->flags |= sqe_flags;
    });
  }
  auto fdatasync(int fd) {
    return op([=](io_uring_sqe* s) { io_uring_prep_fsync(s, fd, IORING_FSYNC_DATASYNC); });
  }
  auto fallocate(int fd, int mode, uint64_t off, uint64_t len) {
    return op([=](io_uring_sqe* s) { io_uring_prep_fallocate(s, fd, mode, off, len); });
  }
  auto fadvise(int fd, uint64_t off, uint32_t len, int advice) {
    return op([=](io_uring_sqe* s) { io_uring_prep_fadvise(s, fd, off, len, advice); });
  }
  auto recv(int fd, std::span<std::byte> buf, int flags = 0) {
    return op([=](io_uring_sqe* s) { io_uring_prep_recv(s, fd, buf.data(), buf.size(), flags); });
  }
  auto sendmsg(int fd, const msghdr* msg, int flags) {
    return op([=](io_uring_sqe* s) { io_uring_prep_sendmsg(s, fd, msg, flags); });
  }
  auto accept(int fd) {
    return op([=](io_uring_sqe* s) { io_uring_prep_accept(s, fd, nullptr, nullptr, SOCK_CLOEXEC); });
  }

  // An operation that fails with -ECANCELED if it has not completed within
  // `timeout` (a linked timeout): handshake reads and writes, so a client that
  // stalls cannot hold a connection slot.
  template <typename Prep>
  struct TimedOp {
    Ring& ring;
    Prep prep;
    __kernel_timespec ts;
    Completion c;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      c.handle = h;
      auto [sqe, tsqe] = ring.get_sqe_pair();
      prep(sqe);
      io_uring_sqe_set_data(sqe, &c);
      sqe->flags |= IOSQE_IO_LINK;
      io_uring_prep_link_timeout(tsqe, &ts, 0);
      io_uring_sqe_set_data(tsqe, nullptr);
    }
    int32_t await_resume() const noexcept { return c.res; }
  };
  template <typename Prep>
  TimedOp<Prep> timed(Prep prep, std::chrono::nanoseconds timeout) {
    return TimedOp<Prep>{*this, std::move(prep), to_timespec(timeout), {}};
  }
  // True when buffered writes to fd cannot be done without blocking
  // (RWF_NOWAIT unsupported: ext4), so io_uring would first try them inline,
  // get EAGAIN and then punt them: better send them IOSQE_ASYNC at once.
  // Probes by rewriting the byte at `offset` with its own value.
  static bool buffered_writes_block(int fd, uint64_t offset);
  // Two consecutive SQEs in one submission batch (for linked operations).
  std::pair<io_uring_sqe*, io_uring_sqe*> get_sqe_pair();
  static __kernel_timespec to_timespec(std::chrono::nanoseconds d);

  // Suspends until the completions of the current batch have all been
  // handled: work that several completions feed (a connection's replies) is
  // then done once per batch, e.g. one sendmsg for many replies.
  struct Defer {
    Ring& ring;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) { ring.deferred_.push_back(h); }
    void await_resume() const noexcept {}
  };
  Defer defer() { return Defer{*this}; }

  // Sleeps for d (returns -ETIME when the time passed).
  struct Sleep {
    Ring& ring;
    __kernel_timespec ts;
    Completion c;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h);
    int32_t await_resume() const noexcept { return c.res; }
  };
  Sleep sleep(std::chrono::nanoseconds d);

 private:
  io_uring ring_{};
  bool inited_ = false;
  std::vector<Completion*> ready_;
  std::vector<std::coroutine_handle<>> deferred_, deferred_run_;
};

}  // namespace strata
