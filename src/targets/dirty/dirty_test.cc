// DirtyTarget (dirty maps) against a model: random writes, trims and zeroes
// of random sizes over a MemoryTarget, checkpoints at random points, reopens
// from the map files; and the hand-off between a checkpoint and the writes in
// flight when it is taken.
//
// The control calls (start_map, checkpoint, ...) post to the queues and wait,
// so the queue here runs on its own thread (Queue::start) and the test thread
// plays the control thread; I/O is posted to the queue and waited for.
#include <stdlib.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <random>
#include <thread>

#include "core/queue.h"
#include "targets/memory.h"
#include "targets/dirty/dirty.h"

namespace strata {
namespace {

using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;

class DirtyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(q_.start());
    char tmpl[] = "/tmp/strata-dirty-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    tmp_ = tmpl;
    dir_ = tmp_ + "/dev";
  }
  void TearDown() override {
    q_.stop();
    std::filesystem::remove_all(tmp_);
  }

  // Runs fn()'s task on the queue thread and waits for it.
  Result<> on_queue(std::function<Task<Result<>>()> fn) {
    std::promise<Result<>> done;
    q_.post([&] {
      spawn([](std::function<Task<Result<>>()> fn, std::promise<Result<>>& done) -> Task<void> {
        auto r = co_await fn();
        done.set_value(std::move(r));
      }(fn, done));
    });
    return done.get_future().get();
  }

  std::shared_ptr<DirtyTarget> open(std::shared_ptr<Target> lower) {
    auto t = DirtyTarget::create(std::move(lower), "dev", dir_);
    EXPECT_TRUE(t) << (t ? "" : t.error().message);
    if (!t) return nullptr;
    auto tt = *t;
    auto r = on_queue([&]() -> Task<Result<>> { co_return tt->attach_queue(q_); });
    EXPECT_TRUE(r) << (r ? "" : r.error().message);
    return tt;
  }

  Result<> write(Target& t, std::span<const std::byte> buf, uint64_t off) {
    return on_queue([&]() -> Task<Result<>> { co_return co_await t.write(q_, buf, off, {}); });
  }
  Result<> read(Target& t, std::span<std::byte> buf, uint64_t off) {
    return on_queue([&]() -> Task<Result<>> { co_return co_await t.read(q_, buf, off); });
  }
  Result<> trim(Target& t, uint64_t off, uint64_t len) {
    return on_queue([&]() -> Task<Result<>> { co_return co_await t.trim(q_, off, len, {}); });
  }
  Result<> zero(Target& t, uint64_t off, uint64_t len) {
    return on_queue([&]() -> Task<Result<>> { co_return co_await t.zero(q_, off, len, {}); });
  }

  Queue q_{0};
  std::string tmp_, dir_;
};

// The model of one map: which blocks were touched since its last checkpoint.
struct Model {
  std::string name;
  uint64_t granularity, size;
  std::vector<bool> touched;
  Model(std::string n, uint64_t g, uint64_t s)
      : name(std::move(n)), granularity(g), size(s), touched((s + g - 1) / g) {}
  void touch(uint64_t off, uint64_t len) {
    if (len == 0) return;
    for (uint64_t b = off / granularity; b <= (off + len - 1) / granularity; ++b) touched[b] = true;
  }
  void reset() { touched.assign(touched.size(), false); }
  uint64_t blocks() const { return std::count(touched.begin(), touched.end(), true); }
  // Merged byte ranges, the last block clipped to the device.
  Ranges ranges() const {
    Ranges out;
    for (uint64_t b = 0; b < touched.size(); ++b) {
      if (!touched[b]) continue;
      uint64_t s = b * granularity, e = std::min(size, (b + 1) * granularity);
      if (!out.empty() && out.back().first + out.back().second == s)
        out.back().second += e - s;
      else
        out.push_back({s, e - s});
    }
    return out;
  }
};

std::string show(const Ranges& r) {
  std::string s;
  for (std::size_t i = 0; i < r.size() && i < 8; ++i)
    s += std::to_string(r[i].first) + "+" + std::to_string(r[i].second) + " ";
  if (r.size() > 8) s += "... (" + std::to_string(r.size()) + " ranges)";
  return s;
}

