// Gate: requests held while frozen run after thaw, in order; freeze() returns
// only once the requests in flight are done, on every queue; a freeze holds
// only the kinds it names. Two started queues; each request is a coroutine
// that enters, stays in flight until the test lets it go, and leaves.
#include "core/gate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "core/queue.h"
#include "core/task.h"

namespace strata {
namespace {

using namespace std::chrono_literals;

// freeze() and thaw() from helpers: the tests freeze on one thread and thaw
// on another, which the lock analysis cannot follow.
void freeze_now(Gate* g, uint8_t kinds) NO_THREAD_SAFETY_ANALYSIS { g->freeze(kinds); }
void thaw_now(Gate* g) NO_THREAD_SAFETY_ANALYSIS { g->thaw(); }
std::future<void> freeze_async(Gate& g, uint8_t kinds) {
  return std::async(std::launch::async, freeze_now, &g, kinds);
}

bool ready(std::future<void>& f, std::chrono::milliseconds wait = 0ms) {
  return f.wait_for(wait) == std::future_status::ready;
}

class GateTest : public ::testing::Test {
 protected:
  // What the requests of one queue share; touched on that queue's thread.
  struct Lane {
    std::vector<std::coroutine_handle<>> holding;  // in flight, waiting to be let go
  };
  // Parks the request in its lane until release().
  struct Hold {
    Lane& lane;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) { lane.holding.push_back(h); }
    void await_resume() const noexcept {}
  };

  void SetUp() override {
    for (auto* q : {&q0_, &q1_}) {
      ASSERT_TRUE(q->start());
      gate_.attach(*q);
    }
  }
  void TearDown() override {
    q0_.stop();
    q1_.stop();
  }

  Lane& lane(Queue& q) { return lanes_[q.id()]; }

  // Starts a request of `kind` on `q`, labelled `id`: it records `id` in
  // entered_ once through the gate, stays in flight until release(q) if
  // `hold`, then leaves.
  void start(Queue& q, int id, Gate::Kind kind = Gate::kWrite, bool hold = false) {
    q.post([this, &q, id, kind, hold] {
      spawn([](GateTest* t, Queue& q, int id, Gate::Kind kind, bool hold) -> Task<void> {
        co_await t->gate_.enter(q, kind);
        {
          std::lock_guard<std::mutex> l(t->mu_);
          t->entered_.push_back(id);
        }
        if (hold) co_await Hold{t->lane(q)};
        t->gate_.leave(q, kind);
        ++t->done_;
      }(this, q, id, kind, hold));
    });
  }
  // Lets the requests held on `q` go on.
  void release(Queue& q) {
    std::promise<void> p;
    q.post([&] {
      auto hs = std::move(lane(q).holding);
      lane(q).holding.clear();
      for (auto h : hs) h.resume();
      p.set_value();
    });
    p.get_future().get();
  }
  // Waits until every closure posted to the queues before has run.
  void settle() {
    for (auto* q : {&q0_, &q1_}) {
      std::promise<void> p;
      q->post([&] { p.set_value(); });
      p.get_future().get();
    }
  }
  // Waits until `q` holds requests of `kind` (a freeze reached it).
  void wait_frozen(Queue& q, Gate::Kind kind) {
    for (;;) {
      std::promise<bool> p;
      q.post([&] { p.set_value(gate_.frozen(q, kind)); });
      if (p.get_future().get()) return;
      std::this_thread::sleep_for(1ms);
    }
  }
  std::vector<int> entered() {
    std::lock_guard<std::mutex> l(mu_);
    return entered_;
  }

