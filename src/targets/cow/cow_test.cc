// CowTarget against an in-memory reference model: random writes (aligned and
// not, partial chunks, chunk-straddling), trims, zeroes, flushes and FUA
// writes on a stack of layers over a MemoryTarget base, every read compared
// with the model, block status checked (the zero flag only where the model
// reads zeros; strata:allocation-depth = the layer that last wrote each
// chunk), and the whole device compared after a clean close and reopen.
//
// Inline: one queue driven by run_sync, ops one at a time, two layers filled
// in turn (first as the top, then under a new top).
// Started: a started Queue driven through post(), batches of ops with
// disjoint byte ranges in flight at once (partial writes to one chunk race
// for its copy-up), and online snapshots, quiet ones (their layer alone must
// serve the device as it was) and ones taken with a batch in flight, and
// merges between batches, alternating the top into its parent and a random
// middle layer into the one below (the device must read the same, depths
// move down; a quiet snapshot merged into keeps the merged one's data).
// Flush: a second flush must not return before the bitmap bits of the writes
// it covers are in the file, while an earlier flush is still writing them;
// a flush in flight across a snapshot writes its page into the snapshot.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/core.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <future>
#include <random>
#include <thread>

#include "core/queue.h"
#include "targets/cow/cow.h"
#include "targets/cow/layer.h"
#include "targets/memory.h"

namespace strata {
namespace {

namespace fs = std::filesystem;

enum class OpKind { kRead, kWrite, kTrim, kZero, kFlush };

struct Op {
  OpKind kind = OpKind::kRead;
  uint64_t offset = 0, length = 0;
  IoFlags flags;
  std::vector<std::byte> buf;  // write data, or read result
};

// What the stack must read, and which layer (1 = bottom layer, 0 = the
// base, -1 = unknown) last changed each chunk.
struct Model {
  std::vector<std::byte> data;
  std::vector<int> holder;
};

void fill_random(std::mt19937_64& rng, std::byte* p, std::size_t n) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(p + i, &v, 8);
  }
  uint64_t v = rng();
  std::memcpy(p + i, &v, n - i);
}

bool all_zero(const std::byte* p, std::size_t n) {
  return std::all_of(p, p + n, [](std::byte b) { return b == std::byte{0}; });
}

class BaseResolver : public Resolver {
 public:
  explicit BaseResolver(std::shared_ptr<Target> b) : base_(std::move(b)) {}
  Result<std::shared_ptr<Target>> device(std::string_view name) override {
    if (name == "b") return base_;
    return fail(ENOENT, "no device " + std::string(name));
  }

 private:
  std::shared_ptr<Target> base_;
};

// (g++ 12: no co_await inside switch cases.)
Task<void> run_op(Target& t, Queue& q, Op& op, std::promise<Result<>>& done) {
  Result<> r;
  if (op.kind == OpKind::kRead)
    r = co_await t.read(q, op.buf, op.offset);
  else if (op.kind == OpKind::kWrite)
    r = co_await t.write(q, op.buf, op.offset, op.flags);
  else if (op.kind == OpKind::kTrim)
    r = co_await t.trim(q, op.offset, op.length, op.flags);
  else if (op.kind == OpKind::kZero)
    r = co_await t.zero(q, op.offset, op.length, op.flags);
  else
    r = co_await t.flush(q);
  done.set_value(std::move(r));
}

class CowModelTest : public ::testing::TestWithParam<uint32_t> {
 protected:
  void SetUp() override {
    chunk_ = GetParam();
    // Not a whole number of chunks: the last chunk is short.
    size_ = 160 * uint64_t{chunk_} + chunk_ / 2 + 512;
    chunks_ = (size_ + chunk_ - 1) / chunk_;
    char tmpl[] = "/tmp/strata-cow-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ASSERT_TRUE(q_.init_inline());
    // The base: random data with a few holes (trimmed pages).
    base_ = std::make_shared<MemoryTarget>(size_);
    model_.data.resize(size_);
    fill_random(rng_, model_.data.data(), size_);
    for (int i = 0; i < 12; ++i) {
      uint64_t off = rng_() % size_, len = std::min<uint64_t>(size_ - off, 1 + rng_() % (3 * chunk_));
      std::memset(model_.data.data() + off, 0, len);
    }
    ASSERT_TRUE(q_.run_sync(base_->write(q_, model_.data, 0, {})));
    model_.holder.assign(chunks_, 0);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return dir_ + "/" + name; }

