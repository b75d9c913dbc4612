// NfsTarget's data path: READ and WRITE through the queue's NfsClient,
// FLUSH and the COMMITs that settle the retained writes, and the rewrite
// after a verifier change; with RetainedWrites, the log of written data
// kept until a COMMIT makes it stable. Setup (create, option parsing) and
// status are in nfs_load.cc.
//
// Design notes
//
// Writes: see nfs.h. A WRITE is sent from the client's buffer; when its
// reply comes, the data is copied into the RetainedWrites log (one memcpy;
// libnfs encodes from the client's buffer). A FLUSH with nothing retained
// sends nothing. Rewriting after a verifier change waits for writes in
// flight to finish and holds new ones back (it is rare: a server restart),
// and replays the log in order, so a rewrite never lands on top of a newer
// write. Retained data is bounded by max_unstable (default 256 MiB, like
// the kernel client's dirty limits): past half of it a COMMIT starts in the
// background; past all of it, the write that crosses the limit waits for one.
#include "targets/nfs/nfs.h"

#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nfs.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstring>

#include <fmt/core.h>

#include "core/log.h"

namespace strata {

using namespace std::chrono_literals;

// ---- RetainedWrites

namespace {

constexpr uint32_t kChunkBytes = 4u << 20;

// Copies a write into the log. A large one with streaming (non-temporal)
// stores: the log is written now and read back only after a server restart,
// so its lines need not be fetched into the cache (as plain stores do, to
// be overwritten) nor evict the lines the data path uses. On 1 MiB writes
// this halves the cost of keeping the copy (bench/relay-floor.c, copy+retain
// against copy+stream; RESULTS.md section 8).
void copy_out(std::byte* dst, std::span<const std::byte> src) {
#if defined(__SSE2__)
  constexpr std::size_t kStreamMin = 64 << 10;
  if (src.size() >= kStreamMin) {
    const std::byte* s = src.data();
    std::size_t n = src.size();
    std::size_t head = (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16;
    std::memcpy(dst, s, head);
    dst += head;
    s += head;
    n -= head;
    for (; n >= 64; dst += 64, s += 64, n -= 64) {
      __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
      __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16));
      __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 32));
      __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + 48), d);
    }
    std::memcpy(dst, s, n);
    _mm_sfence();  // ordered before anything that reads the log
    return;
  }
#endif
  std::memcpy(dst, src.data(), src.size());
}

}  // namespace

RetainedWrites::RetainedWrites(uint64_t keep_bytes) : keep_bytes_(keep_bytes) {}

RetainedWrites::~RetainedWrites() {
  for (auto& c : chunks_) std::free(c.mem);
}

std::byte* RetainedWrites::alloc(uint32_t n, uint32_t* chunk) {
  if (cur_ != UINT32_MAX && chunks_[cur_].size - chunks_[cur_].used < n) {
    uint32_t old = cur_;
    cur_ = UINT32_MAX;
    if (chunks_[old].refs == 0) {
      chunks_[old].used = 0;
      free_.push_back(old);
    }
  }
  if (cur_ == UINT32_MAX) {
    uint32_t want = std::max(n, kChunkBytes);
    if (!free_.empty() && chunks_[free_.back()].size >= want) {
      cur_ = free_.back();
      free_.pop_back();
    } else {
      // A chunk slot with no memory, or a new one.
      uint32_t slot = UINT32_MAX;
      for (uint32_t i = 0; i < chunks_.size(); ++i)
        if (!chunks_[i].mem) {
          slot = i;
          break;
        }
      if (slot == UINT32_MAX) {
        slot = static_cast<uint32_t>(chunks_.size());
        chunks_.push_back({});
      }
      void* m = std::aligned_alloc(4096, (want + 4095) / 4096 * 4096);
      CHECK(m != nullptr);
      chunks_[slot] = Chunk{static_cast<std::byte*>(m), want, 0, 0};
      cur_ = slot;
    }
  }
  Chunk& c = chunks_[cur_];
  std::byte* p = c.mem + c.used;
  c.used += n;
  ++c.refs;
  *chunk = cur_;
  return p;
}

