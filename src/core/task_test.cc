#include "core/task.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "core/queue.h"
#include "core/result.h"

namespace strata {
namespace {

// A hand-driven suspension point, so tests control when coroutines resume.
std::coroutine_handle<> g_pending;
struct Suspend {
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) noexcept { g_pending = h; }
  void await_resume() const noexcept {}
};
void drive(const bool& done) {
  while (!done) {
    ASSERT_TRUE(g_pending);
    std::exchange(g_pending, nullptr).resume();
  }
}

Task<Result<int>> leaf(int x) {
  co_await Suspend{};
  if (x < 0) co_return fail(EINVAL, "negative");
  co_return x;
}

Task<Result<int>> sum(int n) {
  int total = 0;
  for (int i = 0; i <= n; ++i) {
    CO_TRY_ASSIGN(int v, co_await leaf(i));
    total += v;
  }
  co_return total;
}

Task<Result<>> stop_at_negative() {
  CO_TRY(co_await leaf(1));
  CO_TRY(co_await leaf(-1));
  ADD_FAILURE() << "CO_TRY did not return";
  co_return Result<>{};
}

// The shape that g++ 12 miscompiled when the awaited Task sat in an if
// condition: nested tasks resumed after real suspensions, in a loop.
TEST(Task, NestedTasksResumeTheirAwaiters) {
  bool done = false;
  Result<int> out = 0;
  auto outer = [&]() -> Task<void> {
    out = co_await sum(10);
    done = true;
  };
  spawn(outer());
  drive(done);
  ASSERT_TRUE(out);
  EXPECT_EQ(*out, 55);
}

TEST(Task, CoTryPropagatesErrors) {
  bool done = false;
  Result<> out;
  auto outer = [&]() -> Task<void> {
    out = co_await stop_at_negative();
    done = true;
  };
  spawn(outer());
  drive(done);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code, EINVAL);
}

TEST(Queue, RunsTasksOnItsRingAndSleeps) {
  Queue q(0);
  ASSERT_TRUE(q.init_inline());
  auto t = [&]() -> Task<Result<int>> {
    int r = co_await q.ring().sleep(std::chrono::milliseconds(1));
    co_return r;
  };
  auto r = q.run_sync(t());
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, -ETIME);
}

TEST(Queue, BlockingJobsResumeOnTheQueue) {
  Queue q(0);
  ASSERT_TRUE(q.init_inline());
  auto caller = std::this_thread::get_id();
  auto t = [&]() -> Task<Result<bool>> {
    auto worker = co_await q.blocking([] { return std::this_thread::get_id(); });
    co_return worker != std::this_thread::get_id() && std::this_thread::get_id() == caller;
  };
  auto r = q.run_sync(t());
  ASSERT_TRUE(r);
  EXPECT_TRUE(*r);
}

TEST(Queue, PostFromAnotherThread) {
  Queue q(0);
  ASSERT_TRUE(q.start());
  std::promise<std::thread::id> where;
  q.post([&] { where.set_value(std::this_thread::get_id()); });
  EXPECT_NE(where.get_future().get(), std::this_thread::get_id());
  q.stop();
}

}  // namespace
}  // namespace strata