  Result<std::shared_ptr<Target>> open(const std::string& top, bool ro = false) {
    std::vector<std::string> words{top, "base=b"};
    if (ro) words.push_back("ro");
    Params p(words);
    p.length = size_;
    BaseResolver r(base_);
    return CowTarget::create(p, r);
  }

  void create_layer(const std::string& name, const std::string& parent) {
    std::unique_ptr<LayerFile> par;
    if (!parent.empty()) {
      auto p = LayerFile::open(path(parent), false, false);
      ASSERT_TRUE(p) << p.error().message;
      par = std::move(*p);
    }
    auto l = LayerFile::create(path(name), size_, chunk_, par.get());
    ASSERT_TRUE(l) << l.error().message;
  }

  // A random op; lengths from 1 byte to a few chunks, offsets aligned to the
  // chunk, to 512 or to nothing.
  Op random_op() {
    Op op;
    uint32_t k = rng_() % 100;
    op.kind = k < 35 ? OpKind::kRead : k < 80 ? OpKind::kWrite : k < 88 ? OpKind::kTrim : k < 97 ? OpKind::kZero
                                                                                                 : OpKind::kFlush;
    if (op.kind == OpKind::kFlush) return op;
    uint32_t a = rng_() % 3;
    uint64_t align = a == 0 ? chunk_ : a == 1 ? 512 : 1;
    uint32_t l = rng_() % 10;
    uint64_t len;
    if (l < 4)
      len = 1 + rng_() % chunk_;
    else if (l < 6)
      len = chunk_ * (1 + rng_() % 3);  // whole chunks when aligned
    else if (l < 9)
      len = 1 + rng_() % (2 * chunk_);
    else
      len = 1 + rng_() % (5 * chunk_);
    if (align > 1) len = std::max<uint64_t>(align, len / align * align);
    op.offset = rng_() % size_ / align * align;
    if (rng_() % 20 == 0) op.offset = size_ - std::min<uint64_t>(size_, len);  // at the very end
    len = std::min(len, size_ - op.offset);
    op.length = len;
    op.flags.fua = op.kind == OpKind::kWrite && rng_() % 10 == 0;
    op.flags.may_trim = rng_() % 2;
    op.buf.resize(len);
    if (op.kind == OpKind::kWrite) fill_random(rng_, op.buf.data(), len);
    return op;
  }

  // The model after a successful op; `top` is the current top layer (1-based).
  void apply(const Op& op, int top) {
    if (op.kind == OpKind::kRead || op.kind == OpKind::kFlush || op.length == 0) return;
    if (op.kind == OpKind::kWrite)
      std::memcpy(model_.data.data() + op.offset, op.buf.data(), op.length);
    else
      std::memset(model_.data.data() + op.offset, 0, op.length);
    for (uint64_t c = op.offset / chunk_; c <= (op.offset + op.length - 1) / chunk_; ++c) model_.holder[c] = top;
  }

  std::string describe(const Op& op) const {
    const char* n[] = {"read", "write", "trim", "zero", "flush"};
    return fmt::format("{} {}+{}{}", n[static_cast<int>(op.kind)], op.offset, op.length, op.flags.fua ? " fua" : "");
  }

  // Reads compared with the model: where they differ, and by how much.
  void expect_read(const Op& op, uint64_t n_op) {
    const std::byte* want = model_.data.data() + op.offset;
    if (std::memcmp(op.buf.data(), want, op.length) == 0) return;
    uint64_t first = 0;
    while (op.buf[first] == want[first]) ++first;
    uint64_t pos = op.offset + first;
    ADD_FAILURE() << "op " << n_op << " " << describe(op) << ": byte " << pos << " (chunk " << pos / chunk_
                  << ", +" << pos % chunk_ << ") reads " << int(op.buf[first]) << ", the model says "
                  << int(want[first]) << " (last written by layer " << model_.holder[pos / chunk_] << ")";
  }

