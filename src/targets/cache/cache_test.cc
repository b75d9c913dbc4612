// CacheTarget on two started queues over a read-only source whose identity
// the test controls: concurrent random reads through a cache far smaller
// than the source (eviction while slots are read) return the source's bytes;
// a reopen keeps the cache, another identity or geometry empties it; a source
// with no identity, or writable, is refused.
#include "targets/cache/cache.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <future>
#include <random>

namespace strata {
namespace {

class Source final : public Target {
 public:
  explicit Source(uint64_t size) : data(size) {
    std::mt19937_64 rng(1);
    for (auto& b : data) b = std::byte(rng());
  }
  uint64_t size() const override { return data.size(); }
  Caps caps() const override {
    Caps c;
    c.can_write = writable;
    return c;
  }
  std::string table_line() const override { return "source"; }
  std::string identity() const override { return id; }
  Task<Result<>> read(Queue&, std::span<std::byte> buf, uint64_t offset) override {
    reads.fetch_add(1);
    std::memcpy(buf.data(), data.data() + offset, buf.size());
    co_return Result<>{};
  }
  Task<Result<>> write(Queue&, std::span<const std::byte>, uint64_t, IoFlags) override {
    co_return fail(EROFS, "ro");
  }
  Task<Result<>> flush(Queue&) override { co_return Result<>{}; }

  std::vector<std::byte> data;
  std::string id = "source:1";
  bool writable = false;
  std::atomic<int> reads{0};
};

class OneDevice : public Resolver {
 public:
  explicit OneDevice(std::shared_ptr<Target> t) : t_(std::move(t)) {}
  Result<std::shared_ptr<Target>> device(std::string_view name) override {
    if (name == "src") return t_;
    return fail(ENOENT, "no device " + std::string(name));
  }

 private:
  std::shared_ptr<Target> t_;
};

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

class CacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/strata-cache-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    src_ = std::make_shared<Source>(kSize);
    ASSERT_TRUE(q0_.start());
    ASSERT_TRUE(q1_.start());
  }
  void TearDown() override {
    q0_.stop();
    q1_.stop();
    std::string cmd = "rm -rf " + dir_;
    (void)::system(cmd.c_str());
  }
  Result<std::shared_ptr<Target>> open(std::vector<std::string> words) {
    words.insert(words.begin(), {"src", dir_ + "/c.cache"});
    Params p(words);
    p.length = kSize;
    OneDevice r(src_);
    auto t = CacheTarget::create(p, r);
    if (!t) return t;
    for (auto* q : {&q0_, &q1_}) {
      auto a = q->call([&]() -> Task<Result<>> { co_return (*t)->attach_queue(*q); });
      if (!a) return fail(a.error().code, a.error().message);
    }
    return t;
  }
  std::string info(Target& t, std::string_view key) {
    struct Sink : InfoSink {
      std::map<std::string, std::string> v;
      void add(std::string_view k, uint64_t x) override { v[std::string(k)] = std::to_string(x); }
      void add(std::string_view k, std::string_view x) override { v[std::string(k)] = std::string(x); }
    } s;
    t.info(s);
    return s.v[std::string(key)];
  }
  // `n` reads of random size and alignment on both queues, 16 in flight at a
  // time; every byte compared with the source.
  void random_reads(Target& t, int n, uint32_t seed) {
    std::mt19937_64 rng(seed);
    for (int done = 0; done < n; done += 16) {
      std::vector<std::future<Result<>>> fs;
      std::vector<std::pair<uint64_t, std::shared_ptr<std::vector<std::byte>>>> bufs;
      for (int i = 0; i < 16; ++i) {
        uint64_t len = 1 + rng() % (3 * 65536);
        uint64_t off = rng() % (kSize - len);
        auto buf = std::make_shared<std::vector<std::byte>>(len);
        bufs.emplace_back(off, buf);
        Queue& q = i % 2 ? q1_ : q0_;
        fs.push_back(start_on<Result<>>(q, [&t, &q, buf, off]() -> Task<Result<>> {
          co_return co_await t.read(q, *buf, off);
        }));
      }
      for (size_t i = 0; i < fs.size(); ++i) {
        auto r = fs[i].get();
        ASSERT_TRUE(r) << r.error().message;
        auto [off, buf] = bufs[i];
        ASSERT_EQ(std::memcmp(buf->data(), src_->data.data() + off, buf->size()), 0)
            << "read " << off << "+" << buf->size() << " differs from the source";
      }
    }
  }

