// LiveTarget: the suspend gate, table swaps and the flushes around them, on
// two started queues with a target that models a volatile cache (writes land
// in `cache`, a flush copies it to `stable`, as a power cut would keep).
#include "control/live_target.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>
#include <mutex>
#include <random>
#include <thread>

namespace strata::control {
namespace {

class CacheTarget final : public Target {
 public:
  explicit CacheTarget(uint64_t size) : cache_(size), stable_(size) {}

  uint64_t size() const override { return cache_.size(); }
  Caps caps() const override {
    Caps c;
    c.can_trim = false;
    return c;
  }
  std::string table_line() const override { return "cache-model"; }

  Task<Result<>> read(Queue&, std::span<std::byte> buf, uint64_t offset) override {
    std::lock_guard l(mu_);
    std::memcpy(buf.data(), cache_.data() + offset, buf.size());
    co_return Result<>{};
  }
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags) override {
    if (const int ms = write_delay_ms.load()) {
      co_await q.blocking([ms] {
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        return 0;
      });
    }
    std::lock_guard l(mu_);
    std::memcpy(cache_.data() + offset, buf.data(), buf.size());
    ++writes_done;
    co_return Result<>{};
  }
  Task<Result<>> flush(Queue&) override {
    ++flushes;
    if (fail_flushes.load() > 0) {
      --fail_flushes;
      co_return fail(EIO, "model: flush failed");
    }
    std::lock_guard l(mu_);
    stable_ = cache_;
    co_return Result<>{};
  }

  std::vector<std::byte> stable() const {
    std::lock_guard l(mu_);
    return stable_;
  }

  std::atomic<int> write_delay_ms{0};
  std::atomic<int> fail_flushes{0};
  std::atomic<int> flushes{0};
  std::atomic<int> writes_done{0};

 private:
  mutable std::mutex mu_;
  std::vector<std::byte> cache_, stable_;
};

constexpr uint64_t kSize = 1 << 20;

std::shared_ptr<TableTarget> table_of(std::shared_ptr<Target> t) {
  return std::make_shared<TableTarget>(std::vector<TableTarget::Segment>{{0, t->size(), std::move(t)}});
}

// Starts a task on a queue; its result arrives in the future.
template <typename T>
std::future<T> start_on(Queue& q, std::function<Task<T>()> make) {
  auto p = std::make_shared<std::promise<T>>();
  auto f = p->get_future();
  q.post([p, make = std::move(make)] {
    spawn([](std::shared_ptr<std::promise<T>> p, std::function<Task<T>()> m) -> Task<void> {
      p->set_value(co_await m());
    }(p, make));
  });
  return f;
}

std::vector<std::byte> pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<uint8_t>(seed * 31 + i * 7));
  return v;
}

bool ready(std::future<Result<>>& f) { return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }

class LiveTargetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = std::make_shared<CacheTarget>(kSize);
    live_ = std::make_unique<LiveTarget>(table_of(a_));
    for (auto* q : {&q0_, &q1_}) {
      ASSERT_TRUE(q->start());
      auto r = q->call([&]() -> Task<Result<>> { co_return live_->attach_queue(*q); });
      ASSERT_TRUE(r) << r.error().message;
    }
  }
  void TearDown() override {
    if (live_->suspended()) live_->resume(0);
    live_->reap(~uint64_t{0});
    q0_.stop();
    q1_.stop();
  }
  std::future<Result<>> write(Queue& q, uint64_t off, std::vector<std::byte> data) {
    return start_on<Result<>>(q, [this, &q, off, data = std::move(data)]() -> Task<Result<>> {
      co_return co_await live_->write(q, data, off, {});
    });
  }
  std::future<Result<>> flush(Queue& q) {
    return start_on<Result<>>(q, [this, &q]() -> Task<Result<>> { co_return co_await live_->flush(q); });
  }
  std::vector<std::byte> read(Queue& q, uint64_t off, size_t n) {
    std::vector<std::byte> buf(n);
    auto r = start_on<Result<>>(q, [this, &q, &buf, off]() -> Task<Result<>> {
                 co_return co_await live_->read(q, buf, off);
               }).get();
    EXPECT_TRUE(r) << r.error().message;
    return buf;
  }

  Queue q0_{0}, q1_{1};
  std::shared_ptr<CacheTarget> a_;
  std::unique_ptr<LiveTarget> live_;
};