  // Block status over [off, off+len): the zero flag only where the model
  // reads zeros, and the allocation depth of every chunk of known holder.
  void check_status(Target& t, Queue& q, uint64_t off, uint64_t len, int nlayers,
                    const std::function<Result<Extents>(Task<Result<Extents>>)>& run) {
    auto e = run(t.extents(q, off, len));
    ASSERT_TRUE(e) << e.error().message;
    uint64_t pos = off;
    for (const auto& x : *e) {
      ASSERT_GT(x.length, 0u);
      if (x.flags & Extent::kZero) {
        ASSERT_TRUE(all_zero(model_.data.data() + pos, x.length))
            << "extent " << pos << "+" << x.length << " has the zero flag over non-zero data";
      }
      pos += x.length;
    }
    ASSERT_EQ(pos, off + len) << "extents do not cover the range";
    auto d = run(t.context_extents(q, "strata:allocation-depth", off, len));
    ASSERT_TRUE(d) << d.error().message;
    pos = off;
    for (const auto& x : *d) {
      for (uint64_t c = pos / chunk_; c <= (pos + x.length - 1) / chunk_; ++c) {
        int h = model_.holder[c];
        if (h < 0) continue;
        uint32_t want = h == 0 ? nlayers + 1 : nlayers - h + 1;
        ASSERT_EQ(x.flags, want) << "chunk " << c << ": depth " << x.flags << ", expected " << want
                                 << " (written last by layer " << h << " of " << nlayers << ")";
      }
      pos += x.length;
    }
    ASSERT_EQ(pos, off + len);
  }

  // The whole device against the model, 1 MiB at a time.
  void expect_device(Target& t, const std::vector<std::byte>& want, const std::string& what,
                     const std::function<Result<>(Task<Result<>>)>& run, Queue& q) {
    std::vector<std::byte> got(size_);
    for (uint64_t off = 0; off < size_; off += 1 << 20) {
      uint64_t n = std::min<uint64_t>(1 << 20, size_ - off);
      auto r = run(t.read(q, {got.data() + off, n}, off));
      ASSERT_TRUE(r) << what << ": " << r.error().message;
    }
    if (got == want) return;
    uint64_t first = 0;
    while (got[first] == want[first]) ++first;
    FAIL() << what << ": the device differs from the model first at byte " << first << " (chunk " << first / chunk_
           << ")";
  }

  std::function<Result<>(Task<Result<>>)> inline_run() {
    return [this](Task<Result<>> t) { return q_.run_sync(std::move(t)); };
  }
  std::function<Result<Extents>(Task<Result<Extents>>)> inline_run_x() {
    return [this](Task<Result<Extents>> t) { return q_.run_sync(std::move(t)); };
  }

  // n random ops one at a time on the inline queue.
  void run_inline(Target& t, int n, int top) {
    for (int i = 0; i < n; ++i) {
      Op op = random_op();
      Result<> r;
      switch (op.kind) {
        case OpKind::kRead:
          r = q_.run_sync(t.read(q_, op.buf, op.offset));
          break;
        case OpKind::kWrite:
          r = q_.run_sync(t.write(q_, op.buf, op.offset, op.flags));
          break;
        case OpKind::kTrim:
          r = q_.run_sync(t.trim(q_, op.offset, op.length, op.flags));
          break;
        case OpKind::kZero:
          r = q_.run_sync(t.zero(q_, op.offset, op.length, op.flags));
          break;
        case OpKind::kFlush:
          r = q_.run_sync(t.flush(q_));
          break;
      }
      ASSERT_TRUE(r) << "op " << i << " " << describe(op) << ": " << r.error().message;
      if (op.kind == OpKind::kRead) {
        expect_read(op, i);
        if (HasFailure()) return;
      }
      apply(op, top);
      if (i % 997 == 0) {
        uint64_t off = rng_() % size_, len = 1 + rng_() % (size_ - off);
        check_status(t, q_, off, len, top, inline_run_x());
        if (HasFailure()) return;
      }
    }
  }

  uint32_t chunk_ = 4096;
  uint64_t size_ = 0, chunks_ = 0;
  std::string dir_;
  std::mt19937_64 rng_{20240611};
  Queue q_{0};
  std::shared_ptr<MemoryTarget> base_;
  Model model_;
};