void RetainedWrites::release(uint32_t idx) {
  Chunk& c = chunks_[idx];
  if (--c.refs > 0 || idx == cur_) return;
  c.used = 0;
  if (static_cast<uint64_t>(free_.size()) * kChunkBytes < keep_bytes_ && c.size == kChunkBytes) {
    free_.push_back(idx);
  } else {
    std::free(c.mem);
    c = Chunk{};
  }
}

uint64_t RetainedWrites::append(uint64_t offset, std::span<const std::byte> data, uint64_t verf, bool stable) {
  Entry e;
  e.offset = offset;
  e.length = static_cast<uint32_t>(data.size());
  e.stable = stable;
  std::byte* p = alloc(e.length, &e.chunk);
  copy_out(p, data);
  e.data = p;
  e.seq = next_seq_++;
  e.verf = verf;
  bytes_ += e.length;
  log_.push_back(e);
  return e.seq;
}

bool RetainedWrites::settle(uint64_t upto, uint64_t verf) {
  for (const Entry& e : log_) {
    if (e.seq >= upto) break;
    if (!e.stable && e.verf != verf) return false;
  }
  drop_before(upto);
  return true;
}

std::vector<RetainedWrites::Entry> RetainedWrites::entries_before(uint64_t upto) const {
  std::vector<Entry> v;
  for (const Entry& e : log_) {
    if (e.seq >= upto) break;
    v.push_back(e);
  }
  return v;
}

void RetainedWrites::drop_before(uint64_t upto) {
  while (!log_.empty() && log_.front().seq < upto) {
    bytes_ -= log_.front().length;
    release(log_.front().chunk);
    log_.pop_front();
  }
}

NfsClient& NfsTarget::client(Queue& q) {
  auto& slot = clients_[q.id()];
  NfsClient* c = slot.load(std::memory_order_relaxed);
  if (!c) {
    c = new NfsClient(q, ep_);
    slot.store(c, std::memory_order_release);
  }
  return *c;
}

void NfsTarget::note_verf(uint64_t v) {
  uint64_t old = last_verf_.exchange(v, std::memory_order_relaxed);
  if (old != 0 && old != v) {
    verifier_changes_.fetch_add(1, std::memory_order_relaxed);
    LOG_WARN("{}: the server's write verifier changed (it restarted); unstable writes will be sent again",
             where());
  }
}

// ---- data path

Task<Result<>> NfsTarget::read(Queue& q, std::span<std::byte> buf, uint64_t offset) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.reads);
  IoStats::bump(stats_.read_bytes, buf.size());
  NfsClient& c = client(q);
  const auto dl = deadline();
  uint64_t at = offset_ + offset;
  while (!buf.empty()) {
    NfsClient::Call call;
    call.kind = NfsClient::Kind::kRead;
    call.offset = at;
    call.count = static_cast<uint32_t>(std::min<uint64_t>(buf.size(), rsize_));
    call.rdata = buf.data();
    call.deadline = dl;
    co_await c.run(call);
    if (call.failed) {
      IoStats::bump(stats_.errors);
      co_return fail(with_context(std::move(call.error), where()));
    }
    if (call.done_count == 0) {
      if (!call.eof) {
        IoStats::bump(stats_.errors);
        co_return fail(EIO, fmt::format("{}: READ at {} returned nothing", where(), at));
      }
      // The file was truncated under us: what lies past its end reads as zeros.
      std::memset(buf.data(), 0, buf.size());
      break;
    }
    buf = buf.subspan(call.done_count);
    at += call.done_count;
  }
  co_return Result<>{};
}