  static constexpr uint64_t kSize = 8 << 20;
  std::string dir_;
  std::shared_ptr<Source> src_;
  Queue q0_{0}, q1_{1};
};

TEST_F(CacheTest, ConcurrentReadsThroughASmallCacheEvictAndReturnTheSourcesBytes) {
  auto t = open({"size=512K", "chunk=64K"});  // 8 slots for 128 chunks
  ASSERT_TRUE(t) << t.error().message;
  random_reads(**t, 3000, 11);
  EXPECT_GT(std::stoull(info(**t, "evictions")), 0u);
  EXPECT_LE(std::stoull(info(**t, "cache_used_slots")), 8u);
  EXPECT_GT(std::stoull(info(**t, "hits")), 0u);
}

TEST_F(CacheTest, AReopenKeepsTheCacheAnotherIdentityOrGeometryEmptiesIt) {
  {
    auto t = open({});
    ASSERT_TRUE(t) << t.error().message;
    random_reads(**t, 400, 12);
    static_cast<CacheTarget&>(**t).persist_now();
    EXPECT_EQ(info(**t, "cache_used_slots"), "128");
  }
  {
    auto t = open({});
    ASSERT_TRUE(t);
    EXPECT_EQ(info(**t, "cache_used_slots"), "128") << "a reopen with the same identity lost the cache";
    int before = src_->reads.load();
    random_reads(**t, 200, 13);
    EXPECT_EQ(src_->reads.load(), before) << "a warm cache read from the source";
  }
  // The source's data changes, and so does its identity: emptied, new bytes.
  for (size_t i = 0; i < 4096; ++i) src_->data[70000 + i] = std::byte(0x5a);
  src_->id = "source:2";
  {
    auto t = open({});
    ASSERT_TRUE(t);
    EXPECT_EQ(info(**t, "cache_used_slots"), "0");
    random_reads(**t, 200, 14);
  }
  {
    auto t = open({"chunk=128K"});  // another geometry
    ASSERT_TRUE(t);
    EXPECT_EQ(info(**t, "cache_used_slots"), "0");
  }
}

TEST_F(CacheTest, TheSourceChangingWhileServedTurnsTheCacheOff) {
  auto t = open({});
  ASSERT_TRUE(t);
  random_reads(**t, 100, 15);
  for (size_t i = 0; i < kSize; ++i) src_->data[i] = std::byte(i * 13);
  src_->id = "source:3";
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  // The first read notices (the check is due); every read after returns the new bytes.
  std::vector<std::byte> one(1);
  ASSERT_TRUE(start_on<Result<>>(q0_, [&]() -> Task<Result<>> { co_return co_await (*t)->read(q0_, one, 0); }).get());
  random_reads(**t, 200, 16);
  EXPECT_EQ(info(**t, "bypass"), "1");
}

TEST_F(CacheTest, ASourceWithNoIdentityOrWritableIsRefused) {
  src_->id = "";
  auto t = open({});
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("cannot tell when its data changes"), std::string::npos) << t.error().message;
  src_->id = "x";
  src_->writable = true;
  t = open({});
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("is writable"), std::string::npos) << t.error().message;
  src_->writable = false;
  EXPECT_FALSE(open({"chunk=3000"}));
  EXPECT_FALSE(open({"chunk=8M"}));
}

}  // namespace
}  // namespace strata