TEST_P(CowModelTest, InlineTwoLayersMatchTheModelAndPersist) {
  const int kOps = chunk_ <= 4096 ? 40000 : 20000;
  // Phase 1: l1 alone over the base.
  create_layer("l1.layer", "");
  {
    auto t = open(path("l1.layer"));
    ASSERT_TRUE(t) << t.error().message;
    ASSERT_TRUE((*t)->attach_queue(q_));
    run_inline(**t, kOps / 2, 1);
    if (HasFailure()) return;
    expect_device(**t, model_.data, "l1 before close", inline_run(), q_);
  }
  // Phase 2: a new top over l1.
  create_layer("top.layer", "l1.layer");
  {
    auto t = open(path("top.layer"));
    ASSERT_TRUE(t) << t.error().message;
    ASSERT_TRUE((*t)->attach_queue(q_));
    // l1's chunks are at depth 2 now.
    check_status(**t, q_, 0, size_, 2, inline_run_x());
    run_inline(**t, kOps / 2, 2);
    if (HasFailure()) return;
    check_status(**t, q_, 0, size_, 2, inline_run_x());
  }
  // After a clean close: the same device, writable and read-only.
  for (bool ro : {false, true}) {
    auto t = open(path("top.layer"), ro);
    ASSERT_TRUE(t) << t.error().message;
    ASSERT_TRUE((*t)->attach_queue(q_));
    expect_device(**t, model_.data, ro ? "reopened read-only" : "reopened", inline_run(), q_);
    check_status(**t, q_, 0, size_, 2, inline_run_x());
    if (ro) {
      EXPECT_FALSE((*t)->caps().can_write);
    }
  }
  // Nothing flagged in use after a clean close.
  for (const char* n : {"l1.layer", "top.layer"}) {
    auto l = LayerFile::open(path(n), false, false);
    ASSERT_TRUE(l);
    EXPECT_EQ((*l)->header().flags & LayerFile::kFlagInUse, 0u) << n;
    EXPECT_TRUE(LayerFile::check(path(n)).empty()) << n << ": " << LayerFile::check(path(n)).front();
  }
}

// Runs a task on a started queue and waits for its result. The state is
// shared: the queue thread may still be finishing the coroutine when this
// thread wakes and returns.
template <typename T>
T on_queue(Queue& q, Task<T> task) {
  struct State {
    explicit State(Task<T> t) : task(std::move(t)) {}
    Task<T> task;
    std::promise<T> done;
  };
  auto st = std::make_shared<State>(std::move(task));
  auto fut = st->done.get_future();
  q.post([st] {
    spawn([](std::shared_ptr<State> s) -> Task<void> {
      T v = co_await std::move(s->task);
      s->done.set_value(std::move(v));
    }(st));
  });
  return fut.get();
}