TEST_F(DirtyTest, RandomOpsMatchModelAcrossCheckpointsAndReopens) {
  // Not a multiple of any granularity: the last block is partial.
  const uint64_t size = (8 << 20) + 3 * 512;
  auto mem = std::make_shared<MemoryTarget>(size);
  auto t = open(mem);
  ASSERT_TRUE(t);
  std::vector<Model> models{{"fine", 4096, size}, {"coarse", 65536, size}, {"sector", 512, size}};
  for (const auto& m : models) ASSERT_TRUE(t->start_map(m.name, m.granularity));

  std::mt19937_64 rng(20240521);
  std::vector<std::byte> data(1 << 20);
  for (auto& b : data) b = static_cast<std::byte>(rng());
  auto pick_len = [&]() -> uint64_t {
    switch (rng() % 10) {
      case 0: return 0;                              // nothing marked
      case 1: case 2: case 3: return 1 + rng() % 600;   // inside a block or straddling two
      case 4: case 5: return 4096 * (1 + rng() % 4);
      case 6: case 7: return 1 + rng() % 70000;
      default: return 1 + rng() % (1 << 20);
    }
  };
  int checkpoints = 0, reopens = 0;
  const int kOps = 20000;
  for (int i = 0; i < kOps; ++i) {
    uint64_t len = pick_len();
    uint64_t off = rng() % size;
    if (rng() % 8 == 0) off = off / 4096 * 4096;
    len = std::min(len, size - off);
    int kind = rng() % 10;
    Result<> r;
    if (kind < 6) {
      r = write(*t, std::span<const std::byte>(data.data(), len), off);
    } else if (kind < 8) {
      r = trim(*t, off, len);
    } else {
      r = zero(*t, off, len);
    }
    ASSERT_TRUE(r) << "op " << i << ": " << r.error().message;
    for (auto& m : models) m.touch(off, len);

    for (auto& m : models) {
      if (rng() % 500 != 0 && i != kOps - 1) continue;
      bool consistent = false;
      auto bits = t->checkpoint(m.name, &consistent);
      ASSERT_TRUE(bits) << bits.error().message;
      EXPECT_TRUE(consistent);
      ASSERT_EQ((*bits)->granularity(), m.granularity);
      auto got = (*bits)->ranges(), want = m.ranges();
      ASSERT_EQ(got, want) << "map " << m.name << " after op " << i << "\n got: " << show(got)
                           << "\nwant: " << show(want);
      ASSERT_EQ((*bits)->dirty_blocks(), m.blocks());
      m.reset();
      auto now = t->map_bits(m.name);
      ASSERT_TRUE(now);
      ASSERT_EQ((*now)->dirty_blocks(), 0u) << "map " << m.name << " not empty after its checkpoint";
      ++checkpoints;
    }
    if (i % 97 == 0) {  // the live map agrees between checkpoints too
      for (const auto& m : models) {
        auto now = t->map_bits(m.name);
        ASSERT_TRUE(now);
        ASSERT_EQ((*now)->ranges(), m.ranges()) << "map " << m.name << " (live) after op " << i;
      }
    }
    if (rng() % 2500 == 0 || i == kOps / 2) {
      // Clean close and reopen from the same directory: the same bits.
      t->close_clean();
      t.reset();
      t = open(mem);
      ASSERT_TRUE(t);
      auto maps = t->maps();
      ASSERT_EQ(maps.size(), models.size());
      for (const auto& m : models) {
        bool consistent = false;
        auto now = t->map_bits(m.name, &consistent);
        ASSERT_TRUE(now) << now.error().message;
        EXPECT_TRUE(consistent);
        ASSERT_EQ((*now)->granularity(), m.granularity);
        ASSERT_EQ((*now)->ranges(), m.ranges()) << "map " << m.name << " after reopen at op " << i;
      }
      ++reopens;
    }
  }
  EXPECT_GE(checkpoints, 60);
  EXPECT_GE(reopens, 2);

  // Leave some bits set, close, and check both a reopen and a read-only open
  // of the file (what `dirty list --offline` does).
  for (int i = 0; i < 200; ++i) {
    uint64_t off = rng() % size, len = std::min<uint64_t>(1 + rng() % 20000, size - off);
    ASSERT_TRUE(write(*t, std::span<const std::byte>(data.data(), len), off));
    for (auto& m : models) m.touch(off, len);
  }
  t->close_clean();
  t.reset();
  for (const auto& m : models) {
    bool consistent = false;
    std::string why;
    auto f = MapFile::open(dir_ + "/" + m.name + ".dmap", /*read_only=*/true, consistent, why);
    ASSERT_TRUE(f) << f.error().message;
    EXPECT_TRUE(consistent) << why;
    EXPECT_FALSE((*f)->header().in_use) << "close_clean left the map marked in use";
    EXPECT_EQ((*f)->slot((*f)->header().active_slot)->ranges(), m.ranges()) << "offline " << m.name;
  }
  t = open(mem);
  ASSERT_TRUE(t);
  for (const auto& m : models) {
    auto now = t->map_bits(m.name);
    ASSERT_TRUE(now);
    EXPECT_EQ((*now)->ranges(), m.ranges()) << "final reopen " << m.name;
  }
  t->close_clean();
}

