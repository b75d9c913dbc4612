#include "core/ring.h"

#include <sys/uio.h>
#include <unistd.h>

#include <cstring>

#include "core/log.h"

namespace strata {

Ring::~Ring() {
  if (inited_) io_uring_queue_exit(&ring_);
}

Result<> Ring::init(unsigned entries) {
  io_uring_params p;
  std::memset(&p, 0, sizeof p);
  // SQE128: room for the 80-byte command of an IORING_OP_URING_CMD (FUSE
  // over io_uring); other operations use the first 64 bytes as before.
  const unsigned tries[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SQE128,
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN, 0};
  int r = -EINVAL;
  for (unsigned flags : tries) {
    std::memset(&p, 0, sizeof p);
    p.flags = flags;
    r = io_uring_queue_init_params(entries, &ring_, &p);
    if (r != -EINVAL) break;
  }
  if (r < 0) return posix_error("io_uring_queue_init", -r);
  inited_ = true;
  // Saves an fget/fput on every io_uring_enter; optional (kernel >= 5.18).
  (void)io_uring_register_ring_fd(&ring_);
  ready_.reserve(entries);
  return {};
}

io_uring_sqe* Ring::get_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (!sqe) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

int Ring::run_once(bool wait) {
  int r = wait ? io_uring_submit_and_wait(&ring_, 1) : io_uring_submit(&ring_);
  if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME)
    LOG_ERROR("io_uring_submit: {}", std::strerror(-r));
  if (!wait) io_uring_get_events(&ring_);
  unsigned head;
  io_uring_cqe* cqe;
  unsigned n = 0;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    ++n;
    auto* c = static_cast<Completion*>(io_uring_cqe_get_data(cqe));
    if (!c) continue;
    c->res = cqe->res;
    c->flags = cqe->flags;
    ready_.push_back(c);
  }
  io_uring_cq_advance(&ring_, n);
  // Resume after advancing: a resumed coroutine may prepare and submit SQEs.
  for (std::size_t i = 0; i < ready_.size(); ++i) {
    Completion* c = ready_[i];
    if (c->callback)
      c->callback(c);
    else
      c->handle.resume();
  }
  ready_.clear();
  while (!deferred_.empty()) {
    deferred_run_.swap(deferred_);
    for (auto h : deferred_run_) h.resume();
    deferred_run_.clear();
  }
  return static_cast<int>(n);
}

__kernel_timespec Ring::to_timespec(std::chrono::nanoseconds d) {
  if (d.count() < 0) d = std::chrono::nanoseconds(0);
  __kernel_timespec ts;
  ts.tv_sec = d.count() / 1000000000;
  ts.tv_nsec = d.count() % 1000000000;
  return ts;
}

std::pair<io_uring_sqe*, io_uring_sqe*> Ring::get_sqe_pair() {
  if (io_uring_sq_space_left(&ring_) < 2) io_uring_submit(&ring_);
  io_uring_sqe* a = io_uring_get_sqe(&ring_);
  io_uring_sqe* b = io_uring_get_sqe(&ring_);
  CHECK(a != nullptr && b != nullptr);
  return {a, b};
}

Ring::Sleep Ring::sleep(std::chrono::nanoseconds d) { return Sleep{*this, to_timespec(d), {}}; }

void Ring::Sleep::await_suspend(std::coroutine_handle<> h) {
  c.handle = h;
  io_uring_sqe* sqe = ring.get_sqe();
  io_uring_prep_timeout(sqe, &ts, 0, 0);
  io_uring_sqe_set_data(sqe, &c);
}

bool Ring::buffered_writes_block(int fd, uint64_t offset) {
  char b;
  if (::pread(fd, &b, 1, static_cast<off_t>(offset)) != 1) return false;
  iovec one{&b, 1};
  return ::pwritev2(fd, &one, 1, static_cast<off_t>(offset), RWF_NOWAIT) < 0 && errno == EOPNOTSUPP;
}

}  // namespace strata