TEST_P(CowModelTest, StartedQueueConcurrentBatchesSnapshotsAndMerges) {
  const int kOps = chunk_ <= 4096 ? 100000 : 20000;  // 10^5 ops with snapshots and merges
  create_layer("l1.layer", "");
  create_layer("top.layer", "l1.layer");
  Queue q(1);
  ASSERT_TRUE(q.start());
  auto run = [&](Task<Result<>> t) { return on_queue<Result<>>(q, std::move(t)); };
  auto run_x = [&](Task<Result<Extents>> t) { return on_queue<Result<Extents>>(q, std::move(t)); };
  struct Snap {
    std::string path;
    std::vector<std::byte> data;
  };
  std::vector<Snap> quiet;
  int nlayers = 2;
  {
    auto t = open(path("top.layer"));
    ASSERT_TRUE(t) << t.error().message;
    auto* cow = dynamic_cast<CowTarget*>(t->get());
    ASSERT_TRUE((*t)->attach_queue(q));
    int done = 0, next_snap = 2000, snaps = 0, next_merge = 3000, merges = 0;
    while (done < kOps) {
      // A batch of ops whose byte ranges do not overlap (they may share chunks).
      std::vector<Op> batch;
      int want = 1 + rng_() % 12;
      for (int tries = 0; static_cast<int>(batch.size()) < want && tries < 50; ++tries) {
        Op op = random_op();
        bool clash = false;
        for (const auto& b : batch)
          if (op.length && b.length && op.offset < b.offset + b.length && b.offset < op.offset + op.length)
            clash = true;
        if (!clash) batch.push_back(std::move(op));
      }
      std::vector<std::promise<Result<>>> results(batch.size());
      // By value: an op that completes at once wakes this thread, which may
      // build the next batch while this closure is still looping.
      q.post([target = t->get(), qp = &q, ops = batch.data(), res = results.data(), n = batch.size()] {
        for (std::size_t i = 0; i < n; ++i) spawn(run_op(*target, *qp, ops[i], res[i]));
      });
      bool busy_snap = false;
      if (done >= next_snap) {
        // Every other snapshot is taken with this batch in flight.
        busy_snap = snaps % 2 == 1;
        if (!busy_snap) {
          for (auto& r : results) {
            auto v = r.get_future().get();
            ASSERT_TRUE(v) << v.error().message;
          }
        }
        auto s = cow->snapshot(q);
        ASSERT_TRUE(s) << s.error().message;
        ++nlayers;
        ++snaps;
        next_snap += 2000;
        EXPECT_EQ(cow->layer_paths().size(), static_cast<std::size_t>(nlayers));
        if (!busy_snap) {
          // The batch is in the model below; the snapshot holds it.
          for (auto& op : batch) {
            if (op.kind == OpKind::kRead) expect_read(op, done);
            apply(op, nlayers - 1);
          }
          quiet.push_back({*s, model_.data});
          done += batch.size();
          continue;
        }
      }
      for (auto& r : results) {
        auto v = r.get_future().get();
        ASSERT_TRUE(v) << v.error().message;
      }
      for (auto& op : batch) {
        if (op.kind == OpKind::kRead) expect_read(op, done);
        apply(op, nlayers);
        if (busy_snap && op.kind != OpKind::kRead && op.kind != OpKind::kFlush && op.length)
          for (uint64_t c = op.offset / chunk_; c <= (op.offset + op.length - 1) / chunk_; ++c)
            model_.holder[c] = -1;  // in the old top or the new one
      }
      if (HasFailure()) return;
      done += batch.size();
      if (done % 500 < static_cast<int>(batch.size())) {
        uint64_t off = rng_() % size_, len = 1 + rng_() % (size_ - off);
        check_status(**t, q, off, len, nlayers, run_x);
        if (HasFailure()) return;
      }
      // Merges in all but the last 8000 ops, so that snapshots taken after
      // the last merge are still checked alone at the end.
      if (done >= next_merge && done < kOps - 8000 && nlayers >= 3) {
        // A merge between batches: the top into its parent, or a middle
        // layer (level k, 1 = bottom) into the one below. The device reads
        // the same; holders move down.
        next_merge += 3000;
        auto paths = cow->layer_paths();
        bool top = merges++ % 2 == 1;
        int k = top ? nlayers : 2 + static_cast<int>(rng_() % (nlayers - 2));
        std::string gone = paths[k - 1], into = paths[k - 2];
        auto r = top ? cow->merge(q, nullptr) : cow->merge_layer(q, gone, nullptr);
        ASSERT_TRUE(r) << (top ? "top merge: " : "middle merge of " + gone + ": ") << r.error().message;
        for (auto& h : model_.holder)
          if (h >= k) --h;
        --nlayers;
        EXPECT_EQ(cow->layer_paths().size(), static_cast<std::size_t>(nlayers));
        // Alone, the layer merged into now reads what the merged one did
        // (if that one was a quiet snapshot); a renamed or deleted file is
        // no longer checked alone.
        auto g = std::find_if(quiet.begin(), quiet.end(), [&](const Snap& x) { return x.path == gone; });
        auto i = std::find_if(quiet.begin(), quiet.end(), [&](const Snap& x) { return x.path == into; });
        if (!top && i != quiet.end() && g != quiet.end()) i->data = g->data;
        std::erase_if(quiet, [&](const Snap& x) {
          return x.path == gone || (x.path == into && (top || g == quiet.end()));
        });
        expect_device(**t, model_.data, top ? "after a top merge" : "after a middle merge", run, q);
        uint64_t off = rng_() % size_, len = 1 + rng_() % (size_ - off);
        check_status(**t, q, off, len, nlayers, run_x);
        if (HasFailure()) return;
      }
    }
    expect_device(**t, model_.data, "before close", run, q);
    ASSERT_GE(merges, 3);
    ASSERT_GE(quiet.size(), 2u);
  }
  // Reopened: the whole stack, then each quiet snapshot alone, read-only.
  {
    auto t = open(path("top.layer"));
    ASSERT_TRUE(t) << t.error().message;
    ASSERT_TRUE((*t)->attach_queue(q));
    EXPECT_EQ(dynamic_cast<CowTarget*>(t->get())->layer_paths().size(), static_cast<std::size_t>(nlayers));
    expect_device(**t, model_.data, "reopened", run, q);
  }
  for (const auto& s : quiet) {
    auto l = LayerFile::open(s.path, false, false);
    ASSERT_TRUE(l);
    EXPECT_NE((*l)->header().flags & LayerFile::kFlagReadOnly, 0u) << s.path;
    EXPECT_FALSE(open(s.path)) << s.path << ": a snapshot opened writable";
    auto t = open(s.path, true);
    ASSERT_TRUE(t) << t.error().message;
    ASSERT_TRUE((*t)->attach_queue(q));
    expect_device(**t, s.data, s.path, run, q);
  }
  q.stop();
}