// A lower target whose writes wait at a gate the test opens.
class GateTarget final : public ForwardingTarget {
 public:
  GateTarget(std::shared_ptr<Target> lower, Queue& q) : ForwardingTarget(std::move(lower)), q_(q) {}
  std::string table_line() const override { return "gate"; }
  Task<Result<>> write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) override {
    if (closed_) co_await Park{this};
    co_return co_await lower_->write(q, buf, offset, f);
  }
  void close() { closed_ = true; }
  bool parked() const { return parked_.load(); }
  // From any thread: lets the parked write go on, on its queue.
  void open() {
    q_.post([this] {
      closed_ = false;
      if (h_) std::exchange(h_, nullptr).resume();
    });
  }

 private:
  struct Park {
    GateTarget* g;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      g->h_ = h;
      g->parked_.store(true);
    }
    void await_resume() const noexcept {}
  };
  Queue& q_;
  bool closed_ = false;  // queue thread only (set before the write starts)
  std::coroutine_handle<> h_;
  std::atomic<bool> parked_{false};
};

// A write marks its blocks before it reaches the device. A checkpoint taken
// while such a write is still in flight hands back its bits; whoever copies
// the handed-back blocks once checkpoint() returns must then either read the
// write's data, or find the block dirty again in the next map. Otherwise an
// incremental copy (strata sync, a backup reading over NBD) keeps the old
// data while the block is clean: the write is lost for the replica.
TEST_F(DirtyTest, CheckpointDoesNotLoseAWriteStillInFlight) {
  auto mem = std::make_shared<MemoryTarget>(1 << 20);
  auto gate = std::make_shared<GateTarget>(mem, q_);
  auto t = open(gate);
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->start_map("m", 4096));
  gate->close();

  std::vector<std::byte> data(4096, std::byte{0x5a});
  std::atomic<bool> written{false};
  std::promise<Result<>> wdone;
  q_.post([&] {
    spawn([](DirtyTarget& t, Queue& q, std::span<const std::byte> buf, std::atomic<bool>& written,
             std::promise<Result<>>& wdone) -> Task<void> {
      auto r = co_await t.write(q, buf, 8192, {});
      written.store(true);
      wdone.set_value(std::move(r));
    }(*t, q_, data, written, wdone));
  });
  for (int i = 0; i < 500 && !gate->parked(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_TRUE(gate->parked()) << "the write never reached the gate";

  // The gate opens 200 ms from now, whatever the checkpoint does meanwhile.
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    gate->open();
  });
  auto first = t->checkpoint("m");
  ASSERT_TRUE(first) << first.error().message;
  // Copy what the checkpoint handed back, as sync does, right away.
  std::vector<std::byte> copy(4096);
  ASSERT_TRUE(read(*t, copy, 8192));
  opener.join();
  ASSERT_TRUE(wdone.get_future().get());
  ASSERT_TRUE(written.load());
  EXPECT_EQ((*first)->ranges(), (Ranges{{8192, 4096}})) << "the in-flight write is not in the checkpoint";

  auto second = t->checkpoint("m");
  ASSERT_TRUE(second);
  bool copied_new_data = copy == data;
  bool dirty_again = !(*second)->ranges().empty();
  EXPECT_TRUE(copied_new_data || dirty_again)
      << "after checkpoint() returned, block 2 read old data, and the next checkpoint does not hold it: "
         "the write is lost to an incremental copy";
  t->close_clean();
}

// Writes after a checkpoint land in the fresh map only; a map started later
// sees only later writes; stop_map deletes the file.
TEST_F(DirtyTest, MapsStartStopAndPartition) {
  auto mem = std::make_shared<MemoryTarget>(1 << 20);
  auto t = open(mem);
  ASSERT_TRUE(t);
  std::vector<std::byte> buf(100, std::byte{1});
  ASSERT_TRUE(t->start_map("a", 4096));
  ASSERT_TRUE(write(*t, buf, 5000));
  ASSERT_TRUE(t->start_map("b", 512));
  ASSERT_TRUE(write(*t, buf, 70000));
  auto a = t->checkpoint("a");
  ASSERT_TRUE(a);
  EXPECT_EQ((*a)->ranges(), (Ranges{{4096, 4096}, {69632, 4096}}));
  ASSERT_TRUE(write(*t, buf, 4095));  // straddles blocks 0 and 1
  auto a2 = t->map_bits("a");
  ASSERT_TRUE(a2);
  EXPECT_EQ((*a2)->ranges(), (Ranges{{0, 8192}}));
  auto b = t->map_bits("b");
  ASSERT_TRUE(b);
  EXPECT_EQ((*b)->ranges(), (Ranges{{3584, 1024}, {69632, 512}}));
  EXPECT_FALSE(t->start_map("a", 4096));
  EXPECT_FALSE(t->start_map("c", 1000));
  EXPECT_FALSE(t->start_map("c", 256));
  EXPECT_FALSE(t->start_map("c/d", 4096));
  EXPECT_FALSE(t->checkpoint("nosuch"));
  ASSERT_TRUE(t->stop_map("a"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/a.dmap"));
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/b.dmap"));
  EXPECT_FALSE(t->map_bits("a"));
  EXPECT_EQ(t->contexts(), (std::vector<std::string>{"strata:dirty:b"}));
  t->close_clean();
}

}  // namespace
}  // namespace strata