TEST_F(LiveTargetTest, RequestsHeldWhileSuspendedRunAfterResumeAndNoneFails) {
  ASSERT_TRUE(live_->suspend(SuspendFlush::kNone));
  EXPECT_TRUE(live_->suspended());
  std::vector<std::future<Result<>>> held;
  for (int i = 0; i < 64; ++i) held.push_back(write(i % 2 ? q1_ : q0_, i * 4096, pattern(4096, i)));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  for (auto& f : held) EXPECT_FALSE(ready(f)) << "a request ran through the gate";
  EXPECT_EQ(live_->held_requests(), 64u);
  EXPECT_EQ(a_->writes_done.load(), 0);
  EXPECT_FALSE(live_->resume(0));  // nothing loaded: no swap
  for (auto& f : held) {
    auto r = f.get();
    EXPECT_TRUE(r) << r.error().message;
  }
  EXPECT_EQ(live_->held_requests(), 0u);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(read(q0_, i * 4096, 4096), pattern(4096, i)) << i;
  EXPECT_GT(live_->last_hold_us(), 90'000u);
}

TEST_F(LiveTargetTest, SuspendReturnsOnlyOnceRequestsInFlightAreDone) {
  a_->write_delay_ms = 300;
  std::vector<std::future<Result<>>> in_flight;
  for (int i = 0; i < 8; ++i) in_flight.push_back(write(i % 2 ? q1_ : q0_, i * 4096, pattern(4096, i)));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // all eight inside the target
  EXPECT_EQ(a_->writes_done.load(), 0);
  ASSERT_TRUE(live_->suspend(SuspendFlush::kNone));
  EXPECT_EQ(a_->writes_done.load(), 8) << "suspend returned with requests in flight";
  // (Each reply follows its request's exit from the gate by a moment.)
  for (auto& f : in_flight) EXPECT_EQ(f.wait_for(std::chrono::seconds(2)), std::future_status::ready);
  EXPECT_GT(live_->last_drain_us(), 100'000u);
}

TEST_F(LiveTargetTest, DefaultSuspendFlushesBeforeTheGateOnly) {
  ASSERT_TRUE(write(q0_, 0, pattern(4096, 1)).get());
  ASSERT_TRUE(live_->suspend(SuspendFlush::kFirst));
  EXPECT_EQ(a_->flushes.load(), 1);
  EXPECT_EQ(live_->last_flush_us(), 0u);
  auto st = a_->stable();
  EXPECT_TRUE(std::equal(st.begin(), st.begin() + 4096, pattern(4096, 1).begin()));
  live_->resume(0);
}

TEST_F(LiveTargetTest, SyncSuspendFlushesAgainWithRequestsHeld) {
  ASSERT_TRUE(write(q0_, 0, pattern(4096, 2)).get());
  ASSERT_TRUE(live_->suspend(SuspendFlush::kHeld));
  EXPECT_EQ(a_->flushes.load(), 2);
  auto b = std::make_shared<CacheTarget>(kSize);
  ASSERT_TRUE(live_->load(table_of(b)));
  EXPECT_TRUE(live_->resume(0));
  EXPECT_EQ(live_->unflushed_retired(), 0u) << "a table flushed under the gate needs no flush after the swap";
}

// A write acknowledged on the old table after the suspend's first flush is
// covered by the client's next FLUSH on the new table.
TEST_F(LiveTargetTest, FlushAfterASwapCoversWritesAcknowledgedOnTheOldTable) {
  ASSERT_TRUE(live_->suspend(SuspendFlush::kNone));
  live_->resume(0);
  ASSERT_TRUE(write(q1_, 8192, pattern(4096, 3)).get());  // acknowledged, not flushed
  ASSERT_TRUE(live_->suspend(SuspendFlush::kNone));
  auto b = std::make_shared<CacheTarget>(kSize);
  ASSERT_TRUE(live_->load(table_of(b)));
  a_->fail_flushes = 1;  // the background flush of the retired table fails
  EXPECT_TRUE(live_->resume(0));
  for (int i = 0; i < 100 && a_->flushes.load() < 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(a_->flushes.load(), 1);
  EXPECT_EQ(live_->unflushed_retired(), 1u);
  auto st = a_->stable();
  EXPECT_FALSE(std::equal(st.begin() + 8192, st.begin() + 12288, pattern(4096, 3).begin()));
  // The client's FLUSH, on the other queue, flushes the old table too.
  auto r = flush(q0_).get();
  ASSERT_TRUE(r) << r.error().message;
  st = a_->stable();
  EXPECT_TRUE(std::equal(st.begin() + 8192, st.begin() + 12288, pattern(4096, 3).begin()));
  EXPECT_EQ(live_->unflushed_retired(), 0u);
  EXPECT_EQ(b->flushes.load(), 1);
  // Flushed once: the queue let go of it; a FLUSH on the other queue does not
  // flush the old table again.
  int before = a_->flushes.load();
  ASSERT_TRUE(flush(q0_).get());
  EXPECT_EQ(a_->flushes.load(), before);
}

TEST_F(LiveTargetTest, FlushFailsWhileTheOldTableCannotBeFlushed) {
  ASSERT_TRUE(write(q0_, 0, pattern(4096, 4)).get());
  ASSERT_TRUE(live_->suspend(SuspendFlush::kNone));
  auto b = std::make_shared<CacheTarget>(kSize);
  ASSERT_TRUE(live_->load(table_of(b)));
  a_->fail_flushes = 1000;
  EXPECT_TRUE(live_->resume(0));
  auto r = flush(q1_).get();
  ASSERT_FALSE(r) << "a FLUSH succeeded though acknowledged writes were not on stable storage";
  EXPECT_NE(r.error().message.find("table a reload replaced"), std::string::npos) << r.error().message;
  a_->fail_flushes = 0;
  EXPECT_TRUE(flush(q1_).get());
  auto st = a_->stable();
  EXPECT_TRUE(std::equal(st.begin(), st.begin() + 4096, pattern(4096, 4).begin()));
}

TEST_F(LiveTargetTest, BackgroundFlushThenReapFreesTheRetiredTable) {
  ASSERT_TRUE(write(q0_, 0, pattern(4096, 5)).get());
  std::weak_ptr<TableTarget> old = live_->active();
  ASSERT_TRUE(live_->suspend(SuspendFlush::kNone));
  ASSERT_TRUE(live_->load(table_of(std::make_shared<CacheTarget>(kSize))));
  EXPECT_TRUE(live_->resume(5));
  for (int i = 0; i < 200 && live_->unflushed_retired() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(live_->unflushed_retired(), 0u);
  auto st = a_->stable();
  EXPECT_TRUE(std::equal(st.begin(), st.begin() + 4096, pattern(4096, 5).begin()));
  live_->reap(4);  // a connection older than the swap is still open
  EXPECT_FALSE(old.expired());
  // (The background flush's coroutine may hold it a moment after it is done.)
  for (int i = 0; i < 100 && !old.expired(); ++i) {
    live_->reap(5);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(old.expired()) << "a retired table outlived every reader";
}

TEST_F(LiveTargetTest, SwapUnderWritesLosesNothing) {
  // Writers on both queues without pause; the table is swapped to a copy
  // five times; every write lands on the table that serves the reads after.
  std::atomic<bool> stop{false};
  std::vector<std::byte> model(kSize);
  std::mutex model_mu;
  auto writer = [&](Queue& q, int seed) {
    std::mt19937_64 rng(seed);
    while (!stop.load()) {
      // 16 writes in flight at once, each in its own slot of this queue's
      // half: none overlaps another in flight.
      constexpr uint64_t kSlot = kSize / 2 / 16;
      std::vector<std::future<Result<>>> batch;
      std::vector<std::pair<uint64_t, std::vector<std::byte>>> ws;
      for (uint64_t i = 0; i < 16; ++i) {
        size_t n = 1 + rng() % 8192;
        uint64_t off = (seed % 2) * (kSize / 2) + i * kSlot + rng() % (kSlot - n + 1);
        ws.emplace_back(off, pattern(n, static_cast<int>(rng() % 1000)));
        batch.push_back(write(q, off, ws.back().second));
      }
      for (size_t i = 0; i < ws.size(); ++i) {
        auto r = batch[i].get();
        ASSERT_TRUE(r) << r.error().message;
        std::lock_guard l(model_mu);
        std::memcpy(model.data() + ws[i].first, ws[i].second.data(), ws[i].second.size());
      }
    }
  };
  std::thread w0(writer, std::ref(q0_), 2), w1(writer, std::ref(q1_), 3);
  std::vector<std::shared_ptr<CacheTarget>> tables{a_};
  for (int i = 0; i < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    ASSERT_TRUE(live_->suspend(SuspendFlush::kFirst));
    // The new table: a copy of the quiet old one.
    auto next = std::make_shared<CacheTarget>(kSize);
    std::vector<std::byte> all(kSize);
    auto r = start_on<Result<>>(q0_, [&]() -> Task<Result<>> { co_return co_await tables.back()->read(q0_, all, 0); })
                 .get();
    ASSERT_TRUE(r);
    r = start_on<Result<>>(q0_, [&]() -> Task<Result<>> { co_return co_await next->write(q0_, all, 0, {}); }).get();
    ASSERT_TRUE(r);
    ASSERT_TRUE(live_->load(table_of(next)));
    EXPECT_TRUE(live_->resume(0));
    tables.push_back(next);
  }
  stop = true;
  w0.join();
  w1.join();
  std::lock_guard l(model_mu);
  EXPECT_TRUE(read(q1_, 0, kSize) == model) << "data differs from the model after 5 swaps under writes";
}

}  // namespace
}  // namespace strata::control