// A FLUSH covers every write completed before it was sent, even while an
// earlier flush still holds the changed bitmap page on its way to disk: when
// the second flush returns, the file (what a kill -9 leaves) has the bit.
// The blocking pool (where bitmap pages are written) is kept busy so the
// first flush's page write waits.
Task<void> flush_then_peek(Target& t, Queue& q, std::string path, uint64_t bitmap_offset, int& state,
                           Result<>& result, std::promise<void>& done) {
  result = co_await t.flush(q);
  uint8_t b = 0xff;
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0 && ::pread(fd, &b, 1, bitmap_offset) == 1) state = b & 3;
  if (fd >= 0) ::close(fd);
  done.set_value();
}

Task<void> flush_only(Target& t, Queue& q, Result<>& result, std::promise<void>& done) {
  result = co_await t.flush(q);
  done.set_value();
}

Task<void> occupy_pool(Queue& q, std::promise<void>& done) {
  int v = co_await q.blocking([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    return 0;
  });
  (void)v;
  done.set_value();
}

TEST(CowFlushTest, SecondFlushDoesNotReturnBeforeTheBitsOfWritesBeforeIt) {
  char tmpl[] = "/tmp/strata-cow-flush.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string dir = tmpl, top = dir + "/top.layer";
  const uint64_t size = 1 << 20;
  auto base = std::make_shared<MemoryTarget>(size);
  uint64_t bitmap_offset = 0;
  {
    auto l = LayerFile::create(top, size, 4096, nullptr);
    ASSERT_TRUE(l) << l.error().message;
    bitmap_offset = (*l)->header().bitmap_offset;
  }
  Queue q(2);
  ASSERT_TRUE(q.start());
  {
    Params p({top, "base=b"});
    p.length = size;
    BaseResolver r(base);
    auto t = CowTarget::create(p, r);
    ASSERT_TRUE(t) << t.error().message;
    ASSERT_TRUE((*t)->attach_queue(q));
    std::vector<std::byte> data(4096, std::byte{0x5a});
    auto w = on_queue<Result<>>(q, (*t)->write(q, data, 0, {}));  // chunk 0: present, bit not yet on disk
    ASSERT_TRUE(w) << w.error().message;
    std::promise<void> sleepers[4];
    for (auto& s : sleepers) q.post([&q, &s] { spawn(occupy_pool(q, s)); });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the pool's threads are all asleep now
    std::promise<void> d1, d2;
    Result<> r1, r2;
    int state = -1;
    Target& target = **t;
    q.post([&] {
      spawn(flush_only(target, q, r1, d1));  // takes the changed page, waits for the pool
      spawn(flush_then_peek(target, q, top, bitmap_offset, state, r2, d2));
    });
    d2.get_future().wait();
    ASSERT_TRUE(r2) << r2.error().message;
    EXPECT_EQ(state, kPresent) << "the second flush returned while the bit of a write completed before it was "
                                  "not in the file";
    d1.get_future().wait();
    ASSERT_TRUE(r1) << r1.error().message;
    for (auto& s : sleepers) s.get_future().wait();
  }
  q.stop();
  fs::remove_all(dir);
}

