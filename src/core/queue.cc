#include "core/queue.h"

#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>

#include <fmt/core.h>

#include "core/log.h"

namespace strata {
namespace {

// The blocking pool: a few threads shared by all queues.
class BlockingPool {
 public:
  static BlockingPool& instance() {
    // Never destroyed: its detached threads may still wait on it at exit.
    static BlockingPool* pool = new BlockingPool;
    return *pool;
  }
  void submit(std::function<void()> job) {
    {
      MutexLock l(mu_);
      jobs_.push_back(std::move(job));
      if (idle_ == 0 && threads_.size() < kMaxThreads) {
        threads_.emplace_back([this] { work(); });
        threads_.back().detach();
      }
    }
    cv_.notify_one();
  }

 private:
  static constexpr std::size_t kMaxThreads = 4;
  void work() {
    // Locked by hand, not by a std::unique_lock, so the analysis sees mu_ held.
    mu_.lock();
    for (;;) {
      ++idle_;
      cv_.wait(mu_, [this]() NO_THREAD_SAFETY_ANALYSIS { return !jobs_.empty(); });
      --idle_;
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      mu_.unlock();
      job();
      mu_.lock();
    }
  }
  Mutex mu_;
  std::condition_variable_any cv_;
  std::deque<std::function<void()>> jobs_ GUARDED_BY(mu_);
  std::vector<std::thread> threads_ GUARDED_BY(mu_);
  std::size_t idle_ GUARDED_BY(mu_) = 0;
};

}  // namespace

Queue::Queue(int id) : id_(id) {}

Queue::~Queue() {
  stop();
  if (efd_ >= 0) ::close(efd_);
}

void Queue::run_blocking(std::function<void()> job) { BlockingPool::instance().submit(std::move(job)); }

Result<> Queue::init_inline() {
  efd_ = ::eventfd(0, EFD_CLOEXEC);
  if (efd_ < 0) return posix_error("eventfd", errno);
  TRY(ring_.init(256));
  arm_mailbox();
  return {};
}

Result<> Queue::start(bool batch) {
  efd_ = ::eventfd(0, EFD_CLOEXEC);
  if (efd_ < 0) return posix_error("eventfd", errno);
  std::promise<Result<>> started;
  auto fut = started.get_future();
  thread_ = std::thread([this, &started, batch] {
    // Named so that top, perf and taskset can tell the queues apart.
    ::pthread_setname_np(::pthread_self(), fmt::format("strata-q{}", id_).c_str());
    // SCHED_BATCH (no privilege needed): a completion that wakes this thread
    // does not preempt the task running on the CPU (the client, the NFS
    // server), which is left to finish what it was doing; the queue then
    // finds more completions at once. io_uring's workers inherit it.
    if (batch) {
      sched_param sp{};
      if (int e = ::pthread_setschedparam(::pthread_self(), SCHED_BATCH, &sp); e != 0)
        LOG_WARN("queue {}: SCHED_BATCH: {}", id_, std::strerror(e));
    }
    auto r = ring_.init(1024);
    bool ok = r.has_value();
    started.set_value(std::move(r));
    if (!ok) return;
    arm_mailbox();
    loop();
  });
  auto r = fut.get();
  if (!r) {
    thread_.join();
    return r;
  }
  return {};
}

void Queue::stop() {
  if (stopped_ || !thread_.joinable()) return;
  stopped_ = true;
  post([this] { stop_.store(true); });
  thread_.join();
}

void Queue::post(std::function<void()> fn) {
  {
    MutexLock l(mu_);
    mailbox_.push_back(std::move(fn));
  }
  uint64_t one = 1;
  ssize_t r = ::write(efd_, &one, sizeof one);
  (void)r;
}

void Queue::drain_mailbox() {
  std::vector<std::function<void()>> jobs;
  {
    MutexLock l(mu_);
    jobs.swap(mailbox_);
  }
  for (auto& j : jobs) j();
}

void Queue::arm_mailbox() {
  mbox_c_.callback = &Queue::on_mailbox;
  mbox_c_.queue = this;
  io_uring_sqe* sqe = ring_.get_sqe();
  io_uring_prep_read(sqe, efd_, mbox_buf_, sizeof mbox_buf_, 0);
  io_uring_sqe_set_data(sqe, &mbox_c_);
}

void Queue::on_mailbox(Completion* c) {
  Queue* q = static_cast<MailboxCompletion*>(c)->queue;
  if (c->res < 0 && c->res != -EINTR && c->res != -EAGAIN) {
    LOG_ERROR("queue {}: eventfd read failed: {}", q->id_, c->res);
    return;
  }
  q->drain_mailbox();
  q->arm_mailbox();
}

void Queue::loop() {
  while (!stop_.load(std::memory_order_relaxed)) ring_.run_once(true);
}

void Queue::run_sync(Task<void> t) {
  bool done = false;
  auto wrap = [&]() -> Task<void> {
    co_await std::move(t);
    done = true;
  };
  spawn(wrap());
  while (!done) ring_.run_once(true);
}

}  // namespace strata
