// Queue: one I/O thread that owns one Ring and runs its event loop (ublksrv's
// queue). Every request coroutine of a connection runs on the queue that
// accepted it, so the data path takes no locks.
//
// Other threads hand work to a queue with post(), which appends a closure to a
// mailbox and wakes the loop through an eventfd the ring is reading. The
// mailbox mutex is taken once per hand-off (a new connection, a control
// command, the end of a blocking job), never per I/O.
//
// Blocking calls that io_uring cannot do (lseek(SEEK_DATA) for block status,
// and later name resolution or NFS mounts) go to a small shared thread pool
// with `co_await q.blocking(fn)`; the queue thread never blocks.
#pragma once

#include <atomic>
#include <optional>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "core/result.h"
#include "core/ring.h"
#include "core/thread_annotations.h"
#include "core/task.h"

namespace strata {

// Queue ids run from 0 to kMaxQueues - 1, so targets can keep per-queue
// state in a fixed array indexed by id() without locks.
constexpr int kMaxQueues = 64;

class Queue {
 public:
  explicit Queue(int id);
  ~Queue();
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  // Starts the thread and its ring. Fails if the ring cannot be created.
  // batch: the thread runs under SCHED_BATCH (see Queue::start).
  Result<> start(bool batch = false);
  // Asks the loop to exit once the closures already posted have run, and
  // joins the thread.
  void stop();

  int id() const { return id_; }
  Ring& ring() { return ring_; }

  // Thread-safe: runs fn on this queue's thread.
  void post(std::function<void()> fn);

  // Runs fn on the blocking pool and resumes on this queue with its result.
  template <typename F>
  auto blocking(F fn) {
    using R = decltype(fn());
    struct Awaiter {
      Queue& q;
      F fn;
      std::optional<R> result;
      bool await_ready() const noexcept { return false; }
      void await_suspend(std::coroutine_handle<> h) {
        run_blocking([this, h] {
          result.emplace(fn());
          q.post([h] { h.resume(); });
        });
      }
      R await_resume() { return std::move(*result); }
    };
    return Awaiter{*this, std::move(fn), {}};
  }

  // From another thread (never a queue thread): runs the Task that make()
  // returns on this queue and waits for its result.
  template <typename Make>
  auto call(Make make) {
    using T = decltype(make().await_resume());
    std::promise<T> done;
    post([&] {
      spawn([](Make m, std::promise<T>& done) -> Task<void> { done.set_value(co_await m()); }(make, done));
    });
    return done.get_future().get();
  }

  // For tests and single-threaded tools: runs a task to completion on the
  // calling thread, which must be the one that called init_inline().
  Result<> init_inline();
  template <typename T>
  T run_sync(Task<T> t);
  void run_sync(Task<void> t);

 private:
  static void run_blocking(std::function<void()> job);
  void arm_mailbox();
  static void on_mailbox(Completion* c);
  void drain_mailbox();
  void loop();

  int id_;
  Ring ring_;
  std::thread thread_;
  int efd_ = -1;
  struct MailboxCompletion : Completion {
    Queue* queue = nullptr;
  } mbox_c_;
  alignas(8) std::byte mbox_buf_[8];
  Mutex mu_;
  std::vector<std::function<void()>> mailbox_ GUARDED_BY(mu_);
  std::atomic<bool> stop_{false};
  bool stopped_ = false;
};

template <typename T>
T Queue::run_sync(Task<T> t) {
  std::optional<T> out;
  bool done = false;
  auto wrap = [&]() -> Task<void> {
    out.emplace(co_await std::move(t));
    done = true;
  };
  spawn(wrap());
  while (!done) ring_.run_once(true);
  return std::move(*out);
}

}  // namespace strata