// A snapshot taken while a client's flush is still on its way to write the
// changed bitmap page: the page belongs to the layer that becomes the
// snapshot, never to the new top (which does not hold that chunk).
TEST(CowFlushTest, FlushInFlightAcrossASnapshotPersistsIntoTheSnapshot) {
  char tmpl[] = "/tmp/strata-cow-flush.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string dir = tmpl, top = dir + "/top.layer";
  const uint64_t size = 1 << 20;
  auto base = std::make_shared<MemoryTarget>(size);
  uint64_t bitmap_offset = 0;
  {
    auto l = LayerFile::create(top, size, 4096, nullptr);
    ASSERT_TRUE(l) << l.error().message;
    bitmap_offset = (*l)->header().bitmap_offset;
  }
  auto state_in_file = [&](const std::string& path) {
    uint8_t b = 0xff;
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd >= 0 && ::pread(fd, &b, 1, bitmap_offset) != 1) b = 0xff;
    if (fd >= 0) ::close(fd);
    return b & 3;
  };
  BaseResolver r(base);
  Queue q(2);
  ASSERT_TRUE(q.start());
  std::string snap;
  {
    Params p({top, "base=b"});
    p.length = size;
    auto t = CowTarget::create(p, r);
    ASSERT_TRUE(t) << t.error().message;
    ASSERT_TRUE((*t)->attach_queue(q));
    auto* cow = dynamic_cast<CowTarget*>(t->get());
    std::vector<std::byte> data(4096, std::byte{0x5a});
    auto w = on_queue<Result<>>(q, (*t)->write(q, data, 0, {}));
    ASSERT_TRUE(w) << w.error().message;
    std::promise<void> sleepers[4];
    for (auto& s : sleepers) q.post([&q, &s] { spawn(occupy_pool(q, s)); });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::promise<void> d1;
    Result<> r1;
    Target& target = **t;
    q.post([&] { spawn(flush_only(target, q, r1, d1)); });  // copies page 0, then waits for the pool
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto s = cow->snapshot(q);
    ASSERT_TRUE(s) << s.error().message;
    snap = *s;
    d1.get_future().wait();
    ASSERT_TRUE(r1) << r1.error().message;
    for (auto& sl : sleepers) sl.get_future().wait();
    // As a kill -9 now would leave the files.
    EXPECT_EQ(state_in_file(snap), kPresent) << "the snapshot's bitmap lacks the chunk written before it";
    EXPECT_EQ(state_in_file(top), kAbsent) << "the new top's bitmap claims a chunk it does not hold";
  }
  {
    Params p({snap, "base=b", "ro"});
    p.length = size;
    auto t = CowTarget::create(p, r);
    ASSERT_TRUE(t) << t.error().message;
    ASSERT_TRUE((*t)->attach_queue(q));
    std::vector<std::byte> back(4096);
    auto rr = on_queue<Result<>>(q, (*t)->read(q, back, 0));
    ASSERT_TRUE(rr) << rr.error().message;
    EXPECT_EQ(back, std::vector<std::byte>(4096, std::byte{0x5a})) << "the snapshot alone does not hold the write";
  }
  q.stop();
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Chunks, CowModelTest, ::testing::Values(4096u, 65536u),
                         [](const auto& info) { return "chunk" + std::to_string(info.param); });

}  // namespace
}  // namespace strata

namespace strata {
namespace {

// The writer's side of the shared-layer lease: a read-only layer opened
// writable (a merge into it) is refused while a reader's lease beside it is
// live, allowed once the lease has expired, and its claim file goes with it.
TEST(SharedLayerLease, WriterRefusedWhileAReaderLeaseIsLive) {
  char tmpl[] = "/tmp/strata-lease-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl, path = dir + "/g.layer";
  {
    auto l = LayerFile::create(path, 1 << 20, 4096, nullptr);
    ASSERT_TRUE(l) << l.error().message;
    (*l)->mutable_header().flags |= LayerFile::kFlagReadOnly;
    ASSERT_TRUE((*l)->write_header());
  }
  const std::string lease = dir + "/g.layer.lease-hostb-77-0000abcd";
  {
    FILE* f = ::fopen(lease.c_str(), "w");
    ASSERT_NE(f, nullptr);
    ::fputs("reader host=hostb pid=77 period=30\n", f);
    ::fclose(f);
  }
  auto refused = LayerFile::open(path, true);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, EBUSY);
  EXPECT_NE(refused.error().message.find("1 host(s) read it (host=hostb pid=77"), std::string::npos)
      << refused.error().message;
  EXPECT_FALSE(std::filesystem::exists(dir + "/g.layer.writer")) << "a refused writer leaves its claim behind";
  // Reading is never refused by a lease.
  EXPECT_TRUE(LayerFile::open(path, false));
  // The reader stopped renewing 40 s ago: its 30 s lease is over.
  timespec old[2];
  ::clock_gettime(CLOCK_REALTIME, &old[0]);
  old[0].tv_sec -= 40;
  old[1] = old[0];
  ASSERT_EQ(::utimensat(AT_FDCWD, lease.c_str(), old, 0), 0);
  {
    auto w = LayerFile::open(path, true);
    ASSERT_TRUE(w) << w.error().message;
    EXPECT_TRUE(std::filesystem::exists(dir + "/g.layer.writer"));
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/g.layer.writer")) << "the claim outlived the writer";
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace strata