  Queue q0_{0}, q1_{1};
  Gate gate_;
  Lane lanes_[kMaxQueues];
  std::mutex mu_;
  std::vector<int> entered_;  // under mu_
  std::atomic<int> done_{0};
};

TEST_F(GateTest, PassesWhenOpen) {
  start(q0_, 1);
  start(q1_, 2, Gate::kRead);
  settle();
  EXPECT_EQ(done_.load(), 2);
  // Nothing in flight: a freeze returns at once.
  auto f = freeze_async(gate_, Gate::kAll);
  EXPECT_TRUE(ready(f, 5s));
  thaw_now(&gate_);
}

TEST_F(GateTest, RequestsHeldWhileFrozenRunAfterThawInOrder) {
  freeze_now(&gate_, Gate::kWrites);
  for (int i = 0; i < 4; ++i) start(q0_, 10 + i);
  for (int i = 0; i < 4; ++i) start(q1_, 20 + i);
  settle();
  EXPECT_TRUE(entered().empty());
  EXPECT_EQ(done_.load(), 0);
  thaw_now(&gate_);
  settle();
  EXPECT_EQ(done_.load(), 8);
  // Per queue, in the order they arrived.
  std::vector<int> on0, on1;
  for (int id : entered()) (id < 20 ? on0 : on1).push_back(id);
  EXPECT_EQ(on0, (std::vector<int>{10, 11, 12, 13}));
  EXPECT_EQ(on1, (std::vector<int>{20, 21, 22, 23}));
  // Thawed: requests pass again.
  start(q0_, 30);
  settle();
  EXPECT_EQ(done_.load(), 9);
}

TEST_F(GateTest, FreezeReturnsOnlyOnceInFlightRequestsAreDone) {
  start(q0_, 1, Gate::kWrite, /*hold=*/true);
  start(q0_, 2, Gate::kWrite, /*hold=*/true);
  settle();
  ASSERT_EQ(entered().size(), 2u);
  auto f = freeze_async(gate_, Gate::kWrites);
  wait_frozen(q0_, Gate::kWrite);
  EXPECT_FALSE(ready(f, 100ms));
  // A request arriving now parks, and does not count as in flight.
  start(q0_, 3);
  settle();
  EXPECT_EQ(entered().size(), 2u);
  EXPECT_FALSE(ready(f, 20ms));
  release(q0_);
  EXPECT_TRUE(ready(f, 5s));
  EXPECT_EQ(done_.load(), 2);
  EXPECT_EQ(entered().size(), 2u);  // still parked
  thaw_now(&gate_);
  settle();
  EXPECT_EQ(done_.load(), 3);
}

TEST_F(GateTest, FreezeWaitsForEveryQueue) {
  start(q0_, 1, Gate::kWrite, /*hold=*/true);
  start(q1_, 2, Gate::kWrite, /*hold=*/true);
  settle();
  auto f = freeze_async(gate_, Gate::kWrites);
  wait_frozen(q0_, Gate::kWrite);
  wait_frozen(q1_, Gate::kWrite);
  EXPECT_FALSE(ready(f, 100ms));
  release(q0_);
  EXPECT_FALSE(ready(f, 100ms));  // q1 still has one in flight
  start(q0_, 3);                  // held on q0 meanwhile
  start(q1_, 4);                  // and on q1
  settle();
  EXPECT_EQ(entered().size(), 2u);
  release(q1_);
  EXPECT_TRUE(ready(f, 5s));
  thaw_now(&gate_);
  settle();
  EXPECT_EQ(done_.load(), 4);
}

TEST_F(GateTest, AFreezeHoldsOnlyTheKindsItNames) {
  // A read in flight does not hold off a freeze of writes...
  start(q0_, 1, Gate::kRead, /*hold=*/true);
  settle();
  auto f = freeze_async(gate_, Gate::kWrites);
  EXPECT_TRUE(ready(f, 5s));
  // ...and reads go on under it, while writes park.
  start(q1_, 2, Gate::kRead);
  start(q1_, 3, Gate::kWrite);
  settle();
  EXPECT_EQ(entered(), (std::vector<int>{1, 2}));
  EXPECT_FALSE(gate_.frozen(q1_, Gate::kRead));
  thaw_now(&gate_);
  settle();
  EXPECT_EQ(entered(), (std::vector<int>{1, 2, 3}));

  // A freeze of both waits for the read in flight, and holds new reads.
  auto g = freeze_async(gate_, Gate::kAll);
  wait_frozen(q1_, Gate::kRead);
  EXPECT_FALSE(ready(g, 100ms));
  start(q1_, 4, Gate::kRead);
  settle();
  EXPECT_EQ(entered().size(), 3u);
  release(q0_);
  EXPECT_TRUE(ready(g, 5s));
  thaw_now(&gate_);
  settle();
  EXPECT_EQ(entered(), (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(done_.load(), 4);
}

TEST_F(GateTest, OnEveryQueueRunsOnEachQueue) {
  std::mutex m;
  std::vector<int> ids;
  gate_.on_every_queue([&](Queue& q) {
    std::lock_guard<std::mutex> l(m);
    ids.push_back(q.id());
  });
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<int>{0, 1}));
}

}  // namespace
}  // namespace strata