template <typename Done>
Task<Result<>> NfsTarget::write_range(Queue& q, const std::byte* data, uint64_t length, uint64_t at, int stable,
                                      NfsClock::time_point dl, Done done) {
  NfsClient& c = client(q);
  while (length > 0) {
    NfsClient::Call call;
    call.kind = NfsClient::Kind::kWrite;
    call.offset = at;
    call.count = static_cast<uint32_t>(std::min<uint64_t>(length, wsize_));
    call.stable = stable;
    call.wdata = data;
    call.deadline = dl;
    co_await c.run(call);
    if (call.failed) co_return fail(with_context(std::move(call.error), where()));
    if (call.done_count == 0 || call.done_count > call.count)
      co_return fail(EIO, fmt::format("{}: WRITE at {} wrote {} of {} bytes", where(), at, call.done_count,
                                      call.count));
    note_verf(call.verf);
    done(at, data, call.done_count, call.committed, call.verf);
    data += call.done_count;
    at += call.done_count;
    length -= call.done_count;
  }
  co_return Result<>{};
}

Task<Result<>> NfsTarget::wait_rewrite(Queue& q, NfsClock::time_point dl) {
  while (rewriting_.load(std::memory_order_acquire)) {
    if (NfsClock::now() >= dl) co_return fail(EIO, fmt::format("{}: timed out waiting for a rewrite", where()));
    co_await q.ring().sleep(1ms);
  }
  co_return Result<>{};
}

Task<Result<>> NfsTarget::write(Queue& q, std::span<const std::byte> buf, uint64_t offset, IoFlags f) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.writes);
  IoStats::bump(stats_.write_bytes, buf.size());
  const auto dl = deadline();
  // Wait while data lost by a server restart is being written again.
  for (;;) {
    CO_TRY(co_await wait_rewrite(q, dl));
    writes_in_flight_.fetch_add(1, std::memory_order_acq_rel);
    if (!rewriting_.load(std::memory_order_acquire)) break;
    writes_in_flight_.fetch_sub(1, std::memory_order_acq_rel);
  }
  struct InFlight {
    explicit InFlight(std::atomic<int>& c) : n(c) {}
    std::atomic<int>& n;
    ~InFlight() { n.fetch_sub(1, std::memory_order_acq_rel); }
  };
  std::optional<InFlight> guard{std::in_place, writes_in_flight_};

  // UNSTABLE, or FILE_SYNC for FUA. Each chunk is logged when its reply
  // comes (FUA ones too, marked stable: see RetainedWrites). A server that
  // answers a FILE_SYNC write less stable than asked gets a COMMIT below.
  bool weak = false, over_limit = false, start_background = false;
  const int stable = f.fua ? FILE_SYNC : UNSTABLE;
  auto r = co_await write_range(q, buf.data(), buf.size(), offset_ + offset, stable, dl,
                                [&](uint64_t o, const std::byte* d, uint32_t n, int committed, uint64_t verf) {
                                  bool is_stable = committed == FILE_SYNC;
                                  if (f.fua && !is_stable) weak = true;
                                  MutexLock lk(mu_);
                                  retained_.append(o, {d, n}, verf, is_stable);
                                  retained_bytes_.store(retained_.bytes(), std::memory_order_relaxed);
                                  over_limit = retained_.bytes() > max_unstable_;
                                  start_background = start_background || retained_.bytes() > max_unstable_ / 2;
                                });
  if (!r) {
    IoStats::bump(stats_.errors);
    co_return r;
  }
  guard.reset();
  if (weak || over_limit) {
    // FUA answered unstable: make it stable now. Past max_unstable: bound
    // the memory (the write itself is done either way).
    auto s = co_await settle(q, weak ? dl : deadline());
    if (!s) {
      if (weak) {
        IoStats::bump(stats_.errors);
        co_return s;
      }
      LOG_WARN("{}: COMMIT to bound unstable data failed: {}", where(), s.error().message);
    }
  } else if (start_background && !background_commit_.exchange(true)) {
    spawn(background_settle(q));
  }
  co_return Result<>{};
}

