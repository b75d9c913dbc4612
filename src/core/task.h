// Task<T>: a lazy C++20 coroutine that runs when awaited and resumes its
// awaiter by symmetric transfer when done (no recursion, no allocation besides
// the frame). spawn() starts a Task<void> detached: its frame frees itself when
// it finishes. Exceptions never cross a coroutine: unhandled_exception()
// terminates, because src/ does not throw.
//
// Frames are allocated from a per-thread free list by size class: a request
// coroutine is created and destroyed for every I/O, and glibc malloc showed
// up in profiles of the 4k path.
#pragma once

#include <coroutine>
#include <cstddef>
#include <exception>
#include <optional>
#include <utility>

namespace strata {

namespace detail {
void* frame_alloc(std::size_t n);
void frame_free(void* p, std::size_t n) noexcept;

struct FramePromise {
  static void* operator new(std::size_t n) { return frame_alloc(n); }
  static void operator delete(void* p, std::size_t n) noexcept { frame_free(p, n); }
};
}  // namespace detail

template <typename T = void>
class [[nodiscard]] Task;

namespace detail {

struct FinalAwaiter {
  bool await_ready() const noexcept { return false; }
  template <typename P>
  std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
    auto c = h.promise().continuation;
    return c ? c : std::noop_coroutine();
  }
  void await_resume() const noexcept {}
};

struct PromiseBase : FramePromise {
  std::coroutine_handle<> continuation;
  std::suspend_always initial_suspend() noexcept { return {}; }
  FinalAwaiter final_suspend() noexcept { return {}; }
  void unhandled_exception() noexcept { std::terminate(); }
};

}  // namespace detail

template <typename T>
class [[nodiscard]] Task {
 public:
  struct promise_type : detail::PromiseBase {
    std::optional<T> value;
    Task get_return_object() {
      return Task(std::coroutine_handle<promise_type>::from_promise(*this));
    }
    template <typename U>
    void return_value(U&& v) {
      value.emplace(std::forward<U>(v));
    }
  };

  Task(Task&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  Task& operator=(Task&&) = delete;
  Task(const Task&) = delete;
  ~Task() {
    if (h_) h_.destroy();
  }

  bool await_ready() const noexcept { return false; }
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiter) noexcept {
    h_.promise().continuation = awaiter;
    return h_;
  }
  T await_resume() { return std::move(*h_.promise().value); }

 private:
  explicit Task(std::coroutine_handle<promise_type> h) : h_(h) {}
  std::coroutine_handle<promise_type> h_;
};

template <>
class [[nodiscard]] Task<void> {
 public:
  struct promise_type : detail::PromiseBase {
    Task get_return_object() {
      return Task(std::coroutine_handle<promise_type>::from_promise(*this));
    }
    void return_void() {}
  };

  Task(Task&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  Task& operator=(Task&&) = delete;
  Task(const Task&) = delete;
  ~Task() {
    if (h_) h_.destroy();
  }

  bool await_ready() const noexcept { return false; }
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiter) noexcept {
    h_.promise().continuation = awaiter;
    return h_;
  }
  void await_resume() {}

 private:
  explicit Task(std::coroutine_handle<promise_type> h) : h_(h) {}
  std::coroutine_handle<promise_type> h_;
};

// A fire-and-forget coroutine: starts at once, frees its frame at the end.
struct Detached {
  struct promise_type : detail::FramePromise {
    Detached get_return_object() { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
};

// Runs t to completion without an awaiter; the caller must keep whatever t
// references alive until it ends.
inline Detached spawn(Task<void> t) { co_await std::move(t); }

// Waits for spawned tasks on one thread: add() before each spawn, done() at
// the end of each task (its last touch of shared state), `co_await
// join.wait()` resumes once every added task is done.
class Join {
 public:
  void add(int n = 1) { pending_ += n; }
  void done() {
    if (--pending_ == 0 && waiter_) std::exchange(waiter_, {}).resume();
  }
  auto wait() {
    struct Awaiter {
      Join& j;
      bool await_ready() const noexcept { return j.pending_ == 0; }
      void await_suspend(std::coroutine_handle<> h) noexcept { j.waiter_ = h; }
      void await_resume() const noexcept {}
    };
    return Awaiter{*this};
  }

 private:
  int pending_ = 0;
  std::coroutine_handle<> waiter_;
};

}  // namespace strata