Task<void> NfsTarget::background_settle(Queue& q) {
  auto r = co_await settle(q, deadline());
  if (!r) LOG_WARN("{}: background COMMIT failed: {}", where(), r.error().message);
  background_commit_.store(false, std::memory_order_release);
}

Task<Result<>> NfsTarget::flush(Queue& q) {
  IoStats::Scope scope(stats_);
  IoStats::bump(stats_.flushes);
  auto r = co_await settle(q, deadline());
  if (!r) IoStats::bump(stats_.errors);
  co_return r;
}

Task<Result<>> NfsTarget::settle(Queue& q, NfsClock::time_point dl) {
  for (;;) {
    // A rewrite in progress holds pointers into the log: let it finish.
    CO_TRY(co_await wait_rewrite(q, dl));
    uint64_t upto;
    {
      MutexLock lk(mu_);
      if (retained_.count() == 0) co_return Result<>{};
      upto = retained_.next_seq();
    }
    NfsClient::Call call;
    call.kind = NfsClient::Kind::kCommit;
    call.deadline = dl;
    co_await client(q).run(call);
    if (call.failed) co_return fail(with_context(std::move(call.error), where()));
    commits_.fetch_add(1, std::memory_order_relaxed);
    note_verf(call.verf);
    if (rewriting_.load(std::memory_order_acquire)) continue;
    bool settled;
    {
      MutexLock lk(mu_);
      settled = rewriting_.load(std::memory_order_acquire) ? false : retained_.settle(upto, call.verf);
      retained_bytes_.store(retained_.bytes(), std::memory_order_relaxed);
    }
    if (settled) co_return Result<>{};
    if (rewriting_.load(std::memory_order_acquire)) continue;
    LOG_WARN("{}: COMMIT returned another write verifier than the writes: writing {} bytes again", where(),
             retained_bytes_.load(std::memory_order_relaxed));
    co_return co_await rewrite_all(q, dl);
  }
}

Task<Result<>> NfsTarget::rewrite_all(Queue& q, NfsClock::time_point dl) {
  // One rewrite at a time, and no write in flight while it runs.
  for (;;) {
    bool expected = false;
    if (rewriting_.compare_exchange_weak(expected, true, std::memory_order_acq_rel)) break;
    if (NfsClock::now() >= dl) co_return fail(EIO, fmt::format("{}: timed out waiting for a rewrite", where()));
    co_await q.ring().sleep(1ms);
  }
  struct Clear {
    std::atomic<bool>& b;
    ~Clear() { b.store(false, std::memory_order_release); }
  } clear{rewriting_};
  while (writes_in_flight_.load(std::memory_order_acquire) > 0) {
    if (NfsClock::now() >= dl) co_return fail(EIO, fmt::format("{}: timed out waiting for writes", where()));
    co_await q.ring().sleep(1ms);
  }
  // The whole log, in order, FILE_SYNC: stable when answered whatever the
  // verifier, and the newest data of each byte lands last.
  std::vector<RetainedWrites::Entry> entries;
  uint64_t upto;
  {
    MutexLock lk(mu_);
    upto = retained_.next_seq();
    entries = retained_.entries_before(upto);
  }
  for (const auto& e : entries) {
    bool weak = false;
    auto r = co_await write_range(q, e.data, e.length, e.offset, FILE_SYNC, dl,
                                  [&](uint64_t, const std::byte*, uint32_t, int committed, uint64_t) {
                                    if (committed != FILE_SYNC) weak = true;
                                  });
    if (!r) co_return r;
    if (weak) co_return fail(EIO, fmt::format("{}: the server answered a FILE_SYNC write as unstable", where()));
    rewritten_bytes_.fetch_add(e.length, std::memory_order_relaxed);
  }
  {
    MutexLock lk(mu_);
    retained_.drop_before(upto);
    retained_bytes_.store(retained_.bytes(), std::memory_order_relaxed);
  }
  co_return Result<>{};
}

}  // namespace strata
